"""Chain-of-thought: the model writes its reasoning, then answers (in-context tasks on causal LMs).

- few-shot CoT (Wei et al. 2022): each demonstration carries its reasoning (the data's
  `reasoning_field`) before the answer, so the model reasons the same way for the query;
- zero-shot CoT (Kojima et al. 2022): no demonstrations; stage 1 appends "Let's think step by
  step." and generates the reasoning, stage 2 appends the reasoning and "Therefore, the answer
  is" and reads the answer off.

The answer is read through the verbalizer: the label words are scored after the answer trigger
(`scoring`), which is answer extraction with the answer restricted to the label words — it
always yields a label and gives probabilities, where parsing free text can find none. With the
task's template `Q: {question}\nA: {mask}` the two stages render as

    stage 1:  Q: <question>\nA: Let's think step by step.            → generate <reasoning>
    stage 2:  Q: <question>\nA: Let's think step by step. <reasoning> Therefore, the answer is {mask}
"""

from __future__ import annotations

import torch
from torch import nn

from .templates import Field, Mask, Template, Text

MODES = ("zero-shot", "few-shot")
COT_TRIGGER = "Let's think step by step."
ANSWER_TRIGGER = "Therefore, the answer is"


def _split_at_mask(template: Template) -> tuple[list, list]:
    i = next(i for i, s in enumerate(template.segments) if isinstance(s, Mask))
    return list(template.segments[:i]), list(template.segments[i + 1 :])


def _after(before: list, text: str) -> Text:
    """`text` after the segments before the mask, with one space between (the template's own
    space before `{mask}` if it has one)."""
    spaced = before and isinstance(before[-1], Text) and before[-1].text[-1:].isspace()
    return Text(text if spaced else " " + text)


def reasoning_template(template: Template, mode: str, cot_trigger: str = COT_TRIGGER) -> Template:
    """Stage 1: the text before `{mask}` (+ the CoT trigger for zero-shot), `{mask}` where the
    reasoning is generated."""
    before, _ = _split_at_mask(template)
    lead = [_after(before, cot_trigger)] if mode == "zero-shot" else []
    return Template(f"{template.source} [reasoning]", (*before, *lead, Mask()))


def answer_template(template: Template, mode: str, reasoning_field: str, cot_trigger: str = COT_TRIGGER,
                    answer_trigger: str = ANSWER_TRIGGER) -> Template:
    """Stage 2 (and how few-shot demonstrations are written): reasoning, answer trigger, `{mask}`."""
    before, after = _split_at_mask(template)
    lead = _after(before, f"{cot_trigger} " if mode == "zero-shot" else "")
    return Template(f"{template.source} [answer]",
                    (*before, lead, Field(reasoning_field), Text(f" {answer_trigger} "), Mask(), *after))


def cut_reasoning(text: str, answer_trigger: str = ANSWER_TRIGGER) -> str:
    """The reasoning part of what the model wrote: up to the answer trigger or a blank line
    (where a few-shot model starts the next demonstration)."""
    text = text.lstrip()  # a model may open with a blank line before it starts reasoning
    for stop in (answer_trigger, "\n\n"):
        text = text.split(stop, 1)[0]
    return " ".join(text.split())


@torch.no_grad()
def generate_reasoning(classifier: nn.Module, examples: list[dict], *, batch_size: int = 8) -> list[str]:
    """Stage 1 for an in-context classifier with chain of thought: greedy reasoning per example."""
    from .devices import model_device
    from .scoring import pad
    from .templates import encode_example

    scorer, tok, model = classifier.scorer, classifier.tokenizer, classifier.model
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = []
    for i in range(0, len(examples), batch_size):
        seqs = []
        for ex in examples[i : i + batch_size]:
            enc = encode_example(classifier.reasoning_template, tok, ex, mask_fill=[], max_length=scorer.max_length,
                                 specials=scorer.query_specials)
            seqs.append(scorer.prefix.ids + enc.ids[: enc.mask_start])
        # Left-padded, so each row's reasoning starts right after its own prompt.
        ids, attn = pad(seqs, pad_id, left=True)
        device = model_device(model)
        gen = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), do_sample=False,
                             max_new_tokens=classifier.max_reasoning_tokens, pad_token_id=pad_id)
        texts = tok.batch_decode(gen[:, ids.shape[1] :], skip_special_tokens=True)
        out.extend(cut_reasoning(t, classifier.answer_trigger) for t in texts)
    return out

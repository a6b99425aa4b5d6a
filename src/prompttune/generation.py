"""Generation: text tasks trained with the LM loss, and `generate` with a task's prompts in place.

A generation task is a template whose `{mask}` is where the output text goes, e.g.
`{table} Summary: {mask}` (prefix-tuning's table-to-text setting, Li & Liang 2021). Causal LMs
read the text before `{mask}` and learn to continue it with the target; seq2seq LMs (T5) read the
whole input with the mask as a sentinel and learn to emit the target from the decoder. The loss
is the mean cross-entropy of the target's tokens (and its end-of-sequence token), nothing else.

`generate` renders the same prompt, binds the task's soft tokens and deep prefixes, and calls
`transformers`' `generate`. Batches are left-padded for decoder-only models, so every row's
continuation starts right after its own last token; the key/value cache holds only real tokens
(deep prompts enter inside the attention call, see `deep_prompts`), so `generate`'s caching and
padding logic is untouched.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import Backbone
from .errors import DataError, ModelError
from .models import PromptClassifier, TaskModule, bind_prompts
from .scoring import mask_leading_space, pad
from .templates import SpecialTokens, Template, encode_example, literal_ids


class TextGenerator(TaskModule):
    """A template task whose `{mask}` is filled with free text (the example's "label" is the target).

    `forward(batch)` returns the LM loss of the targets, a scalar; the trainer minimises it.

    Example:
        >>> gen = TextGenerator(load_backbone("gpt2"), parse_template("{table} Summary: {mask}"))
        >>> gen(gen.collate([{"table": "name: Aromi | food: Italian", "label": "Aromi serves Italian food."}]))
        tensor(5.93, grad_fn=...)
    """

    generates = True
    labels: tuple[str, ...] = ()

    def __init__(self, backbone: Backbone, template: Template, max_length: int = 256):
        super().__init__()
        if backbone.kind == "masked":
            raise ModelError(f"{backbone.name!r} is a masked LM: it fills masks but does not generate; use a causal or seq2seq model")
        template.require_mask()
        self.model, self.kind, self.tokenizer, self.template = backbone.model, backbone.kind, backbone.tokenizer, template
        self.max_length = max_length
        self.specials = SpecialTokens.of(self.tokenizer)
        self.soft_base = self.model.get_input_embeddings().num_embeddings
        vocab = self.tokenizer.get_vocab()
        self.slot = vocab.get("<extra_id_0>", self.tokenizer.mask_token_id)
        self.eos = self.tokenizer.eos_token_id
        self.soft, self.deep = None, None

    def head_parameters(self) -> list[nn.Parameter]:
        return []

    def collate(self, examples: list[dict]) -> dict:
        targets = []
        for ex in examples:
            if "label" not in ex:
                raise DataError("a generation task needs the target text in each training example (task.label_field)")
            lead = " " if self.kind == "causal" and mask_leading_space(self.template) else ""
            targets.append(literal_ids(self.tokenizer, lead + str(ex["label"]).strip()) + [self.eos])
        prompts = [prompt_ids(self, ex) for ex in examples]
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos
        if self.kind == "seq2seq":
            ids, attn = pad(prompts, pad_id)
            target, valid = pad(targets, pad_id)
            return {"ids": ids, "attn": attn, "target": target.masked_fill(valid == 0, -100)}
        # causal: prompt + target in one sequence; only the target's tokens are scored
        seqs = [p + t for p, t in zip(prompts, targets)]
        ids, attn = pad(seqs, pad_id)
        target = torch.full_like(ids, -100)
        for row, (p, t) in enumerate(zip(prompts, targets)):
            target[row, len(p) : len(p) + len(t)] = torch.tensor(t)
        return {"ids": ids, "attn": attn, "target": target}

    def forward(self, batch: dict) -> torch.Tensor:
        bind_prompts(self)
        out = self.model(input_ids=batch["ids"], attention_mask=batch["attn"], labels=batch["target"])
        return out.loss


def prompt_ids(task: nn.Module, example: dict) -> list[int]:
    """The ids a generation starts from: causal LMs get the text before `{mask}` (all of it
    without a mask); seq2seq LMs get the whole input with the mask as the first sentinel."""
    r = getattr(task, "scorer", task)  # a PromptClassifier's scorer holds the same rendering settings
    seq2seq = task.kind == "seq2seq"
    enc = encode_example(task.template, task.tokenizer, example, mask_fill=[r.slot] if seq2seq else [],
                         max_length=r.max_length, specials=r.specials, soft_base=r.soft_base)
    if seq2seq:
        return enc.ids
    return enc.ids[: enc.mask_start] if enc.mask_start >= 0 else enc.ids[: len(enc.ids) - len(r.specials.suffix)]


def generate(classifier: PromptClassifier | TextGenerator, examples: list[dict], *, max_new_tokens: int = 20, batch_size: int = 8,
             **generate_kwargs) -> list[str]:
    """Continue each example's prompt; return the generated text (without the prompt).

    Example:
        >>> clf, _ = load_artifact("runs/prefix-gpt2")
        >>> generate(clf, [{"sentence": "A gripping film."}], max_new_tokens=5)
        [' great.']
    """
    if not isinstance(classifier, (PromptClassifier, TextGenerator)):
        raise ModelError("generation needs a template task (a head-based task has no text to continue)")
    model: nn.Module = classifier.model
    if classifier.kind == "masked":
        raise ModelError(f"{type(model).__name__} is a masked LM: it fills masks but does not generate; use a causal or seq2seq model")
    tok = classifier.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    left = classifier.kind == "causal"
    out: list[str] = []
    was_training = classifier.training
    classifier.eval()
    try:
        for i in range(0, len(examples), batch_size):
            seqs = [prompt_ids(classifier, ex) for ex in examples[i : i + batch_size]]
            ids, attn = pad(seqs, pad_id, left=left)
            ids, attn = ids.to(model.device), attn.to(model.device)
            with torch.no_grad():
                bind_prompts(classifier)
                gen = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                                     pad_token_id=pad_id, **{"do_sample": False, **generate_kwargs})
            new = gen[:, ids.shape[1] :] if left else gen
            out.extend(tok.batch_decode(new, skip_special_tokens=True))
    finally:
        classifier.train(was_training)
    return out

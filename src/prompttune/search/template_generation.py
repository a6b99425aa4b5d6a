"""Templates written by a seq2seq LM: LM-BFF's automatic template generation (Gao et al. 2021, §5.2).

T5 fills the spans X and Y around the input and the label word w, in one of LM-BFF's patterns:

    <S1> <X> w <Y>         →  "{sentence} X {mask} Y"              one text field
    <X> w <Y> <S1>         →  "X {mask} Y {sentence}"              one text field
    <S1> <X> w <Y> <S2>    →  "{premise} X {mask} Y {hypothesis}"  two text fields

T5 reads the example with `<extra_id_0>` for X and `<extra_id_1>` for Y around its class's label
word, and writes "<extra_id_0> X <extra_id_1> Y <extra_id_2>". Beam search over every training
example proposes (X, Y) pairs; each is scored by the sum over *all* training examples of
log p_T5(its spans | the example) — a template likely for every example, not for one — and the
best few are ranked by the backbone's zero-shot accuracy on dev.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..backbones import Backbone, load_backbone
from ..devices import model_device
from ..errors import ConfigError, DataError, ModelError, PromptTuneError, TemplateError
from ..scoring import pad
from ..progress import bar_off
from ..templates import SpecialTokens, encode_example, literal_ids, parse_template
from ..verbalizers import Verbalizer
from .common import zero_shot_accuracy

X, WORD, Y = "<X>", "<w>", "<Y>"
_WORD_FIELD = "_label_word"  # the example's label word, written into T5's input as a field
_SENTINEL = re.compile(r"<extra_id_(\d+)>")
SHORTLIST = 3
"""Candidates ranked on dev per template kept: the best `SHORTLIST * keep` by T5 score."""


@dataclass
class TemplateGeneration:
    """What `generate_templates` found."""

    template: str
    """The best template's text, for `parse_template`."""
    templates: list[dict]
    """The kept templates, best first: {"template", "t5_score", "dev_accuracy"}."""
    candidates: int = 0
    """Distinct templates T5 proposed."""
    skipped: int = 0
    """Shortlisted candidates the backbone cannot score (e.g. a causal LM with {mask} first)."""


def generate_templates(generator: str, backbone: Backbone, verbalizer: Verbalizer, text_fields: list[str],
                       train: list[dict], dev: list[dict], *, beams: int = 20, keep: int = 5, max_new_tokens: int = 20,
                       max_length: int = 128, batch_size: int = 32, progress: bool = True) -> TemplateGeneration:
    """Generate templates with the seq2seq LM `generator` (a T5 path or hub id) and rank them for `backbone`.

    Example:
        >>> found = generate_templates("t5-large", bb, parse_verbalizer({0: "terrible", 1: "great"}), ["sentence"],
        ...                            train, dev)
        >>> found.template
        '{sentence} A {mask} one.'
    """
    if beams < 1 or keep < 1:
        raise ConfigError(f"beams and keep must be ≥ 1, got beams={beams}, keep={keep}")
    if not train or not dev:
        raise DataError("template generation needs labelled train examples (T5 fills spans around them) and dev "
                        f"examples (candidates are ranked by dev accuracy); got {len(train)} train, {len(dev)} dev")
    shapes = patterns(text_fields)
    # Beside the model it writes templates for, in its dtype (but float16: T5's activations overflow there).
    dtype = torch.float32 if backbone.model.dtype == torch.float16 else backbone.model.dtype
    t5 = load_backbone(generator, kind="seq2seq", dtype=dtype)
    t5.model.to(model_device(backbone.model))
    check_sentinels(t5)
    words = [verbalizer.words[verbalizer.class_index(ex.get("label"))][0] for ex in train]

    proposed: dict[str, tuple[tuple[str, ...], str, str]] = {}  # template text → (pattern, X, Y)
    inputs = {shape: t5_inputs(t5, shape, train, words, max_length) for shape in shapes}
    for shape in shapes:
        for x, y in propose_spans(t5, inputs[shape], beams=beams, max_new_tokens=max_new_tokens,
                                  batch_size=max(1, batch_size // beams), progress=progress):
            proposed.setdefault(fill_template(shape, x, y), (shape, x, y))

    score: dict[str, float] = {}
    for shape in shapes:
        texts = [text for text, (s, _, _) in proposed.items() if s == shape]
        spans = [proposed[text][1:] for text in texts]
        score.update(zip(texts, score_spans(t5, inputs[shape], spans, batch_size=batch_size, progress=progress)))

    kept, skipped = [], 0
    for text in sorted(score, key=score.get, reverse=True):
        if len(kept) == SHORTLIST * keep:
            break
        try:
            accuracy = zero_shot_accuracy(backbone, parse_template(text), verbalizer, dev, max_length=max_length,
                                          batch_size=batch_size)
        except PromptTuneError:  # e.g. a causal LM refuses a template that starts with {mask}
            skipped += 1
            continue
        kept.append({"template": text, "t5_score": score[text], "dev_accuracy": accuracy})
    if not kept:
        raise TemplateError(f"none of the {len(score)} templates T5 proposed can be scored by backbone "
                            f"{backbone.name!r} ({skipped} tried); try more beams or another generator")
    kept.sort(key=lambda e: (-e["dev_accuracy"], -e["t5_score"]))
    return TemplateGeneration(kept[0]["template"], kept[:keep], candidates=len(proposed), skipped=skipped)


def patterns(text_fields: list[str]) -> list[tuple[str, ...]]:
    """LM-BFF's patterns for these fields: sequences of field names and the X, WORD, Y slots."""
    if len(text_fields) == 1:
        (f,) = text_fields
        return [(f, X, WORD, Y), (X, WORD, Y, f)]
    if len(text_fields) == 2:
        f1, f2 = text_fields
        return [(f1, X, WORD, Y, f2)]
    raise ConfigError(f"template generation covers one or two text fields (LM-BFF's patterns), got {list(text_fields)}")


def check_sentinels(t5: Backbone) -> None:
    vocab = t5.tokenizer.get_vocab()
    missing = [s for s in ("<extra_id_0>", "<extra_id_1>", "<extra_id_2>") if s not in vocab]
    if missing:
        raise ModelError(f"generator {t5.name!r} has no {missing} sentinel token(s); template generation needs a "
                         "T5-style span-filling model, e.g. t5-base or t5-large")


def t5_inputs(t5: Backbone, pattern: tuple[str, ...], examples: list[dict], words: list[str],
              max_length: int) -> list[list[int]]:
    """T5's input ids per example: the pattern with `<extra_id_0>`/`<extra_id_1>` for X/Y and the
    example's label word (only the text fields are truncated, so the sentinels always survive)."""
    slots = {X: "<extra_id_0>", WORD: "{" + _WORD_FIELD + "}", Y: "<extra_id_1>"}
    template = parse_template(" ".join(slots.get(p, "{" + p + "}") for p in pattern))
    return [encode_example(template, t5.tokenizer, {**ex, _WORD_FIELD: w}, max_length=max_length).ids
            for ex, w in zip(examples, words)]


def t5_target(tokenizer, x: str, y: str) -> list[int]:
    """The ids T5 writes for spans X and Y, "<extra_id_0> X <extra_id_1> Y <extra_id_2></s>" (the final
    sentinel closes Y, as in T5's pre-training). The spans are generated text, read literally."""
    sentinel = tokenizer.convert_tokens_to_ids
    spans = [sentinel("<extra_id_0>"), *literal_ids(tokenizer, x), sentinel("<extra_id_1>"), *literal_ids(tokenizer, y),
             sentinel("<extra_id_2>")]
    return [*spans, *SpecialTokens.of(tokenizer).suffix]


def parse_spans(text: str) -> list[str]:
    """The spans in a decoded T5 output, in sentinel order; padding dropped, cut at the end of text.

    Text before `<extra_id_0>` is dropped; a sentinel out of order ends the list.

    Example:
        >>> parse_spans("<pad> <extra_id_0> It was<extra_id_1>.<extra_id_2></s><pad>")
        ['It was', '.', '']
    """
    text = text.split("</s>")[0].replace("<pad>", " ")
    parts = _SENTINEL.split(text)  # [before, "0", span 0, "1", span 1, ...]
    spans = []
    for i, (n, span) in enumerate(zip(parts[1::2], parts[2::2])):
        if int(n) != i:
            break
        spans.append(" ".join(span.split()))
    return spans


def fill_template(pattern: tuple[str, ...], x: str, y: str) -> str:
    """Template text for a pattern filled with T5's spans: the word's slot becomes {mask}, braces
    in generated text are doubled, and punctuation attaches to the text before it."""
    slots = {X: x.replace("{", "{{").replace("}", "}}"), WORD: "{mask}", Y: y.replace("{", "{{").replace("}", "}}")}
    out = ""
    for p in pattern:
        part = slots.get(p, "{" + p + "}")
        if part:
            out += part if not out or part[0] in ".,!?;:" else " " + part
    return out


@torch.no_grad()
def propose_spans(t5: Backbone, inputs: list[list[int]], *, beams: int, max_new_tokens: int, batch_size: int,
                  progress: bool = False) -> list[tuple[str, str]]:
    """(X, Y) from T5's `beams` best outputs per input, in order (with repeats)."""
    tok, model = t5.tokenizer, t5.model
    device = model_device(model)
    # T5 begins every span-filling output with <extra_id_0>; starting it there spares beams.
    lead = [model.config.decoder_start_token_id, tok.convert_tokens_to_ids("<extra_id_0>")]
    pairs = []
    for i in tqdm(range(0, len(inputs), batch_size), desc="templates: generating", disable=bar_off(progress), leave=False):
        ids, attn = pad(inputs[i : i + batch_size], tok.pad_token_id)
        out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device),
                             decoder_input_ids=torch.tensor([lead], device=device).expand(len(ids), -1),
                             num_beams=beams, num_return_sequences=beams, max_new_tokens=max_new_tokens,
                             do_sample=False)
        for spans in map(parse_spans, tok.batch_decode(out, skip_special_tokens=False)):
            x, y = (spans + ["", ""])[:2]
            # T5 spells what it cannot tokenize as <unk>; in a template that would be literal text.
            if not tok.unk_token or tok.unk_token not in x + y:
                pairs.append((x, y))
    return pairs


@torch.no_grad()
def score_spans(t5: Backbone, inputs: list[list[int]], spans: list[tuple[str, str]], *, batch_size: int = 32,
                progress: bool = False) -> list[float]:
    """For each (X, Y): sum over the inputs of log p_T5("<extra_id_0> X <extra_id_1> Y <extra_id_2>" | input),
    teacher-forced (LM-BFF's objective). The encoder runs once per input, not once per candidate."""
    tok, model = t5.tokenizer, t5.model
    device = model_device(model)
    targets = [t5_target(tok, x, y) for x, y in spans]
    encoded = []
    for i in range(0, len(inputs), batch_size):
        ids, attn = (t.to(device) for t in pad(inputs[i : i + batch_size], tok.pad_token_id))
        encoded.append((model.get_encoder()(input_ids=ids, attention_mask=attn), attn))
    totals = []
    for target in tqdm(targets, desc="templates: scoring", disable=bar_off(progress), leave=False):
        total = 0.0
        for enc, attn in encoded:
            labels = torch.tensor([target], device=device).repeat(len(attn), 1)  # (B, L): one target for all
            logits = model(encoder_outputs=enc, attention_mask=attn, labels=labels).logits  # (B, L, V)
            total += logits.float().log_softmax(-1).gather(-1, labels[..., None]).sum().item()
        totals.append(total)
    return totals

"""What the model is given: an example rendered through the task's template, token by token, with
the mask and the soft slots marked, and the label words as token ids (`prompttune render`).

Rendering is `templates.encode_example` with what the task's scorer puts at the mask
(`scoring.mask_slot`), so the ids are the ones the model reads. It needs only the tokenizer and
the model's config (its kind, and its vocabulary size, past which soft ids start): no weights load.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .backbones import detect_kind, load_model_config, load_tokenizer
from .models import head_input_ids
from .scoring import mask_leading_space, mask_slot
from .templates import SpecialTokens, Template, encode_example, parse_template
from .verbalizers import parse_verbalizer, tokenize_words


@dataclass
class RenderedInput:
    """One example as the model reads it."""

    ids: list[int]
    tokens: list[str]
    """Each id's token; a soft (or trigger) slot is written <soft:K>, the K-th vector of the prompt."""
    text: str
    """The ids decoded, soft slots as <soft:K>."""
    mask: int | None
    """Position of `{mask}`: the first [MASK] (masked LM), the sentinel (seq2seq LM), or where the label
    word is written (causal LM: the text ends there, the word continues it). None without a template."""
    soft: list[int]
    """Positions of the soft (and trigger) slots, where the prompt's vectors are looked up."""


def render_inputs(model: str, examples: list[dict], *, text_fields: list[str], template: str | None,
                  verbalizer: dict | None = None, max_length: int = 128, kind: str | None = None) -> dict:
    """How a task on `model` renders `examples`: the model's kind, each example as a `RenderedInput`
    (as a dict), and each label's words with their token ids as the scorer reads them. Without a
    template (a classification-head method) the text fields are rendered as the head reads them.

    Loads the tokenizer and the model's config only. Raises `ModelError` if they cannot be loaded,
    `TemplateError` / `VerbalizerError` for a template or label words the tokenizer cannot render.

    Example:
        >>> report = render_inputs("bert-base-uncased", [{"sentence": "a gripping film"}], text_fields=["sentence"],
        ...                        template="{soft:2} {sentence} It was {mask}.", verbalizer={0: "bad", 1: "good"})
        >>> report["inputs"][0]["tokens"], report["inputs"][0]["mask"], report["inputs"][0]["soft"]
        (['[CLS]', '<soft:1>', '<soft:2>', 'a', 'gripping', 'film', 'it', 'was', '[MASK]', '.', '[SEP]'], 8, [1, 2])
        >>> report["label_words"]["1"]
        [{'word': 'good', 'ids': [2204], 'tokens': ['good']}]
    """
    config = load_model_config(model)
    kind = kind or detect_kind(config)
    tokenizer = load_tokenizer(model)
    vocab_size = config.get_text_config().vocab_size  # the input embeddings' rows: soft ids start here
    specials = SpecialTokens.of(tokenizer)
    report = {"model": model, "kind": kind, "template": template}
    if template is None:
        report["inputs"] = [asdict(_read_back(tokenizer, head_input_ids(tokenizer, text_fields, ex, max_length=max_length,
                                                                        specials=specials), vocab_size, None, []))
                            for ex in examples]
        return report
    parsed = parse_template(template)
    parsed.check_fields(text_fields)
    fill = mask_slot(kind, tokenizer)
    rendered = []
    for ex in examples:
        enc = encode_example(parsed, tokenizer, ex, mask_fill=fill, max_length=max_length, specials=specials,
                             soft_base=vocab_size)
        rendered.append(asdict(_read_back(tokenizer, enc.ids, vocab_size, enc.mask_start, enc.soft_positions)))
    report["inputs"] = rendered
    if verbalizer is not None:
        report["label_words"] = label_word_ids(parsed, verbalizer, tokenizer)
    return report


def label_word_ids(template: Template, verbalizer: dict, tokenizer) -> dict[str, list[dict]]:
    """Each label's words with their token ids and tokens, as the scorer reads them at the template's
    mask (with the space the template puts before it); a word of several tokens lists every one."""
    v = parse_verbalizer(verbalizer)
    ids = iter(tokenize_words(tokenizer, v.flat_words, leading_space=mask_leading_space(template)))
    return {label: [{"word": w, "ids": (word_ids := next(ids)), "tokens": tokenizer.convert_ids_to_tokens(word_ids)}
                    for w in words]
            for label, words in zip(v.labels, v.words)}


def _read_back(tokenizer, ids: list[int], vocab_size: int, mask: int | None, soft: list[int]) -> RenderedInput:
    """`ids` as tokens and text, soft ids (from `vocab_size` on) written <soft:K>."""
    tokens, parts, run = [], [], []
    for i in ids:
        if i >= vocab_size:
            tokens.append(f"<soft:{i - vocab_size + 1}>")
            parts += [tokenizer.decode(run), tokens[-1]] if run else [tokens[-1]]
            run = []
        else:
            tokens.append(tokenizer.convert_ids_to_tokens(i))
            run.append(i)
    if run:
        parts.append(tokenizer.decode(run))
    text = " ".join(p.strip() for p in parts if p.strip())
    return RenderedInput(ids, tokens, text, mask if mask is not None and mask >= 0 else None, soft)

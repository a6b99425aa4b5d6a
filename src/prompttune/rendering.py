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


@dataclass
class GenerationView:
    """What `generation.prompt_ids` and `prompt_and_target` read of a generation task, built from the
    tokenizer and the model's config alone (no weights): the renderer's stand-in for a `TextGenerator`."""

    template: Template
    tokenizer: object
    kind: str
    max_length: int
    specials: SpecialTokens
    soft_base: int
    slot: int | None
    eos: int | None
    chat: object | None


def render_inputs(model: str, examples: list[dict], *, text_fields: list[str], template: str | None,
                  verbalizer: dict | None = None, max_length: int = 128, kind: str | None = None,
                  generation: bool = False, chat_template: str | bool = "auto") -> dict:
    """How a task on `model` renders `examples`: the model's kind, each example as a `RenderedInput`
    (as a dict), and each label's words with their token ids as the scorer reads them. Without a
    template (a classification-head method) the text fields are rendered as the head reads them.
    A generation task's example is its prompt (in the chat template where `chat_template` puts it,
    `chat.ChatFormat`) followed by its target, "mask" marking where the target starts, and "target"
    the target's ids, tokens and text (its end-of-turn or end-of-sequence token included): exactly
    the ids training reads (`generation.prompt_and_target`).

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
    if generation:
        report["inputs"] = _render_generation(parsed, tokenizer, kind, vocab_size, specials, examples, max_length,
                                              chat_template)
        return report
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


def _render_generation(template: Template, tokenizer, kind: str, vocab_size: int, specials: SpecialTokens,
                       examples: list[dict], max_length: int, chat_template: str | bool) -> list[dict]:
    from .chat import ChatFormat, uses_chat_template
    from .generation import prompt_and_target, prompt_ids

    chat = uses_chat_template(chat_template, kind, tokenizer)
    view = GenerationView(template, tokenizer, kind, max_length, specials, vocab_size, mask_slot("seq2seq", tokenizer)[0],
                          tokenizer.eos_token_id, ChatFormat.of(tokenizer) if chat else None)
    out = []
    for ex in examples:
        prompt, target = prompt_and_target(view, ex) if "label" in ex else (prompt_ids(view, ex), [])
        ids = prompt + target if kind == "causal" else prompt
        soft = [i for i, t in enumerate(ids) if t >= vocab_size]
        rendered = asdict(_read_back(tokenizer, ids, vocab_size, len(prompt) if kind == "causal" else None, soft))
        rendered["target"] = {"ids": target, "tokens": tokenizer.convert_ids_to_tokens(target), "text": tokenizer.decode(target)}
        out.append(rendered)
    return out


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

"""The template language: where a task's text, the mask and soft tokens go.

A template is plain text with placeholders in braces:

    {sentence} It was {mask}.            # a text field and the mask
    {premise} ? {mask} , {hypothesis}    # two fields around the mask
    {soft:4} {sentence} {soft} {mask}    # 4 soft tokens, then 1 (filled by soft-prompt methods)
    {soft:"It was"} {mask}               # soft tokens initialised from the words' embeddings
    {sentence} {trigger:3} {mask}        # 3 trigger tokens (found by `prompttune search triggers`)
    {{literal braces}}                   # doubled braces are literal

`fill_triggers` writes the found words in place of the trigger slots, giving an ordinary template.

A template is user input: it is parsed, never evaluated. `parse_template` runs once;
`encode_example` turns one example into token ids, truncating only the text fields
(longest first) so that the template text and the mask always survive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import ModelError, TemplateError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SOFT = re.compile(r'soft(?::(?:(\d+)|"([^"]*)"))?\Z')
_TRIGGER = re.compile(r"trigger(?::(\d+))?\Z")


@dataclass(frozen=True)
class Text:
    """Literal template text, kept verbatim."""

    text: str


@dataclass(frozen=True)
class Field:
    """A text field of the example, e.g. `{sentence}`; the only thing ever truncated."""

    name: str


@dataclass(frozen=True)
class Mask:
    """The slot the model fills: label words are scored here."""


@dataclass(frozen=True)
class Soft:
    """`n` trainable vectors; `init` is optional text whose embeddings initialise them."""

    n: int
    init: str | None = None


@dataclass(frozen=True)
class Trigger:
    """`n` trigger tokens to be found by `prompttune search triggers` (AutoPrompt, Shin et al. 2020).

    While the search runs they are rendered like soft tokens, holding the embeddings of the
    vocabulary tokens being tried; `fill_triggers` then writes the found words in their place.
    """

    n: int


Segment = Text | Field | Mask | Soft | Trigger


@dataclass(frozen=True)
class Template:
    """A parsed template. Build it with `parse_template`.

    Example:
        >>> t = parse_template("{sentence} It was {mask}.")
        >>> t.fields
        ('sentence',)
    """

    source: str
    segments: tuple[Segment, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        """Names of the text fields, in order of first appearance."""
        return tuple(dict.fromkeys(s.name for s in self.segments if isinstance(s, Field)))

    @property
    def has_mask(self) -> bool:
        return any(isinstance(s, Mask) for s in self.segments)

    @property
    def n_soft_segments(self) -> int:
        return sum(isinstance(s, Soft) for s in self.segments)

    @property
    def n_soft(self) -> int:
        """Total number of soft-token vectors the template asks for."""
        return sum(s.n for s in self.segments if isinstance(s, Soft))

    @property
    def n_triggers(self) -> int:
        """Total number of trigger tokens (`{trigger:N}` counts N)."""
        return sum(s.n for s in self.segments if isinstance(s, Trigger))

    def check_fields(self, available: list[str] | tuple[str, ...]) -> None:
        """Raise `TemplateError` if the template names a field the data lacks."""
        missing = [f for f in self.fields if f not in available]
        if missing:
            raise TemplateError(
                f"template {self.source!r} uses field(s) {missing} that the data does not have; "
                f"available fields: {list(available)}"
            )

    def require_mask(self) -> None:
        if not self.has_mask:
            raise TemplateError(
                f"template {self.source!r} has no {{mask}}: label words need a slot to be scored in, "
                "e.g. '{sentence} It was {mask}.'"
            )

    def __str__(self) -> str:
        return self.source


def parse_template(source: str) -> Template:
    """Parse template text into segments; raise `TemplateError` naming the problem.

    Example:
        >>> parse_template("{premise} ? {mask} , {hypothesis}").fields
        ('premise', 'hypothesis')
    """
    if not isinstance(source, str) or not source.strip():
        raise TemplateError(f"a template must be non-empty text, got {source!r}")
    segments: list[Segment] = []
    literal: list[str] = []
    i = 0
    while i < len(source):
        ch = source[i]
        if source.startswith("{{", i) or source.startswith("}}", i):
            literal.append(ch)
            i += 2
            continue
        if ch == "}":
            raise TemplateError(f"unbalanced '}}' at position {i} in template {source!r} (write '}}}}' for a literal brace)")
        if ch != "{":
            literal.append(ch)
            i += 1
            continue
        end = source.find("}", i + 1)
        nested = source.find("{", i + 1)
        if end < 0 or (0 <= nested < end):
            raise TemplateError(f"unbalanced '{{' at position {i} in template {source!r} (write '{{{{' for a literal brace)")
        if literal:
            segments.append(Text("".join(literal)))
            literal = []
        segments.append(_placeholder(source[i + 1 : end].strip(), source))
        i = end + 1
    if literal:
        segments.append(Text("".join(literal)))
    if sum(isinstance(s, Mask) for s in segments) > 1:
        raise TemplateError(f"template {source!r} has more than one {{mask}}; use one (multi-token label words get several mask tokens automatically)")
    if any(isinstance(s, Soft) for s in segments) and any(isinstance(s, Trigger) for s in segments):
        # Both are rendered as ids past the vocabulary, from one table: a template is searched or trained, not both.
        raise TemplateError(
            f"template {source!r} mixes {{soft}} and {{trigger}} slots; fill the triggers first "
            "(prompttune search triggers), then add soft tokens to the template it writes"
        )
    return Template(source, tuple(segments))


def _placeholder(body: str, source: str) -> Segment:
    if body == "mask":
        return Mask()
    soft = _SOFT.match(body)
    if soft:
        n, words = soft.groups()
        if words is not None:
            if not words.strip():
                raise TemplateError(f'{{soft:""}} in template {source!r} needs words to initialise from')
            return Soft(n=0, init=words)  # n is fixed once the words are tokenised
        n = 1 if n is None else int(n)
        if n < 1:
            raise TemplateError(f"{{soft:{n}}} in template {source!r}: the number of soft tokens must be ≥ 1")
        return Soft(n=n)
    trigger = _TRIGGER.match(body)
    if trigger:
        n = 1 if trigger.group(1) is None else int(trigger.group(1))
        if n < 1:
            raise TemplateError(f"{{trigger:{n}}} in template {source!r}: the number of trigger tokens must be ≥ 1")
        return Trigger(n)
    if _NAME.match(body):
        return Field(body)
    raise TemplateError(
        f"cannot read placeholder {{{body}}} in template {source!r}: expected {{field_name}}, {{mask}}, "
        '{soft}, {soft:N}, {soft:"words"}, {trigger} or {trigger:N}'
    )


def to_source(segment: Segment) -> str:
    """A segment written back in the template language (`parse_template` reads it back as it was).

    Example:
        >>> "".join(to_source(s) for s in parse_template("{{x}} {s} {soft:2} {mask}").segments)
        '{{x}} {s} {soft:2} {mask}'
    """
    if isinstance(segment, Text):
        return segment.text.replace("{", "{{").replace("}", "}}")
    if isinstance(segment, Field):
        return f"{{{segment.name}}}"
    if isinstance(segment, Mask):
        return "{mask}"
    if isinstance(segment, Soft):
        return f'{{soft:"{segment.init}"}}' if segment.init is not None else f"{{soft:{segment.n}}}"
    return f"{{trigger:{segment.n}}}"


def fill_triggers(template: Template, words: list[str]) -> str:
    """The template's text with each trigger token replaced by its word, in order: an ordinary template.

    Example:
        >>> fill_triggers(parse_template("{s} {trigger:2} {mask}."), ["so", "it"])
        '{s} so it {mask}.'
    """
    if len(words) != template.n_triggers:
        raise TemplateError(
            f"template {template.source!r} has {template.n_triggers} trigger tokens, got {len(words)} words"
        )
    out, k = [], 0
    for seg in template.segments:
        if isinstance(seg, Trigger):
            out.append(to_source(Text(" ".join(words[k : k + seg.n]))))
            k += seg.n
        else:
            out.append(to_source(seg))
    return "".join(out)


# --- encoding ---------------------------------------------------------------------------


@dataclass
class Encoded:
    """One rendered example: token ids plus where the mask and soft tokens sit."""

    ids: list[int]
    mask_start: int = -1  # index of the first token placed at {mask}; -1 if none
    mask_len: int = 0
    soft_positions: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class SpecialTokens:
    """How a tokenizer wraps one sequence ([CLS] … [SEP]) or a pair, and marks word starts."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    word_start: str | None = None
    """The word-start mark SentencePiece tokenizers (T5, Llama) put before every encoded text
    ("▁"). Where a piece continues the text before it ("{sentence}." → "."), that mark would be a
    spurious space, so `continue_piece` takes it off again."""
    between: tuple[int, ...] = ()
    """What the tokenizer puts between the two texts of a pair: [SEP] on BERT, </s></s> on RoBERTa."""

    @classmethod
    def of(cls, tokenizer) -> "SpecialTokens":
        # Tokenizers in transformers 5 no longer expose build_inputs_with_special_tokens, so
        # find the wrapping by encoding a probe with and without special tokens.
        bare = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a", add_special_tokens=True)["input_ids"]
        first = tokenizer.convert_ids_to_tokens(bare[:1])
        mark = "\u2581" if first and first[0].startswith("\u2581") else None
        for start in range(len(full) - len(bare) + 1):
            if full[start : start + len(bare)] == bare:
                prefix, suffix = tuple(full[:start]), tuple(full[start + len(bare) :])
                pair = tokenizer("a", "a", add_special_tokens=True)["input_ids"]
                between = pair[len(prefix) + len(bare) : len(pair) - len(suffix) - len(bare)]
                return cls(prefix, suffix, mark, tuple(between))
        return cls((), (), mark)

    def continue_piece(self, tokenizer, ids: list[int]) -> list[int]:
        """Drop the word-start mark from a piece that continues the previous one without a space."""
        if self.word_start is None or not ids:
            return ids
        token = tokenizer.convert_ids_to_tokens(ids[0])
        if token == self.word_start:
            return ids[1:]
        if token.startswith(self.word_start):
            bare = tokenizer.convert_tokens_to_ids(token[len(self.word_start) :])
            if bare is not None and bare != tokenizer.unk_token_id:
                return [bare, *ids[1:]]
        return ids


# --- data text is text --------------------------------------------------------------------


_UNSPELLABLE = "\U0001d11e"  # 𝄞: a character no vocabulary here holds, to see how a tokenizer writes one


def special_ids(tokenizer) -> set[int]:
    """Ids of every special token: [CLS], [SEP], [MASK], <s>, </s>, <pad>, <unk>, <|endoftext|>, T5's
    <extra_id_N>, chat markers such as <|im_start|>."""
    return set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}


def control_ids(tokenizer) -> set[int]:
    """The special ids data text must never produce: all of them, except the unknown token where the
    tokenizer writes a character its vocabulary lacks with it (BERT's [UNK], T5's <unk>). GPT-2's
    unknown token is <|endoftext|>, which text never stands for, so it stays a control id there."""
    special, unk = special_ids(tokenizer), tokenizer.unk_token_id
    if unk in special and unk in tokenizer(_UNSPELLABLE, add_special_tokens=False, split_special_tokens=True)["input_ids"]:
        special.discard(unk)
    return special


def literal_ids(tokenizer, text: str) -> list[int]:
    """Token ids of data text read literally: a special-token string in it stays text.

    Only a template (and prompttune's own rendering: mask slots, sentinels, separators) makes
    special tokens. `split_special_tokens` keeps the tokenizer from matching them in the text,
    but a vocabulary may hold a special token as an ordinary piece too (T5's Unigram model
    writes "</s>" and "<extra_id_0>" as their special ids even then), so any control id left is
    spelled again in smaller pieces (`_spell`). Long text is not warned about: callers truncate.

    Example:
        >>> tok.convert_ids_to_tokens(literal_ids(tok, "this [MASK] was great"))    # BERT
        ['this', '[', 'mask', ']', 'was', 'great']
    """
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"]
    if special_ids(tokenizer).isdisjoint(ids):  # nearly all text: no need to look closer
        return ids
    control = control_ids(tokenizer)
    if control.isdisjoint(ids):
        return ids
    enc = tokenizer(text, add_special_tokens=False, split_special_tokens=True, verbose=False, return_offsets_mapping=True)
    specials = SpecialTokens.of(tokenizer)
    out: list[int] = []
    for i, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
        out += _spell(tokenizer, text[start:end], control, specials) if i in control else [i]
    return out


def _spell(tokenizer, text: str, control: set[int], specials: SpecialTokens) -> list[int]:
    """`text`, continuing the text before it, in pieces small enough that no control id comes out:
    halved until each half tokenizes without one. A single character the vocabulary can only write
    as a special token is one it cannot spell: it becomes the unknown token. Raises `ModelError`
    if the tokenizer has none."""
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"]
    ids = specials.continue_piece(tokenizer, ids)
    if control.isdisjoint(ids):
        return ids
    if len(text) == 1:
        if tokenizer.unk_token_id is None:
            raise ModelError(f"the tokenizer writes the character {text!r} only as a special token and has no unknown token")
        return [tokenizer.unk_token_id]
    half = len(text) // 2
    return _spell(tokenizer, text[:half], control, specials) + _spell(tokenizer, text[half:], control, specials)


def encode_text(tokenizer, text: str, pair: str | None = None, *, max_length: int,
                specials: SpecialTokens | None = None) -> list[int]:
    """One text, or a pair, wrapped as the tokenizer wraps them ([CLS] a [SEP] b [SEP] on BERT), each read
    literally (`literal_ids`) and truncated to `max_length` by the tokenizers library's longest-first
    rule (the shorter text keeps up to half the room, the longer the rest).

    Example:
        >>> tok.convert_ids_to_tokens(encode_text(tok, "a [SEP] b", "c", max_length=16))   # BERT
        ['[CLS]', 'a', '[', 'sep', ']', 'b', '[SEP]', 'c', '[SEP]']
    """
    specials = specials or SpecialTokens.of(tokenizer)
    first, second = literal_ids(tokenizer, text), literal_ids(tokenizer, pair) if pair is not None else None
    room = max(0, max_length - len(specials.prefix) - len(specials.suffix) - (len(specials.between) if pair is not None else 0))
    if second is None:
        return [*specials.prefix, *first[:room], *specials.suffix]
    if len(first) + len(second) > room:
        keep = min(len(first), len(second), room // 2)  # what the shorter text keeps
        if len(first) <= len(second):  # on a tie the first counts as the shorter
            first, second = first[:keep], second[: room - keep]
        else:
            first, second = first[: room - keep], second[:keep]
    return [*specials.prefix, *first, *specials.between, *second, *specials.suffix]


def segment_texts(template: Template, example: dict) -> list[tuple[Segment, str]]:
    """Pair each segment with the text it stands for, moving a literal's trailing space.

    A space before a field or the mask belongs to that field or mask ("was {mask}" →
    "was" + " great"), because BPE tokenizers (GPT-2, RoBERTa) encode " great" as one token and
    a dangling " " as a token of its own.
    """
    out: list[tuple[Segment, str]] = []
    carry = ""
    for seg in template.segments:
        if isinstance(seg, Text):
            text = carry + seg.text
            stripped = text.rstrip(" ")
            carry = text[len(stripped) :]
            if stripped:
                out.append((seg, stripped))
        else:
            if isinstance(seg, Field):
                value = example.get(seg.name)
                if value is None:
                    raise TemplateError(f"example has no field {seg.name!r} required by template {template.source!r}")
                text = carry[:1] + str(value).strip() if carry else str(value).strip()
            else:
                text = carry[:1]  # the space a mask, soft or trigger token carries
            out.append((seg, text))
            carry = ""
    if carry.strip():
        out.append((Text(carry), carry))
    return out


def encode_example(
    template: Template,
    tokenizer,
    example: dict,
    *,
    mask_fill: list[int] | None = None,
    max_length: int = 256,
    specials: SpecialTokens | None = None,
    soft_base: int | None = None,
) -> Encoded:
    """Render one example to token ids.

    `mask_fill` is the token ids put at `{mask}` (e.g. k mask tokens for a k-token label word on a
    masked LM, or the label word itself for a causal LM); nothing is put there if it is None.
    The k-th soft token (counting across all `{soft...}` segments) gets the id `soft_base + k`
    (see `prompttune.soft_prompts`); trigger tokens are rendered the same way, so that a trigger
    search tries tokens by binding their embeddings as the soft table. Fields are truncated,
    longest first, until the sequence fits `max_length`.

    Example:
        >>> enc = encode_example(parse_template("{s} It was {mask}."), tok, {"s": "Fun."},
        ...                      mask_fill=[tok.mask_token_id])
        >>> tok.convert_ids_to_tokens(enc.ids[enc.mask_start])
        '[MASK]'
    """
    specials = specials or SpecialTokens.of(tokenizer)
    pieces: list[tuple[Segment, list[int]]] = []
    n_soft = 0
    for seg, text in segment_texts(template, example):
        if isinstance(seg, Mask):
            ids = list(mask_fill or [])
        elif isinstance(seg, Soft):
            if soft_base is None:
                raise TemplateError(
                    f"template {template.source!r} has soft tokens, but this method has no soft prompt to fill "
                    "them; use a soft-prompt method (prompt-tuning, p-tuning) or remove {soft}"
                )
            n = seg.n or len(soft_init_ids(tokenizer, text + seg.init))
            ids = list(range(soft_base + n_soft, soft_base + n_soft + n))
            n_soft += n
        elif isinstance(seg, Trigger):
            if soft_base is None:
                raise TemplateError(
                    f"template {template.source!r} has {{trigger}} slots, which must be filled first with "
                    "`prompttune search triggers` (it writes the template with the found words in place)"
                )
            ids = list(range(soft_base + n_soft, soft_base + n_soft + seg.n))
            n_soft += seg.n
        else:
            # A field is data, read literally; template text may hold special tokens on purpose ("[SEP]").
            read = literal_ids if isinstance(seg, Field) else _template_ids
            ids = read(tokenizer, text) if text else []
            if pieces and not text[:1].isspace():
                ids = specials.continue_piece(tokenizer, ids)
        pieces.append((seg, ids))

    overflow = len(specials.prefix) + len(specials.suffix) + sum(len(ids) for _, ids in pieces) - max_length
    if overflow > 0:
        _truncate_fields(pieces, overflow, template, max_length)

    ids = list(specials.prefix)
    enc = Encoded(ids)
    for seg, piece in pieces:
        if isinstance(seg, Mask):
            enc.mask_start, enc.mask_len = len(ids), len(piece)
        elif isinstance(seg, (Soft, Trigger)):
            enc.soft_positions.extend(range(len(ids), len(ids) + len(piece)))
        ids.extend(piece)
    ids.extend(specials.suffix)
    return enc


def _template_ids(tokenizer, text: str) -> list[int]:
    """Token ids of template text, whose special-token strings are meant as such."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def soft_words(template: Template) -> list[str | None]:
    """For each `{soft...}` segment, the words (with the space before them) that initialise it, or None."""
    dummy = {f: "x" for f in template.fields}
    return [text + seg.init if seg.init is not None else None
            for seg, text in segment_texts(template, dummy) if isinstance(seg, Soft)]


def soft_init_ids(tokenizer, words: str) -> list[int]:
    """The token ids whose embeddings initialise `{soft:"words"}` (one soft vector per token).

    `words` carries the space the template puts before the placeholder, so BPE tokenizers
    (GPT-2, RoBERTa) start from the tokens the words would be written with in that place."""
    ids = tokenizer(words, add_special_tokens=False)["input_ids"]
    if not ids:
        raise TemplateError(f'{{soft:"{words}"}}: the words tokenize to nothing')
    return ids


def _truncate_fields(pieces: list[tuple[Segment, list[int]]], overflow: int, template: Template, max_length: int) -> None:
    """Cut `overflow` tokens from the ends of field pieces, always from the longest field."""
    fields = [ids for seg, ids in pieces if isinstance(seg, Field)]
    while overflow > 0:
        longest = max(fields, key=len, default=None)
        if not longest:
            raise TemplateError(
                f"template {template.source!r} needs {overflow} more tokens than max_length={max_length} even with "
                "every text field emptied; shorten the template or raise max_length"
            )
        cut = min(overflow, max(1, len(longest) - max((len(f) for f in fields if f is not longest), default=0)))
        del longest[len(longest) - cut :]
        overflow -= cut

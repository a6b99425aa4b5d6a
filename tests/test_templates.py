"""The template language: parsing, errors, rendering to token ids, truncation."""

from __future__ import annotations

import pytest

from prompttune.backbones import load_tokenizer
from prompttune.errors import TemplateError
from prompttune.templates import (Field, Mask, Soft, Text, Trigger, encode_example, fill_triggers, parse_template,
                                  segment_texts, to_source)

LONG_TEXT = "a good movie " * 60  # ~180 tokens in every English tokenizer


@pytest.fixture(scope="module")
def bert_tok(bert_dir):
    return load_tokenizer(str(bert_dir))


@pytest.fixture(scope="module")
def gpt2_tok(gpt2_dir):
    return load_tokenizer(str(gpt2_dir))


@pytest.fixture(scope="module")
def roberta_tok(roberta_dir):
    return load_tokenizer(str(roberta_dir))


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


# --- parsing ----------------------------------------------------------------------------


def test_a_template_parses_into_fields_text_and_the_mask():
    t = parse_template("{sentence} It was {mask}.")
    assert t.segments == (Field("sentence"), Text(" It was "), Mask(), Text("."))
    assert t.fields == ("sentence",)
    assert t.has_mask


def test_fields_are_listed_once_in_order_of_first_appearance():
    t = parse_template("{premise} ? {mask} , {hypothesis} {premise}")
    assert t.fields == ("premise", "hypothesis")


def test_placeholders_may_have_spaces_inside_the_braces():
    assert parse_template("{ sentence } { mask }").segments == (Field("sentence"), Text(" "), Mask())


def test_soft_forms_give_one_n_or_word_initialised_soft_tokens():
    t = parse_template('{soft} {soft:4} {soft:"It was"} {mask}')
    softs = [s for s in t.segments if isinstance(s, Soft)]
    assert softs == [Soft(1), Soft(4), Soft(0, init="It was")]
    assert t.n_soft == 5  # word-initialised soft tokens are counted once the words are tokenised


def test_trigger_forms_give_one_or_n_trigger_tokens():
    t = parse_template("{s} {trigger} {mask} {trigger:3}")
    assert t.segments == (Field("s"), Text(" "), Trigger(1), Text(" "), Mask(), Text(" "), Trigger(3))
    assert t.n_triggers == 4 and t.n_soft == 0


def test_doubled_braces_are_literal_braces():
    t = parse_template("{{x}} {sentence} }}{{ {mask}")
    assert t.segments == (Text("{x} "), Field("sentence"), Text(" }{ "), Mask())
    assert t.fields == ("sentence",)


# --- parse errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{sentence It was {mask}.", "unbalanced '{' at position 0"),
        ("{sentence} It was {mask", "unbalanced '{' at position 18"),
        ("{sentence} It was} {mask}", "unbalanced '}' at position 17"),
        ("{sentence} {2fast} {mask}", "cannot read placeholder {2fast}"),
        ("{sentence} {soft:x} {mask}", "cannot read placeholder {soft:x}"),
        ("{sentence} {soft:0} {mask}", "number of soft tokens must be ≥ 1"),
        ('{sentence} {soft:""} {mask}', "needs words to initialise from"),
        ("{mask} {sentence} {mask}", "more than one {mask}"),
        ("{sentence} {trigger:0} {mask}", "number of trigger tokens must be ≥ 1"),
        ("{sentence} {trigger:x} {mask}", "cannot read placeholder {trigger:x}"),
        ("{soft} {sentence} {trigger} {mask}", "mixes {soft} and {trigger}"),
        ("", "must be non-empty text"),
        ("   ", "must be non-empty text"),
    ],
)
def test_a_malformed_template_raises_an_error_naming_the_problem(source, expected):
    with pytest.raises(TemplateError) as err:
        parse_template(source)
    assert expected in str(err.value), f"error for {source!r} should say {expected!r}, said: {err.value}"


def test_an_unknown_placeholder_error_lists_the_valid_forms():
    with pytest.raises(TemplateError, match=r"expected \{field_name\}, \{mask\}, \{soft\}.*\{trigger:N\}"):
        parse_template("{sentence} {mask:2}")


# --- writing templates back -------------------------------------------------------------


@pytest.mark.parametrize("source", [
    "{sentence} It was {mask}.",
    "{premise} ? {mask} , {hypothesis}",
    '{soft:4} {sentence} {soft} {soft:"It was"} {mask}',
    "{{x}} {sentence} }}{{ {mask} {{{{",
    "  {a}{b}  {mask}  ",
])
def test_a_template_written_back_parses_to_the_same_segments(source):
    t = parse_template(source)
    assert parse_template("".join(to_source(s) for s in t.segments)).segments == t.segments


def test_fill_triggers_writes_one_word_per_trigger_token_in_order():
    t = parse_template("{s} {trigger:3} {mask} . {trigger}")
    filled = fill_triggers(t, ["so", "it", "was", "{ok}"])
    assert filled == "{s} so it was {mask} . {{ok}}"
    assert parse_template(filled).n_triggers == 0
    assert parse_template(filled).segments == (Field("s"), Text(" so it was "), Mask(), Text(" . {ok}"))


def test_fill_triggers_needs_a_word_for_every_trigger_token():
    with pytest.raises(TemplateError, match="has 3 trigger tokens, got 2 words"):
        fill_triggers(parse_template("{s} {trigger:3} {mask}"), ["so", "it"])


def test_check_fields_names_the_missing_field_and_the_available_ones():
    t = parse_template("{premise} ? {mask} , {hypothesis}")
    t.check_fields(["premise", "hypothesis", "label"])
    with pytest.raises(TemplateError) as err:
        t.check_fields(["premise", "label"])
    assert "['hypothesis']" in str(err.value) and "available fields: ['premise', 'label']" in str(err.value)


def test_require_mask_refuses_a_template_without_mask():
    parse_template("{sentence} It was {mask}.").require_mask()
    with pytest.raises(TemplateError, match=r"has no \{mask\}"):
        parse_template("{sentence} It was good.").require_mask()


# --- rendering --------------------------------------------------------------------------


def test_rendering_wraps_the_text_in_special_tokens_with_the_mask_in_place(bert_tok):
    tok = bert_tok
    enc = encode_example(parse_template("{s} it was {mask}."), tok, {"s": "A fun film"}, mask_fill=[tok.mask_token_id])
    assert tok.convert_ids_to_tokens(enc.ids) == ["[CLS]", "a", "fun", "film", "it", "was", "[MASK]", ".", "[SEP]"]
    assert (enc.mask_start, enc.mask_len) == (6, 1)
    assert enc.ids == tok("a fun film it was [MASK].")["input_ids"], "rendering should equal tokenizing the filled text"


def test_mask_fill_of_k_tokens_takes_k_positions(bert_tok):
    tok = bert_tok
    enc = encode_example(parse_template("{s} it was {mask}."), tok, {"s": "fun"}, mask_fill=[tok.mask_token_id] * 3)
    assert enc.ids[enc.mask_start : enc.mask_start + 3] == [tok.mask_token_id] * 3
    assert enc.mask_len == 3
    assert tok.convert_ids_to_tokens(enc.ids[enc.mask_start + 3 :]) == [".", "[SEP]"]


def test_a_template_without_mask_has_no_mask_position(bert_tok):
    enc = encode_example(parse_template("{s} is good"), bert_tok, {"s": "fun"})
    assert enc.mask_start == -1 and enc.mask_len == 0


def test_soft_tokens_are_placed_and_their_positions_recorded(bert_tok):
    tok = bert_tok
    base = 10_000  # soft token k is rendered as base + k (see prompttune.soft_prompts)
    enc = encode_example(parse_template("{soft:2} {s} {soft} {mask}"), tok, {"s": "fun"},
                         mask_fill=[tok.mask_token_id], soft_base=base)
    assert enc.soft_positions == [1, 2, 4]
    assert [enc.ids[p] for p in enc.soft_positions] == [base, base + 1, base + 2]
    assert enc.mask_start == 5


def test_word_initialised_soft_tokens_get_one_vector_per_token_of_the_words(bert_tok):
    tok = bert_tok
    n_words = len(tok("wonderful movies", add_special_tokens=False)["input_ids"])
    enc = encode_example(parse_template('{soft:"wonderful movies"} {s} {soft} {mask}'), tok, {"s": "fun"},
                         mask_fill=[tok.mask_token_id], soft_base=500)
    assert len(enc.soft_positions) == n_words + 1, f"expected {n_words} word vectors + 1: {enc.soft_positions}"
    assert [enc.ids[p] for p in enc.soft_positions] == list(range(500, 500 + n_words + 1))


def test_soft_tokens_without_a_soft_prompt_method_are_an_error(bert_tok):
    with pytest.raises(TemplateError, match="has soft tokens, but this method has no soft prompt"):
        encode_example(parse_template("{soft:2} {s} {mask}"), bert_tok, {"s": "fun"}, mask_fill=[bert_tok.mask_token_id])


def test_trigger_tokens_are_rendered_and_recorded_like_soft_tokens(bert_tok):
    tok = bert_tok
    base = 10_000  # during a trigger search, trigger token k is rendered as base + k, like soft token k
    enc = encode_example(parse_template("{trigger:2} {s} {trigger} {mask}"), tok, {"s": "fun"},
                         mask_fill=[tok.mask_token_id], soft_base=base)
    assert enc.soft_positions == [1, 2, 4]
    assert [enc.ids[p] for p in enc.soft_positions] == [base, base + 1, base + 2]
    assert enc.mask_start == 5


def test_unfilled_trigger_slots_are_an_error_pointing_to_the_search(bert_tok):
    with pytest.raises(TemplateError, match="has {trigger} slots, which must be filled first with `prompttune search triggers`"):
        encode_example(parse_template("{s} {trigger:2} {mask}"), bert_tok, {"s": "fun"}, mask_fill=[bert_tok.mask_token_id])


def test_a_trigger_carries_the_space_before_it_like_the_mask():
    texts = [text for _, text in segment_texts(parse_template("{trigger} {s} {trigger:2}. {mask}"), {"s": "fun"})]
    assert texts == ["", " fun", " ", ".", " "]


def test_an_example_lacking_a_template_field_is_an_error_naming_it(bert_tok):
    with pytest.raises(TemplateError, match="example has no field 'hypothesis'"):
        encode_example(parse_template("{premise} ? {mask} , {hypothesis}"), bert_tok, {"premise": "fun"})


@pytest.mark.parametrize("tok_fixture", ["gpt2_tok", "roberta_tok"])
def test_the_space_before_the_mask_goes_to_the_label_word(tok_fixture, request):
    tok = request.getfixturevalue(tok_fixture)
    great = ids(tok, " great")
    assert len(great) == 1
    enc = encode_example(parse_template("{s} it was {mask}."), tok, {"s": "a fun film"}, mask_fill=great)
    tokens = tok.convert_ids_to_tokens(enc.ids)
    assert "Ġ" not in tokens, f"a lone space token was rendered: {tokens}"
    assert tokens[enc.mask_start] == "Ġgreat"
    assert enc.ids == tok("a fun film it was great.")["input_ids"], "rendering should equal tokenizing the filled text"


# --- truncation -------------------------------------------------------------------------


@pytest.mark.parametrize("tok_fixture", ["bert_tok", "gpt2_tok"])
def test_a_long_field_is_truncated_and_the_mask_and_template_text_survive(tok_fixture, request):
    tok = request.getfixturevalue(tok_fixture)
    mask_id = tok.mask_token_id if tok.mask_token_id is not None else tok.eos_token_id
    prefix, suffix = ([tok.cls_token_id], [tok.sep_token_id]) if tok_fixture == "bert_tok" else ([], [])
    enc = encode_example(parse_template("{s} it was {mask}. really"), tok, {"s": LONG_TEXT}, mask_fill=[mask_id], max_length=32)
    assert len(enc.ids) == 32
    assert enc.ids[enc.mask_start] == mask_id, "the mask token must sit at mask_start after truncation"
    assert enc.ids[: len(prefix)] == prefix and enc.ids[len(enc.ids) - len(suffix) :] == suffix
    assert enc.ids[enc.mask_start + 1 : len(enc.ids) - len(suffix)] == ids(tok, ". really"), "text after the mask was cut"
    assert enc.ids[enc.mask_start - 2 : enc.mask_start] == ids(tok, " it was"), "text before the mask was cut"
    kept = enc.ids[len(prefix) : enc.mask_start - 2]
    assert kept == ids(tok, LONG_TEXT.strip())[: len(kept)], "the field should lose tokens from its end only"
    assert len(kept) == 32 - len(prefix) - len(suffix) - 2 - 1 - 2


def test_with_two_fields_the_longest_is_cut_first(bert_tok):
    tok = bert_tok
    template = parse_template("{a} ? {mask} , {b}")
    short = "very fun"
    enc = encode_example(template, tok, {"a": LONG_TEXT, "b": short}, mask_fill=[tok.mask_token_id], max_length=24)
    assert len(enc.ids) == 24
    assert enc.ids[-3:-1] == ids(tok, short), "the shorter field should be left whole"
    assert enc.ids[enc.mask_start - 1 : enc.mask_start + 2] == [*ids(tok, "?"), tok.mask_token_id, *ids(tok, ",")]


def test_two_long_fields_are_cut_to_equal_length(bert_tok):
    tok = bert_tok
    template = parse_template("{a} ? {mask} , {b}")
    enc = encode_example(template, tok, {"a": LONG_TEXT, "b": "fun film " * 40}, mask_fill=[tok.mask_token_id], max_length=25)
    n_a = enc.mask_start - 1 - 1  # [CLS] a... ? [MASK]
    n_b = len(enc.ids) - (enc.mask_start + 2) - 1  # [MASK] , b... [SEP]
    assert len(enc.ids) == 25
    assert abs(n_a - n_b) <= 1, f"fields should be cut towards equal length, got {n_a} and {n_b} tokens"


def test_a_template_longer_than_max_length_alone_is_an_error(bert_tok):
    tok = bert_tok
    template = parse_template("{s} " + "it was very good and fun " * 5 + "{mask}")
    with pytest.raises(TemplateError, match="max_length=16 even with every text field emptied"):
        encode_example(template, tok, {"s": "fun"}, mask_fill=[tok.mask_token_id], max_length=16)


def test_sentencepiece_pieces_that_continue_the_text_get_no_spurious_space(t5_dir):
    tok = load_tokenizer(str(t5_dir))
    sentinel = tok.convert_tokens_to_ids("<extra_id_0>")
    enc = encode_example(parse_template("{s}. It was {mask}."), tok, {"s": "great fun"}, mask_fill=[sentinel])
    tokens = tok.convert_ids_to_tokens(enc.ids)
    assert tokens[:3] == ["▁great", "▁fun", "."], f"'.' right after a field must not carry '▁': {tokens}"
    assert tokens[enc.mask_start + 1] == ".", f"'.' right after the mask must not carry '▁': {tokens}"

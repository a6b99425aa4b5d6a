"""LM-BFF template generation (§5.2): the mechanics, on a tiny random T5 and a tiny random BERT.

Random models write meaningless spans; what is checked is that every template produced is an
ordinary template with the fields and one {mask}, that the dev accuracies and the T5 scores it
reports are what a direct computation gives, and that T5's output is parsed as T5 writes it.
"""

from __future__ import annotations

import random

import pytest

from prompttune import load_backbone, parse_template, parse_verbalizer
from prompttune.backbones import Backbone
from prompttune.errors import ConfigError, DataError, ModelError
from prompttune.search.common import zero_shot_accuracy
from prompttune.search.template_generation import (
    WORD, X, Y, check_sentinels, fill_template, generate_templates, parse_spans, patterns, score_spans, t5_inputs,
)
from prompttune.templates import Mask
from tiny_models import SINGLE_TOKEN_WORDS

VERBALIZER = parse_verbalizer({"0": "bad", "1": "good"})


def make_examples(n: int, seed: int, fields=("text",)) -> list[dict]:
    rng = random.Random(seed)
    return [{**{f: " ".join(rng.choices(SINGLE_TOKEN_WORDS, k=5)) for f in fields}, "label": str(i % 2)} for i in range(n)]


TRAIN, DEV = make_examples(6, 0), make_examples(8, 1)


@pytest.fixture(scope="module")
def generated(t5_dir, bert):
    return generate_templates(str(t5_dir), bert, VERBALIZER, ["text"], TRAIN, DEV, beams=4, keep=3, max_new_tokens=6,
                              progress=False)


def test_generated_templates_are_ordinary_templates_with_the_field_and_one_mask(generated):
    assert generated.templates and len(generated.templates) <= 3
    assert generated.template == generated.templates[0]["template"]
    for entry in generated.templates:
        template = parse_template(entry["template"])
        assert template.fields == ("text",)
        assert sum(isinstance(s, Mask) for s in template.segments) == 1


def test_reported_dev_accuracy_is_zero_shot_accuracy_and_ranking_is_best_first(generated, bert):
    for entry in generated.templates:
        assert entry["dev_accuracy"] == zero_shot_accuracy(bert, parse_template(entry["template"]), VERBALIZER, DEV)
    keys = [(-e["dev_accuracy"], -e["t5_score"]) for e in generated.templates]
    assert keys == sorted(keys)


def test_two_text_fields_put_the_mask_between_them(t5_dir, bert):
    train, dev = make_examples(4, 2, ("premise", "hypothesis")), make_examples(4, 3, ("premise", "hypothesis"))
    found = generate_templates(str(t5_dir), bert, VERBALIZER, ["premise", "hypothesis"], train, dev, beams=2, keep=2,
                               max_new_tokens=4, progress=False)
    for entry in found.templates:
        text = entry["template"]
        assert text.startswith("{premise}") and text.endswith("{hypothesis}") and text.count("{mask}") == 1


def test_a_causal_backbone_skips_templates_that_start_with_the_mask(t5_dir, gpt2_dir):
    # The tiny T5 sometimes writes an empty X, giving "{mask} {text}", which a causal LM cannot score.
    found = generate_templates(str(t5_dir), load_backbone(str(gpt2_dir)), VERBALIZER, ["text"], TRAIN, DEV, beams=4,
                               keep=20, max_new_tokens=6, progress=False)
    assert found.skipped >= 1
    assert not any(e["template"].startswith("{mask}") for e in found.templates)
    assert len(found.templates) + found.skipped == found.candidates  # keep=20 shortlists every candidate


def test_t5_score_is_the_sum_over_training_examples_of_the_spans_log_likelihood(t5):
    tok, words = t5.tokenizer, ["bad" if ex["label"] == "0" else "good" for ex in TRAIN]
    inputs = t5_inputs(t5, ("text", X, WORD, Y), TRAIN, words, max_length=128)
    target = tok("<extra_id_0> it was <extra_id_1> . <extra_id_2>", return_tensors="pt")["input_ids"]
    expected = 0.0
    for ex, word, ids in zip(TRAIN, words, inputs):
        enc = tok(f"{ex['text']} <extra_id_0> {word} <extra_id_1>", return_tensors="pt")
        assert ids == enc["input_ids"][0].tolist()
        expected -= t5.model(**enc, labels=target).loss.item() * target.shape[1]  # mean token NLL → sum of log p
    got = score_spans(t5, inputs, [("it was", "."), ("the", "")], batch_size=4)
    assert got[0] == pytest.approx(expected, abs=1e-3)
    assert got[1] != got[0]


@pytest.mark.parametrize("text, spans", [
    ("<pad> <extra_id_0> It was<extra_id_1>.<extra_id_2></s>", ["It was", ".", ""]),
    ("<pad><extra_id_0> a  great <extra_id_1> movie <extra_id_2></s><pad><pad>", ["a great", "movie", ""]),
    ("<pad> <extra_id_0> never closed</s>", ["never closed"]),
    ("noise <extra_id_0> x <extra_id_2> y <extra_id_1> z", ["x"]),  # a sentinel out of order ends the spans
    ("<pad> no sentinel at all</s>", []),
    ("<extra_id_0><extra_id_1> . <extra_id_2> after </s> <extra_id_3> junk", ["", ".", "after"]),
])
def test_parse_spans_reads_t5_outputs(text, spans):
    assert parse_spans(text) == spans


@pytest.mark.parametrize("pattern, x, y, template", [
    (("s", X, WORD, Y), "It was", ".", "{s} It was {mask}."),
    ((X, WORD, Y, "s"), "", ":", "{mask}: {s}"),
    (("a", X, WORD, Y, "b"), "?", ",", "{a}? {mask}, {b}"),
    (("s", X, WORD, Y), "a {b}", "", "{s} a {{b}} {mask}"),
])
def test_fill_template_writes_an_ordinary_template(pattern, x, y, template):
    assert fill_template(pattern, x, y) == template
    parse_template(template)


def test_patterns_are_lm_bffs():
    assert patterns(["s"]) == [("s", X, WORD, Y), (X, WORD, Y, "s")]
    assert patterns(["a", "b"]) == [("a", X, WORD, Y, "b")]
    with pytest.raises(ConfigError, match="one or two text fields"):
        patterns(["a", "b", "c"])


def test_a_generator_without_sentinels_is_refused(bert_dir, bert):
    with pytest.raises(ModelError, match="sentinel"):
        check_sentinels(Backbone("bert", "seq2seq", bert.model, bert.tokenizer))
    with pytest.raises(ModelError):
        generate_templates(str(bert_dir), bert, VERBALIZER, ["text"], TRAIN, DEV, progress=False)


@pytest.mark.parametrize("change, error, words", [
    ({"train": []}, DataError, "train"),
    ({"dev": []}, DataError, "dev"),
    ({"keep": 0}, ConfigError, "keep"),
    ({"beams": 0}, ConfigError, "beams"),
])
def test_bad_input_is_one_actionable_error(t5_dir, bert, change, error, words):
    args = {"train": TRAIN, "dev": DEV, "keep": 2, "beams": 2, **change}
    with pytest.raises(error, match=words):
        generate_templates(str(t5_dir), bert, VERBALIZER, ["text"], args["train"], args["dev"], keep=args["keep"],
                           beams=args["beams"], progress=False)

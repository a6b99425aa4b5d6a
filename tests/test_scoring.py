"""Label-word scoring is exact: every scorer equals a direct computation with the raw HF model.

Each test writes the computation out by hand (text with k mask tokens for a masked LM, the
filled-in text for a causal LM, a teacher-forced decoder for T5) and compares it with
`make_scorer`; the fast paths (all label words single tokens) must agree with the general paths.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prompttune import TaskSpec, build_classifier, load_backbone, parse_template, parse_verbalizer
from prompttune.scoring import make_scorer

EXAMPLES = [{"text": "a fun film"}, {"text": "the worst movie i have seen , really boring"}]
# "wonderful" and "greatest" split into two tokens in every tiny English tokenizer.
VERBALIZER = {"0": ["bad", "wonderful"], "1": ["good", "greatest"]}
SINGLE_TOKEN_VERBALIZER = {"0": ["bad"], "1": ["good"]}
ATOL = 1e-5


def word_ids(tok, word: str, space: bool = True) -> list[int]:
    return tok((" " if space else "") + word, add_special_tokens=False)["input_ids"]


def score_words(backbone, template: str, verbalizer: dict, examples: list[dict], word_score: str = "sum") -> torch.Tensor:
    scorer = make_scorer(backbone, parse_template(template), parse_verbalizer(verbalizer), word_score=word_score)
    with torch.no_grad():
        return scorer(backbone.model, scorer.encode(examples))


# --- direct computations with the raw model ---------------------------------------------


@torch.no_grad()
def direct_masked(backbone, text_with_masks: str, word: list[int]) -> float:
    """Sum of log p(word token j at mask j) for a text holding exactly len(word) mask tokens."""
    tok = backbone.tokenizer
    ids = tok(text_with_masks, return_tensors="pt")["input_ids"]
    positions = (ids[0] == tok.mask_token_id).nonzero().flatten().tolist()
    assert len(positions) == len(word), f"{text_with_masks!r} should hold {len(word)} mask tokens"
    logp = F.log_softmax(backbone.model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(logp[p, t].item() for p, t in zip(positions, word))


@torch.no_grad()
def direct_causal(backbone, prefix: str, filled: str) -> float:
    """log p(filled text after the prefix | prefix), summed over the continuation's tokens."""
    tok = backbone.tokenizer
    pre, full = tok(prefix)["input_ids"], tok(filled)["input_ids"]
    assert full[: len(pre)] == pre, "the prefix must tokenize the same inside the full text"
    logp = F.log_softmax(backbone.model(input_ids=torch.tensor([full])).logits[0].float(), dim=-1)
    return sum(logp[t - 1, full[t]].item() for t in range(len(pre), len(full)))


@torch.no_grad()
def direct_t5(backbone, source: str, word: list[int]) -> float:
    """Encoder reads the text with <extra_id_0>; decoder is teacher-forced on `<pad> <extra_id_0> word`."""
    tok = backbone.tokenizer
    sentinel = tok.convert_tokens_to_ids("<extra_id_0>")
    enc = tok(source, return_tensors="pt")["input_ids"]
    assert sentinel in enc[0].tolist()
    dec = torch.tensor([[tok.pad_token_id, sentinel, *word[:-1]]])
    logp = F.log_softmax(backbone.model(input_ids=enc, decoder_input_ids=dec).logits[0].float(), dim=-1)
    return sum(logp[1 + j, t].item() for j, t in enumerate(word))


def flat(verbalizer: dict) -> list[str]:
    return [w for words in verbalizer.values() for w in words]


# --- masked LMs ---------------------------------------------------------------------------


def test_masked_lm_scores_a_k_token_word_with_k_masks(bert):
    tok = bert.tokenizer
    got = score_words(bert, "{text} it was {mask} .", VERBALIZER, EXAMPLES)
    assert got.shape == (len(EXAMPLES), 4)
    for i, ex in enumerate(EXAMPLES):
        for w, word in enumerate(flat(VERBALIZER)):
            ids = word_ids(tok, word)
            want = direct_masked(bert, f"{ex['text']} it was {' '.join(['[MASK]'] * len(ids))} .", ids)
            assert got[i, w].item() == pytest.approx(want, abs=ATOL), f"example {i}, word {word!r}"


def test_roberta_scores_label_words_with_their_leading_space(roberta):
    tok = roberta.tokenizer
    got = score_words(roberta, "{text} it was {mask} .", VERBALIZER, EXAMPLES)
    for i, ex in enumerate(EXAMPLES):
        for w, word in enumerate(flat(VERBALIZER)):
            ids = word_ids(tok, word)  # " wonderful" -> Ġwonder ful
            want = direct_masked(roberta, f"{ex['text']} it was{'<mask>' * len(ids)} .", ids)
            assert got[i, w].item() == pytest.approx(want, abs=ATOL), f"example {i}, word {word!r}"


def test_masked_lm_single_token_words_score_the_same_with_a_multi_token_word_beside_them(bert):
    fast = score_words(bert, "{text} it was {mask} .", SINGLE_TOKEN_VERBALIZER, EXAMPLES)
    mixed = score_words(bert, "{text} it was {mask} .", {"0": ["bad", "wonderful"], "1": ["good"]}, EXAMPLES)
    assert torch.equal(mixed[:, [0, 2]], fast), "the k=1 pass is the same pass with or without longer words"


# --- causal LMs ---------------------------------------------------------------------------


def test_causal_lm_scores_the_word_and_the_text_after_it_given_the_prefix(gpt2):
    got = score_words(gpt2, "{text} it was {mask} .", VERBALIZER, EXAMPLES)
    for i, ex in enumerate(EXAMPLES):
        for w, word in enumerate(flat(VERBALIZER)):
            prefix = f"{ex['text']} it was"
            want = direct_causal(gpt2, prefix, f"{prefix} {word} .")
            assert got[i, w].item() == pytest.approx(want, abs=ATOL), f"example {i}, word {word!r}"


def test_causal_lm_scores_a_multi_token_word_at_the_end_of_the_template(gpt2):
    got = score_words(gpt2, "{text} it was {mask}", VERBALIZER, EXAMPLES)
    for i, ex in enumerate(EXAMPLES):
        for w, word in enumerate(flat(VERBALIZER)):
            prefix = f"{ex['text']} it was"
            want = direct_causal(gpt2, prefix, f"{prefix} {word}")
            assert got[i, w].item() == pytest.approx(want, abs=ATOL), f"example {i}, word {word!r}"


def test_causal_lm_fast_path_equals_the_next_token_distribution_and_the_general_path(gpt2):
    scorer = make_scorer(gpt2, parse_template("{text} it was {mask}"), parse_verbalizer(SINGLE_TOKEN_VERBALIZER))
    assert scorer.fast, "single-token words with nothing after the mask should take the fast path"
    fast = score_words(gpt2, "{text} it was {mask}", SINGLE_TOKEN_VERBALIZER, EXAMPLES)
    for i, ex in enumerate(EXAMPLES):
        for w, word in enumerate(flat(SINGLE_TOKEN_VERBALIZER)):
            prefix = f"{ex['text']} it was"
            assert fast[i, w].item() == pytest.approx(direct_causal(gpt2, prefix, f"{prefix} {word}"), abs=ATOL)
    mixed = score_words(gpt2, "{text} it was {mask}", {"0": ["bad", "wonderful"], "1": ["good"]}, EXAMPLES)
    # Different sequence lengths, so allow float rounding (the two paths agree exactly on CPU today).
    torch.testing.assert_close(mixed[:, [0, 2]], fast, atol=1e-6, rtol=0)


# --- seq2seq LMs --------------------------------------------------------------------------


def test_t5_scores_the_word_after_the_sentinel_teacher_forced(t5):
    tok = t5.tokenizer
    got = score_words(t5, "{text} it was {mask} .", VERBALIZER, EXAMPLES)
    for i, ex in enumerate(EXAMPLES):
        for w, word in enumerate(flat(VERBALIZER)):
            want = direct_t5(t5, f"{ex['text']} it was <extra_id_0> .", word_ids(tok, word))
            assert got[i, w].item() == pytest.approx(want, abs=ATOL), f"example {i}, word {word!r}"


def test_t5_fast_path_equals_the_general_path_for_single_token_words(t5):
    scorer = make_scorer(t5, parse_template("{text} it was {mask} ."), parse_verbalizer(SINGLE_TOKEN_VERBALIZER))
    assert scorer.fast
    fast = score_words(t5, "{text} it was {mask} .", SINGLE_TOKEN_VERBALIZER, EXAMPLES)
    mixed = score_words(t5, "{text} it was {mask} .", {"0": ["bad", "wonderful"], "1": ["good"]}, EXAMPLES)
    # Different sequence lengths, so allow float rounding (the two paths agree exactly on CPU today).
    torch.testing.assert_close(mixed[:, [0, 2]], fast, atol=1e-6, rtol=0)


# --- word_score: mean -------------------------------------------------------------------
# The sum is checked against the direct computations above; the mean is that sum over the number of
# tokens scored, on every kind of model.


@pytest.mark.parametrize("kind", ["bert", "t5"])
def test_masked_and_t5_mean_word_score_is_the_per_token_average(kind, request):
    """BERT: the word's tokens at as many [MASK]s; T5: the word as the span after <extra_id_0>."""
    model = request.getfixturevalue(kind)
    got = score_words(model, "{text} it was {mask} .", VERBALIZER, EXAMPLES, word_score="mean")
    for i, ex in enumerate(EXAMPLES):
        for w, word in enumerate(flat(VERBALIZER)):
            ids = word_ids(model.tokenizer, word)
            if kind == "bert":
                want = direct_masked(model, f"{ex['text']} it was {' '.join(['[MASK]'] * len(ids))} .", ids)
            else:
                want = direct_t5(model, f"{ex['text']} it was <extra_id_0> .", ids)
            assert got[i, w].item() == pytest.approx(want / len(ids), abs=ATOL), f"{kind}: example {i}, word {word!r}"


@pytest.mark.parametrize("after", [" .", ""], ids=["text-after-the-mask", "mask-at-the-end"])
def test_causal_lm_mean_word_score_averages_the_tokens_scored_after_the_prefix(gpt2, after):
    tok = gpt2.tokenizer
    got = score_words(gpt2, "{text} it was {mask}" + after, VERBALIZER, EXAMPLES, word_score="mean")
    for i, ex in enumerate(EXAMPLES):
        for w, word in enumerate(flat(VERBALIZER)):
            prefix = f"{ex['text']} it was"
            n = len(tok(f"{prefix} {word}{after}")["input_ids"]) - len(tok(prefix)["input_ids"])
            want = direct_causal(gpt2, prefix, f"{prefix} {word}{after}") / n
            assert got[i, w].item() == pytest.approx(want, abs=ATOL), f"example {i}, word {word!r}"




@pytest.mark.parametrize("fixture", ["bert", "gpt2", "t5"])
def test_single_token_words_score_the_same_under_sum_and_mean(fixture, request):
    backbone = request.getfixturevalue(fixture)
    # (A causal LM also scores template text after the mask, which the mean averages in: end at the mask.)
    args = (backbone, "{text} it was {mask}", SINGLE_TOKEN_VERBALIZER, EXAMPLES)
    assert torch.equal(score_words(*args, word_score="sum"), score_words(*args, word_score="mean"))


def test_a_task_keeps_its_word_score_through_save_and_load(gpt2, gpt2_dir, tmp_path):
    from prompttune import load_artifact, save_artifact

    spec = TaskSpec(method="zero-shot", model=str(gpt2_dir), text_fields=["text"], labels=["0", "1"],
                    template="{text} it was {mask} .", verbalizer=VERBALIZER, word_score="mean")
    clf, fp = build_classifier(spec, gpt2)
    save_artifact(tmp_path / "task", spec, clf, fp)
    loaded, config = load_artifact(tmp_path / "task", gpt2)
    assert config["word_score"] == "mean" and loaded.scorer.word_score == "mean"
    with torch.no_grad():
        want = score_words(gpt2, spec.template, VERBALIZER, EXAMPLES, word_score="mean")
        torch.testing.assert_close(loaded.word_scores(loaded.collate(EXAMPLES)), want, atol=ATOL, rtol=0)


# --- class scores -------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["bert_dir", "gpt2_dir"])
def test_zero_shot_class_scores_are_the_mean_of_each_class_word_scores(fixture, request):
    spec = TaskSpec(method="zero-shot", model=str(request.getfixturevalue(fixture)), text_fields=["text"],
                    labels=["0", "1"], template="{text} it was {mask} .", verbalizer=VERBALIZER)
    clf, _ = build_classifier(spec)
    backbone = load_backbone(spec.model)  # same weights, scored independently of the classifier
    with torch.no_grad():
        got = clf(clf.collate(EXAMPLES))
    tok = backbone.tokenizer
    for i, ex in enumerate(EXAMPLES):
        for c, words in enumerate(VERBALIZER.values()):
            scores = []
            for word in words:
                if fixture == "bert_dir":
                    ids = word_ids(tok, word)
                    scores.append(direct_masked(backbone, f"{ex['text']} it was {' '.join(['[MASK]'] * len(ids))} .", ids))
                else:
                    prefix = f"{ex['text']} it was"
                    scores.append(direct_causal(backbone, prefix, f"{prefix} {word} ."))
            assert got[i, c].item() == pytest.approx(sum(scores) / len(scores), abs=ATOL), f"example {i}, class {c}"


# --- the seeds' Chinese examples ----------------------------------------------------------


def test_chinese_two_character_label_words_use_two_masks(bert_zh):
    tok = bert_zh.tokenizer
    verbalizer = {"pos": ["开心"], "neg": ["难过"]}
    scorer = make_scorer(bert_zh, parse_template("今天天气很好。我很{mask}"), parse_verbalizer(verbalizer))
    assert [len(w) for w in scorer.word_ids] == [2, 2]
    batch = scorer.encode([{}])
    assert (batch["ids2"][0] == tok.mask_token_id).sum().item() == 2
    with torch.no_grad():
        got = scorer(bert_zh.model, batch)
    for w, word in enumerate(["开心", "难过"]):
        want = direct_masked(bert_zh, "今天天气很好。我很[MASK][MASK]", word_ids(tok, word, space=False))
        assert got[0, w].item() == pytest.approx(want, abs=ATOL), f"word {word!r}"


def test_chinese_mask_before_the_text_field_scores_exactly(bert_zh):
    tok = bert_zh.tokenizer
    examples = [{"text": "东西很好吃"}, {"text": "电脑不错"}]
    got = score_words(bert_zh, "这是一条{mask}评论：{text}", {"食品": ["水果"], "电子": ["电脑"]}, examples)
    for i, ex in enumerate(examples):
        for w, word in enumerate(["水果", "电脑"]):
            want = direct_masked(bert_zh, f"这是一条[MASK][MASK]评论：{ex['text']}", word_ids(tok, word, space=False))
            assert got[i, w].item() == pytest.approx(want, abs=ATOL), f"example {i}, word {word!r}"

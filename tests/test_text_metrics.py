"""Generation metrics are the maintained libraries' own numbers (sacrebleu, rouge-score), with one or
several references per input and a different number per input."""

from __future__ import annotations

import pytest
from rouge_score.rouge_scorer import RougeScorer
from sacrebleu.metrics import BLEU, CHRF

from prompttune.errors import DataError
from prompttune.text_metrics import generation_metrics, normalized

HYPOTHESES = ["The Aromi is a pub serving Italian food.", "Cocum is a family friendly coffee shop.", "Zizzi sells cheap food"]
REFERENCES = [  # 3, 1 and 2 references
    ["Aromi is a pub that serves Italian food.", "The Aromi pub serves Italian food.", "Italian food is served at the Aromi pub."],
    ["Cocum is a family friendly coffee shop."],
    ["Zizzi is a cheap restaurant.", "Cheap food can be found at Zizzi."],
]


def test_bleu_and_chrf_are_sacrebleus_with_a_variable_number_of_references():
    streams = [[refs[k] if k < len(refs) else None for refs in REFERENCES] for k in range(3)]
    bleu = BLEU()
    expected = bleu.corpus_score(HYPOTHESES, streams).score
    result = generation_metrics(HYPOTHESES, REFERENCES)
    assert result["bleu"] == pytest.approx(expected)
    assert result["chrf"] == pytest.approx(CHRF().corpus_score(HYPOTHESES, streams).score)
    assert result["bleu_signature"] == str(bleu.get_signature()) and "nrefs:var" in result["bleu_signature"]
    assert (result["n"], result["references"]) == (3, 6)


def test_bleu_with_one_reference_each_equals_sacrebleu_on_one_stream():
    refs = [r[:1] for r in REFERENCES]
    result = generation_metrics(HYPOTHESES, refs)
    assert result["bleu"] == pytest.approx(BLEU().corpus_score(HYPOTHESES, [[r[0] for r in refs]]).score)
    assert "nrefs:1" in result["bleu_signature"]


def test_rouge_l_is_the_mean_of_each_inputs_best_reference_f_measure():
    scorer = RougeScorer(["rougeL"], use_stemmer=False)
    best = [max(scorer.score(ref, hyp)["rougeL"].fmeasure for ref in refs) for hyp, refs in zip(HYPOTHESES, REFERENCES)]
    assert generation_metrics(HYPOTHESES, REFERENCES)["rouge_l"] == pytest.approx(100 * sum(best) / len(best))


def test_a_perfect_output_scores_100_everywhere():
    result = generation_metrics(["a pub near the river"], [["a pub near the river", "a riverside pub"]])
    assert (result["bleu"], result["chrf"], result["rouge_l"], result["exact_match"]) == pytest.approx((100, 100, 100, 100))


def test_exact_match_ignores_outer_and_repeated_whitespace_but_not_case_or_punctuation():
    hyps = ["  The Aromi   pub \n", "the aromi pub", "The Aromi pub.", "Zizzi"]
    refs = [["The Aromi pub"], ["The Aromi pub"], ["The Aromi pub"], ["Cocum", "Zizzi"]]
    assert generation_metrics(hyps, refs)["exact_match"] == pytest.approx(50.0)  # the first and the last
    assert normalized("\tA  b\n c ") == "A b c"


def test_no_inputs_score_zero_with_n_zero():
    result = generation_metrics([], [])
    assert result["n"] == 0 and result["references"] == 0 and result["bleu_signature"] is None
    assert (result["bleu"], result["chrf"], result["rouge_l"], result["exact_match"]) == (0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize(("hyps", "refs", "message"), [
    (["a", "b"], [["a"]], "2 generated text"),
    (["a", "b"], [["a"], []], "input 2 has no reference"),
])
def test_mismatched_inputs_are_refused(hyps, refs, message):
    with pytest.raises(DataError, match=message):
        generation_metrics(hyps, refs)


def test_rouge_l_keeps_only_ascii_letters_and_digits():
    """rouge-score's tokenizer: text in other scripts has no tokens (the docstring says to read chrF)."""
    result = generation_metrics(["北京是首都"], [["北京是中国的首都"]])
    assert result["rouge_l"] == 0.0 and result["chrf"] > 0


@pytest.mark.parametrize(("hypotheses", "references", "message"), [
    (["a"], [[None]], r"input 1 has a reference that is not text \(None\)"),
    (["a", "b"], [["a"], ["b", None]], r"input 2 has a reference that is not text"),
    ([None], [["a"]], r"generated text 1 is not text"),
])
def test_a_reference_or_text_that_is_not_a_string_is_refused(hypotheses, references, message):
    with pytest.raises(DataError, match=message):
        generation_metrics(hypotheses, references)

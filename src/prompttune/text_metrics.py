"""Generation metrics: how close generated texts are to their references, computed by maintained
libraries (sacrebleu for BLEU and chrF, rouge-score for ROUGE-L), never by n-gram code of our own.

Every input may have several references, and inputs may have different numbers of them (E2E has
1 to 40+ descriptions per meaning representation). Scores are on a 0–100 scale, as sacrebleu
reports them, exact match included, so the numbers of one evaluation read alike.
"""

from __future__ import annotations

import re

from .errors import DataError


def generation_metrics(hypotheses: list[str], references: list[list[str]]) -> dict:
    """BLEU, chrF, ROUGE-L and exact match of `hypotheses` (one generated text per input) against
    `references` (each input's references, one or more, as many as it has).

    - `bleu`: sacrebleu's corpus BLEU (default 13a tokenization, mixed case, exponential smoothing),
      n-grams matched against all of an input's references. `bleu_signature` is sacrebleu's signature
      of the settings (nrefs, case, tokenizer, smoothing, version): compare BLEU numbers only when
      their signatures are equal.
    - `chrf`: sacrebleu's corpus chrF (character 6-grams, β = 2), the best of an input's references.
    - `rouge_l`: rouge-score's ROUGE-L F-measure of each input against its best reference
      (`RougeScorer.score_multi`), the mean over inputs, × 100. Without stemming (`use_stemmer=False`):
      the E2E challenge's own metric script and Hugging Face `evaluate` do not stem, and stemming
      would credit "serves" for "served". rouge-score lowercases and keeps only ASCII letters and
      digits as tokens, so text in other scripts (Chinese, accented letters) scores little or nothing
      here: read BLEU and chrF for those.
    - `exact_match`: the share of inputs, × 100, whose text equals one of its references once both
      are stripped and every run of whitespace is one space (case and punctuation count).
    - `n`: inputs; `references`: references over all inputs.

    No inputs give every score 0.0 with `n` 0 and no signature (None). Raises `DataError` if the two
    lists differ in length, an input has no reference, or a text or reference is not a string (None...).

    Example:
        >>> generation_metrics(["Aromi is a pub serving Italian food.", "Cocum is a coffee shop."],
        ...                    [["Aromi is a pub that serves Italian food.", "The Aromi pub serves Italian food."],
        ...                     ["Cocum is a coffee shop."]])
        {'bleu': 72.13..., 'chrf': 77.31..., 'rouge_l': 90.0, 'exact_match': 50.0, 'n': 2, 'references': 3,
         'bleu_signature': 'nrefs:var|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0'}
    """
    from rouge_score.rouge_scorer import RougeScorer
    from sacrebleu.metrics import BLEU, CHRF

    if len(hypotheses) != len(references):
        raise DataError(f"{len(hypotheses)} generated text(s) for {len(references)} input(s) with references; "
                        "give one text per input")
    empty = next((i for i, refs in enumerate(references) if not refs), None)
    if empty is not None:
        raise DataError(f"input {empty + 1} has no reference to score its text against")
    odd = next(((i, r) for i, refs in enumerate(references) for r in refs if not isinstance(r, str)), None)
    if odd is not None:
        raise DataError(f"input {odd[0] + 1} has a reference that is not text ({odd[1]!r})")
    odd = next(((i, h) for i, h in enumerate(hypotheses) if not isinstance(h, str)), None)
    if odd is not None:
        raise DataError(f"generated text {odd[0] + 1} is not text ({odd[1]!r})")
    if not hypotheses:  # sacrebleu cannot score an empty corpus (nor sign one: nrefs is unknown)
        return {"bleu": 0.0, "chrf": 0.0, "rouge_l": 0.0, "exact_match": 0.0, "n": 0, "references": 0,
                "bleu_signature": None}
    bleu = BLEU()
    # sacrebleu reads references as streams: stream k holds every input's k-th reference, None where
    # an input has fewer than k + 1.
    most = max(len(refs) for refs in references)
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(most)]
    bleu_score = bleu.corpus_score(hypotheses, streams).score
    chrf_score = CHRF().corpus_score(hypotheses, streams).score
    rouge = RougeScorer(["rougeL"], use_stemmer=False)
    rouge_l = sum(rouge.score_multi(refs, hyp)["rougeL"].fmeasure for hyp, refs in zip(hypotheses, references))
    matches = sum(normalized(hyp) in {normalized(r) for r in refs} for hyp, refs in zip(hypotheses, references))
    n = len(hypotheses)
    return {"bleu": bleu_score, "chrf": chrf_score, "rouge_l": 100 * rouge_l / n, "exact_match": 100 * matches / n,
            "n": n, "references": sum(len(refs) for refs in references),
            "bleu_signature": str(bleu.get_signature())}


def normalized(text: str) -> str:
    """`text` as exact match compares it: stripped, every run of whitespace made one space.

    Example:
        >>> normalized("  The Aromi\\n serves  food. ")
        'The Aromi serves food.'
    """
    return re.sub(r"\s+", " ", text.strip())

"""Label-word search (LM-BFF §5.1) is exact bookkeeping over the ordinary scorer.

The vocabulary log-probs it reads are the scorer's own scores of single-token words; its
candidates are the brute-force per-class ranking of those scores; the verbalizer it returns scores
exactly the dev accuracy it reports when used as an ordinary verbalizer. Random tiny models: the
words chosen mean nothing, the mechanics are checked.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from prompttune import parse_template, parse_verbalizer
from prompttune.errors import ConfigError, DataError, TemplateError
from prompttune.evaluation import evaluate
from prompttune.models import PromptClassifier
from prompttune.scoring import mask_leading_space
from prompttune.search import label_words
from prompttune.search.common import token_text, word_tokens
from prompttune.search.label_words import assignment_fit, best_assignments, search_label_words
from tiny_models import SINGLE_TOKEN_WORDS

LABELS = ["0", "1", "2"]
TEMPLATE = "{text} It was {mask}."


def make_examples(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"text": " ".join(rng.choices(SINGLE_TOKEN_WORDS, k=6)), "label": LABELS[i % 3]} for i in range(n)]


TRAIN, DEV = make_examples(18, 0), make_examples(12, 1)


def search(backbone, template=TEMPLATE, **kwargs):
    kwargs = {"per_class": 4, "assignments": 6, "batch_size": 8, "progress": False, **kwargs}
    return search_label_words(backbone, parse_template(template), LABELS, TRAIN, DEV, **kwargs)


# A causal LM with text after the mask scores that text too: the search rescores its candidates.
@pytest.mark.parametrize("fixture, template", [
    ("bert", TEMPLATE), ("roberta", TEMPLATE), ("t5", TEMPLATE), ("gpt2", "{text} It was {mask}"), ("gpt2", TEMPLATE),
])
def test_every_ranked_verbalizer_scores_exactly_its_reported_accuracy(fixture, template, request):
    backbone = request.getfixturevalue(fixture)
    found = search(backbone, template)
    assert found.verbalizer == found.ranking[0]["verbalizer"]
    assert (found.dev_accuracy, found.train_accuracy) == (found.ranking[0]["dev_accuracy"], found.ranking[0]["train_accuracy"])
    for entry in found.ranking:
        clf = PromptClassifier(backbone, parse_template(template), parse_verbalizer(entry["verbalizer"]), 128)
        dev = evaluate(clf, DEV, batch_size=8)
        assert dev["accuracy"] == entry["dev_accuracy"]
        assert dev["loss"] == pytest.approx(entry["dev_loss"], abs=1e-5)
        assert evaluate(clf, TRAIN, batch_size=8)["accuracy"] == entry["train_accuracy"]


def test_the_ranking_is_best_first_and_keeps_at_most_the_assignments_asked_for(bert):
    found = search(bert, assignments=5)
    assert len(found.ranking) == 5
    keys = [(-e["dev_accuracy"], e["dev_loss"]) for e in found.ranking]
    assert keys == sorted(keys)
    for entry in found.ranking:  # one candidate word per class, from that class's candidates
        assert all(entry["verbalizer"][c][0] in found.candidates[c] for c in LABELS)


@pytest.mark.parametrize("fixture, template", [
    ("bert", TEMPLATE), ("roberta", TEMPLATE), ("gpt2", "{text} It was {mask}"), ("t5", TEMPLATE), ("t5", "{mask} : {text}"),
])
def test_vocab_logprobs_are_the_scorers_scores_of_single_token_words(fixture, template, request):
    backbone = request.getfixturevalue(fixture)
    words = ["good", "bad", "movie", "the", "yes"]
    clf = PromptClassifier(backbone, parse_template(template), parse_verbalizer({str(i): w for i, w in enumerate(words)}))
    clf.eval()  # a classifier starts in training mode (dropout); `evaluate` leaves it there
    ids = [i[0] for i in clf.scorer.word_ids]
    with torch.no_grad():
        vocab = clf.scorer.vocab_logprobs(clf.model, TRAIN[:5])  # (5, V)
        scores = clf.word_scores(clf.collate(TRAIN[:5]))  # (5, 5)
    assert vocab.shape == (5, len(backbone.tokenizer))
    torch.testing.assert_close(vocab[:, ids], scores, atol=1e-5, rtol=0)


def brute_force_candidates(backbone, template: str, per_class: int) -> dict[str, list[str]]:
    """Every whole word scored as an ordinary label word; per class, its summed log-prob over the
    class's training examples; each word to the class where it ranks best (ties: higher mean),
    or its next best class when that one is full."""
    tok = backbone.tokenizer
    parsed = parse_template(template)
    words = [token_text(tok, i) for i in word_tokens(tok, leading_space=mask_leading_space(parsed))]
    clf = PromptClassifier(backbone, parsed, parse_verbalizer({str(i): w for i, w in enumerate(words)}), 128).eval()
    with torch.no_grad():
        scores = clf.word_scores(clf.collate(TRAIN)).tolist()  # (N, W)
    totals = {c: [sum(s[w] for s, ex in zip(scores, TRAIN) if ex["label"] == c) for w in range(len(words))] for c in LABELS}
    rank = {c: {w: r for r, w in enumerate(sorted(range(len(words)), key=lambda w: -totals[c][w]))} for c in LABELS}
    pairs = sorted((rank[c][w], -totals[c][w], LABELS.index(c), w) for c in LABELS for w in range(len(words)))
    chosen, taken = {c: [] for c in LABELS}, set()
    for _, _, c, w in pairs:  # every class has the same number of training examples: totals order like means
        if w not in taken and len(chosen[LABELS[c]]) < per_class:
            chosen[LABELS[c]].append(w)
            taken.add(w)
    return {c: [words[w] for w in ws] for c, ws in chosen.items()}


@pytest.mark.parametrize("fixture", ["bert", "gpt2"])
def test_candidates_are_the_brute_force_per_class_ranking(fixture, request):
    backbone = request.getfixturevalue(fixture)
    template = "{text} It was {mask}"
    found = search(backbone, template, per_class=6, assignments=1)
    assert found.candidates == brute_force_candidates(backbone, template, per_class=6)


def test_best_assignments_is_exhaustive_below_the_beam_width_and_prunes_above_it(monkeypatch):
    torch.manual_seed(0)
    scores, gold = torch.randn(40, 9).log_softmax(-1), torch.arange(40) % 3
    choices = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    every = torch.tensor(list(itertools.product(*choices)))
    correct, loss = assignment_fit(scores, gold, every)
    expected = sorted(range(len(every)), key=lambda i: (-int(correct[i]), float(loss[i]), i))[:5]
    assert best_assignments(scores, gold, choices, 5).tolist() == every[expected].tolist()

    monkeypatch.setattr(label_words, "BEAM_WIDTH", 4)
    pruned = best_assignments(scores, gold, choices, 5)
    assert len(pruned) == 4 and all(a[c] in choices[c] for a in pruned.tolist() for c in range(3))


def test_assignment_fit_counts_a_classifiers_correct_predictions():
    scores = torch.tensor([[0.0, -1.0, -2.0], [0.0, -1.0, -2.0], [-3.0, -1.0, 0.0]])
    correct, _ = assignment_fit(scores, torch.tensor([0, 1, 1]), torch.tensor([[0, 1], [2, 1]]))
    assert correct.tolist() == [2, 1]  # [0, 1] gets examples 0 and 2 right; [2, 1] only example 1


@pytest.mark.parametrize("change, error, words", [
    ({"train": [ex for ex in TRAIN if ex["label"] != "2"]}, DataError, "no training examples"),
    ({"dev": []}, DataError, "dev"),
    ({"template": "{text} It was good."}, TemplateError, "no {mask}"),
    ({"template": "{soft} {text} It was {mask}."}, TemplateError, "soft"),
    ({"per_class": 0}, ConfigError, "per_class"),
    ({"assignments": 0}, ConfigError, "assignments"),
    ({"train": TRAIN + [{"text": "fun", "label": "7"}]}, DataError, "'7'"),
])
def test_bad_input_is_one_actionable_error(bert, change, error, words):
    args = {"template": TEMPLATE, "train": TRAIN, "dev": DEV, "per_class": 4, "assignments": 6, **change}
    with pytest.raises(error, match=words.replace("{", r"\{").replace("}", r"\}")):
        search_label_words(bert, parse_template(args["template"]), LABELS, args["train"], args["dev"],
                           per_class=args["per_class"], assignments=args["assignments"], progress=False)

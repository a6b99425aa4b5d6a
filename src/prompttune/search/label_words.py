"""Automatic label words: PETAL (Schick et al. 2020) and LM-BFF (Gao et al. 2021, §5.1).

With the frozen backbone alone, in two steps:

1. Candidates. For each class c, every whole-word token w is ranked by
   sum over the class-c training examples x of log p(w at the mask | x) (LM-BFF's per-class
   likelihood); the top `per_class` are kept. A word is kept for one class only, the one where it
   ranks best, so no assignment can put one word on two classes.
2. Assignment. One word per class, from the Cartesian product of the candidates (pruned by a beam
   over classes where it is too large, as LM-BFF does), ranked by zero-shot accuracy on train; the
   top `assignments` are re-ranked by zero-shot accuracy on dev (ties: lower dev cross-entropy).

Every candidate is one token, so its class score is one column of the vocabulary log-probs at the
mask: one pass over train and one over dev score every assignment. (A causal LM with template text
after the mask also scores that text; there the candidates are rescored by the ordinary scorer,
one more pass each.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..backbones import Backbone
from ..errors import ConfigError, DataError, ModelError, TemplateError
from ..evaluation import predict_scores
from ..models import PromptClassifier, bind_prompts
from ..progress import bar_off
from ..scoring import mask_leading_space, text_after_mask
from ..templates import Template
from ..verbalizers import label_key, parse_verbalizer
from .common import token_text, word_tokens

BEAM_WIDTH = 10_000
"""Partial assignments kept per class when the Cartesian product of the candidates is larger."""


@dataclass
class LabelWordSearch:
    """What `search_label_words` found."""

    verbalizer: dict[str, list[str]]
    """The best assignment, an ordinary verbalizer mapping (label → [word]) for `parse_verbalizer`."""
    dev_accuracy: float
    train_accuracy: float
    candidates: dict[str, list[str]]
    """Each class's candidate words, best first."""
    ranking: list[dict]
    """The assignments kept after the train ranking, best first:
    {"verbalizer", "train_accuracy", "dev_accuracy", "dev_loss"}."""


def search_label_words(backbone: Backbone, template: Template, labels: list[str], train: list[dict], dev: list[dict], *,
                       per_class: int = 20, assignments: int = 50, max_length: int = 128, batch_size: int = 32,
                       progress: bool = True) -> LabelWordSearch:
    """Find one label word per class for `template` (LM-BFF's automatic label-word selection).

    Example:
        >>> found = search_label_words(bb, parse_template("{text} It was {mask}."), ["0", "1"], train, dev)
        >>> found.verbalizer, found.dev_accuracy
        ({'0': ['terrible'], '1': ['great']}, 0.84)
    """
    if per_class < 1 or assignments < 1:
        raise ConfigError(f"per_class and assignments must be ≥ 1, got per_class={per_class}, "
                          f"assignments={assignments}")
    template.require_mask()
    if template.n_soft:
        raise TemplateError(f"template {template.source!r} has soft tokens; the label-word search scores words with "
                            "the frozen backbone alone, so remove {soft}")
    labels = [label_key(label) for label in labels]
    if not dev:
        raise DataError("the label-word search needs labelled dev examples: it chooses among assignments by "
                        "dev accuracy")
    train_gold, dev_gold = _gold(train, labels, "train"), _gold(dev, labels, "dev")
    empty = [label for c, label in enumerate(labels) if not (train_gold == c).any()]
    if empty:
        raise DataError(f"label(s) {empty} have no training examples; each class's candidate words are ranked on "
                        "its own training examples, so give every class some")

    tok = backbone.tokenizer
    vocab = word_tokens(tok, leading_space=mask_leading_space(template), alphabetic=True)  # (W,)
    if len(vocab) < len(labels):
        raise ModelError(f"the tokenizer has {len(vocab)} whole-word tokens, fewer than the {len(labels)} classes")
    # Each class can get its full share: the greedy pass in `rank_candidates` never runs dry.
    per_class = min(per_class, len(vocab) // len(labels))
    # Any verbalizer builds the scorer; its vocabulary log-probs do not depend on the words.
    placeholder = parse_verbalizer({label: token_text(tok, vocab[0]) for label in labels})
    probe = PromptClassifier(backbone, template, placeholder, max_length)
    train_logp = _vocab_logprobs(probe, train, vocab, batch_size, progress, "label words: train")  # (N, W)
    picked = rank_candidates(train_logp, train_gold, len(labels), per_class)
    columns = [w for words in picked for w in words]  # every candidate, class by class
    words = [token_text(tok, vocab[w]) for w in columns]

    if backbone.kind == "causal" and text_after_mask(template):
        # The ordinary score is log p(word, text after it | prefix), not the next-token column.
        one_per_label = parse_verbalizer({str(i): w for i, w in enumerate(words)})
        every = PromptClassifier(backbone, template, one_per_label, max_length)
        every.train(backbone.model.training)  # `predict_scores` restores this mode: leave the backbone's as it was
        train_scores = predict_scores(every, train, batch_size=batch_size, progress=progress)
        dev_scores = predict_scores(every, dev, batch_size=batch_size, progress=progress)
    else:
        train_scores = train_logp[:, columns]
        dev_scores = _vocab_logprobs(probe, dev, vocab[columns], batch_size, progress, "label words: dev")

    offsets = [sum(len(p) for p in picked[:c]) for c in range(len(labels))]
    choices = [list(range(o, o + len(p))) for o, p in zip(offsets, picked)]
    kept = best_assignments(train_scores, train_gold, choices, assignments)  # (A, C) columns of *_scores
    train_correct, _ = assignment_fit(train_scores, train_gold, kept)
    dev_correct, dev_loss = assignment_fit(dev_scores, dev_gold, kept)
    ranking = [
        {"verbalizer": {label: [words[w]] for label, w in zip(labels, kept[i].tolist())},
         "train_accuracy": int(train_correct[i]) / len(train), "dev_accuracy": int(dev_correct[i]) / len(dev),
         "dev_loss": float(dev_loss[i])}
        for i in _order(dev_correct, dev_loss).tolist()
    ]
    best = ranking[0]
    return LabelWordSearch(
        verbalizer=best["verbalizer"], dev_accuracy=best["dev_accuracy"], train_accuracy=best["train_accuracy"],
        candidates={label: [token_text(tok, vocab[w]) for w in p] for label, p in zip(labels, picked)},
        ranking=ranking,
    )


def rank_candidates(logprobs: torch.Tensor, gold: torch.Tensor, n_classes: int, per_class: int) -> list[list[int]]:
    """Each class's `per_class` best columns of (N, W) `logprobs`, best first, by the sum of
    log-probs over the class's examples (LM-BFF). A column goes to the class where it ranks best
    (ties: where its mean log-prob is higher), or to its next best class if that one is full.

    Example:
        >>> rank_candidates(torch.tensor([[0., -1., -2.], [-2., -1., 0.]]), torch.tensor([0, 1]), 2, 1)
        [[0], [2]]
    """
    n_words = logprobs.shape[1]
    sums = torch.stack([logprobs[gold == c].sum(0) for c in range(n_classes)])  # (C, W)
    means = sums / torch.bincount(gold, minlength=n_classes)[:, None]
    order = sums.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n_words).expand(n_classes, -1))  # (C, W)
    # Visit (class, word) pairs from the best rank down: a word goes to the first class to reach it.
    visit = _order(-rank.flatten(), -means.flatten())
    picked: list[list[int]] = [[] for _ in range(n_classes)]
    taken: set[int] = set()
    for i in visit.tolist():
        c, w = divmod(i, n_words)
        if w not in taken and len(picked[c]) < per_class:
            picked[c].append(w)
            taken.add(w)
            if all(len(p) == per_class for p in picked):
                break
    return picked


def best_assignments(scores: torch.Tensor, gold: torch.Tensor, choices: list[list[int]], keep: int) -> torch.Tensor:
    """The `keep` best assignments (one column of (N, W) `scores` per class, from `choices[c]`) by
    training accuracy, then lower cross-entropy: (A, C), best first.

    Classes are added one at a time; when the partial assignments outgrow `BEAM_WIDTH`, only the best
    on the examples of the classes assigned so far are extended (LM-BFF's beam pruning). Below that
    width the search is exhaustive.
    """
    beam = torch.empty(1, 0, dtype=torch.long)
    for words in choices:
        column = torch.tensor(words).repeat(len(beam))[:, None]
        beam = torch.cat([beam.repeat_interleave(len(words), dim=0), column], dim=1)
        if len(beam) > BEAM_WIDTH:
            beam = beam[_order(*assignment_fit(scores, gold, beam))[:BEAM_WIDTH]]
    return beam[_order(*assignment_fit(scores, gold, beam))[:keep]]


def assignment_fit(scores: torch.Tensor, gold: torch.Tensor, assign: torch.Tensor,
                   chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Correct predictions (P,) and mean cross-entropy (P,) of each row of `assign` (P, k): its k
    columns of (N, W) `scores` are the class scores of classes 0..k-1, judged on their examples."""
    known = gold < assign.shape[1]
    scores, gold = scores[known], gold[known]
    correct, loss = [], []
    for part in assign.split(chunk):
        class_scores = scores[:, part].transpose(0, 1)  # (P, n, k)
        target = gold.expand(len(part), -1)  # (P, n)
        correct.append((class_scores.argmax(-1) == target).sum(-1))
        nll = -class_scores.log_softmax(-1).gather(-1, target[..., None]).squeeze(-1)
        loss.append(nll.mean(-1))
    return torch.cat(correct), torch.cat(loss)


def _order(high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """Indices by `high` descending, then `low` ascending, then index."""
    by_low = torch.argsort(low, stable=True)
    return by_low[torch.argsort(high[by_low], descending=True, stable=True)]


@torch.no_grad()
def _vocab_logprobs(probe: PromptClassifier, examples: list[dict], columns: torch.Tensor, batch_size: int,
                    progress: bool, desc: str) -> torch.Tensor:
    """(N, len(columns)) log-probs of those vocabulary tokens at the mask, in the batches `evaluate` uses
    (so the numbers are bit-identical to a classifier's)."""
    bind_prompts(probe)  # no soft prompt or prefix another task left on a shared model
    was_training = probe.model.training
    probe.model.eval()
    out = []
    for i in tqdm(range(0, len(examples), batch_size), desc=desc, disable=bar_off(progress), leave=False):
        logp = probe.scorer.vocab_logprobs(probe.model, examples[i : i + batch_size])  # (B, V)
        out.append(logp[:, columns.to(logp.device)].cpu())
    probe.model.train(was_training)
    return torch.cat(out)


def _gold(examples: list[dict], labels: list[str], split: str) -> torch.Tensor:
    gold = []
    for ex in examples:
        key = label_key(ex.get("label", ""))
        if key not in labels:
            raise DataError(f"{split} example label {key!r} is not one of the labels searched for {labels}")
        gold.append(labels.index(key))
    return torch.tensor(gold, dtype=torch.long)

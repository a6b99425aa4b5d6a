"""Evaluation: predictions, accuracy and macro-F1 of a classifier on examples; on request the per-class
numbers, the confusion matrix and the majority-class baseline (all computed by scikit-learn). A text
generator: its loss and perplexity; on request also the text it generates for each distinct input,
scored against all of that input's references (BLEU, chrF, ROUGE-L, exact match: `text_metrics`)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm.auto import tqdm

from .data import input_key
from .devices import model_device, to_device
from .progress import bar_off

if TYPE_CHECKING:
    from .generation import Decoding

SAMPLES = 10
"""Inputs whose generated text and references an evaluation of a text generator shows."""


@torch.no_grad()
def predict_scores(classifier: nn.Module, examples: list[dict], *, batch_size: int = 32, progress: bool = False,
                   desc: str = "evaluating") -> torch.Tensor:
    """(N, n_classes) class scores for `examples`, in order, on the CPU (each batch is computed where the
    classifier is); `progress` shows a bar named `desc` on stderr."""
    was_training = classifier.training
    classifier.eval()
    device = model_device(classifier)
    out = []
    starts = range(0, len(examples), batch_size)
    for i in tqdm(starts, desc=desc, disable=bar_off(progress), leave=False):
        batch = classifier.collate([{k: v for k, v in ex.items() if k != "label"} for ex in examples[i : i + batch_size]])
        out.append(classifier(to_device(batch, device)).float().cpu())
    classifier.train(was_training)
    return torch.cat(out) if out else torch.empty(0, len(classifier.labels))


def metrics(pred: list[int], gold: list[int], labels: list[str], *, details: bool = False) -> dict:
    """Accuracy, macro-F1 (mean of the per-class F1s, a class absent from both counted as 0) and n,
    computed by scikit-learn. With `details`, also each class's precision, recall, F1 and support
    ("per_class", in `labels`' order), the confusion matrix (rows: true class, columns: predicted,
    in `labels`' order) and `labels` itself.

    Example:
        >>> metrics([0, 1, 1], [0, 1, 0], ["neg", "pos"], details=True)["per_class"]["neg"]
        {'precision': 1.0, 'recall': 0.5, 'f1': 0.666..., 'support': 2}
    """
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

    n = len(gold)
    if not n:
        return {"accuracy": 0.0, "macro_f1": 0.0, "n": 0}
    classes = list(range(len(labels)))
    # Keyed by class index, not by name: a label may be called "accuracy" or "macro avg".
    report = classification_report(gold, pred, labels=classes, output_dict=True, zero_division=0)
    result = {"accuracy": float(accuracy_score(gold, pred)), "macro_f1": float(report["macro avg"]["f1-score"]), "n": n}
    if details:
        result["labels"] = list(labels)
        result["per_class"] = {label: {"precision": float(report[str(c)]["precision"]),
                                       "recall": float(report[str(c)]["recall"]), "f1": float(report[str(c)]["f1-score"]),
                                       "support": int(report[str(c)]["support"])}
                               for c, label in enumerate(labels)}
        result["confusion_matrix"] = confusion_matrix(gold, pred, labels=classes).tolist()
    return result


def majority_baseline(gold: list[int], labels: list[str], train_counts: dict[str, int] | None = None) -> dict:
    """What always answering the majority class scores on `gold`: that label, where it was taken
    from ("train": the training labels' `train_counts`, label → examples; else "eval": `gold` itself),
    and its accuracy and macro-F1 (scikit-learn). A tie goes to the label first in `labels`' order.

    Example:
        >>> majority_baseline([0, 0, 1], ["neg", "pos"], {"neg": 2, "pos": 5})
        {'label': 'pos', 'from': 'train', 'accuracy': 0.333..., 'macro_f1': 0.25}
    """
    from sklearn.metrics import accuracy_score, f1_score

    counts = ([train_counts.get(label, 0) for label in labels] if train_counts
              else [gold.count(c) for c in range(len(labels))])
    majority = counts.index(max(counts))
    pred = [majority] * len(gold)
    return {"label": labels[majority], "from": "train" if train_counts else "eval", "tie": counts.count(max(counts)) > 1,
            "accuracy": float(accuracy_score(gold, pred)) if gold else 0.0,
            "macro_f1": float(f1_score(gold, pred, labels=list(range(len(labels))), average="macro", zero_division=0))
            if gold else 0.0}


def evaluate(classifier: nn.Module, examples: list[dict], *, batch_size: int = 32, progress: bool = False,
             details: bool = False, train_counts: dict[str, int] | None = None, decoding: Decoding | None = None) -> dict:
    """Accuracy, macro-F1, n and mean cross-entropy of `classifier` on labelled `examples`.

    With `details`, also the per-class precision / recall / F1 / support, the confusion matrix and
    `labels` (see `metrics`), and "majority": the majority-class baseline (see `majority_baseline`;
    the majority of `train_counts`, the training labels' counts, when given, else of `examples`).

    A text generator gives its loss, perplexity and n (rows) instead (`generation_loss`: cheap, what
    the trainer's dev pass asks for); with `details` also the text it generates with `decoding`
    (default `Decoding()`) once per distinct input, scored against the input's references
    (`generated_text_scores`).

    Example:
        >>> evaluate(clf, dev_examples)
        {'accuracy': 0.81, 'macro_f1': 0.80, 'n': 32, 'loss': 0.45}
        >>> evaluate(writer, e2e_examples, details=True, decoding=Decoding(num_beams=4))["bleu"]
        61.2
    """
    if getattr(classifier, "generates", False):
        result = generation_loss(classifier, examples, batch_size=batch_size, progress=progress)
        if not details:
            return result
        scores = generated_text_scores(classifier, examples, decoding=decoding, batch_size=batch_size, progress=progress)
        return {**{k: scores.pop(k) for k in ("bleu", "chrf", "rouge_l", "exact_match")}, **result, **scores}
    scores = predict_scores(classifier, examples, batch_size=batch_size, progress=progress)
    gold = [classifier.label_index(ex["label"]) for ex in examples]
    labels = list(classifier.labels)
    result = metrics(scores.argmax(-1).tolist(), gold, labels, details=details)
    result["loss"] = torch.nn.functional.cross_entropy(scores, torch.tensor(gold)).item() if gold else 0.0
    if details:
        result["majority"] = majority_baseline(gold, labels, train_counts)
    return result


def generated_text_scores(task: nn.Module, examples: list[dict], *, decoding: Decoding | None = None,
                          batch_size: int = 32, progress: bool = False) -> dict:
    """Generate once per distinct input of `examples` (the examples with every key but "label" equal:
    E2E has several descriptions of one meaning representation) and score the texts against all of
    the input's references, its examples' labels (`text_metrics.generation_metrics`).

    Returns bleu, chrf, rouge_l, exact_match (0-100), inputs (distinct), references, bleu_signature,
    decoding (the settings used) and samples: the first `SAMPLES` inputs with the generated text and
    their references.

    Example:
        >>> generated_text_scores(writer, [{"mr": "name[Aromi]", "label": "Aromi."}, {"mr": "name[Aromi]", "label": "It is Aromi."}])
        {'bleu': 100.0, ..., 'inputs': 1, 'references': 2, 'samples': [{'input': {'mr': 'name[Aromi]'},
         'generated': ' Aromi.', 'references': ['Aromi.', 'It is Aromi.']}], ...}
    """
    from .generation import Decoding, generate
    from .text_metrics import generation_metrics

    decoding = decoding or Decoding()
    grouped: dict[str, tuple[dict, list[str]]] = {}
    for ex in examples:
        given = {k: v for k, v in ex.items() if k != "label"}  # values may be lists or objects (a chat's history)
        grouped.setdefault(input_key(ex), (given, []))[1].append(str(ex["label"]))
    inputs = [given for given, _ in grouped.values()]
    references = [refs for _, refs in grouped.values()]
    texts = generate(task, inputs, decoding=decoding, batch_size=batch_size, progress=progress)
    scores = generation_metrics(texts, references)
    inputs_scored = scores.pop("n")
    return {**scores, "inputs": inputs_scored, "decoding": asdict(decoding),
            "samples": [{"input": given, "generated": text, "references": refs}
                        for given, text, refs in list(zip(inputs, texts, references))[:SAMPLES]]}


@torch.no_grad()
def generation_loss(task: nn.Module, examples: list[dict], *, batch_size: int = 32, progress: bool = False) -> dict:
    """A text generator's mean LM loss per target token (batch-weighted), its perplexity and n."""
    was_training = task.training
    task.eval()
    device = model_device(task)
    total, tokens = 0.0, 0
    for i in tqdm(range(0, len(examples), batch_size), desc="evaluating", disable=bar_off(progress), leave=False):
        batch = to_device(task.collate(examples[i : i + batch_size]), device)
        n = int((batch["target"] != -100).sum())
        total += float(task(batch)) * n
        tokens += n
    task.train(was_training)
    loss = total / tokens if tokens else 0.0
    return {"loss": loss, "perplexity": float(torch.tensor(loss).exp()), "n": len(examples)}

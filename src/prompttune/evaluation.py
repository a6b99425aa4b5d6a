"""Evaluation: predictions, accuracy and macro-F1 of a classifier on examples."""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm


@torch.no_grad()
def predict_scores(classifier: nn.Module, examples: list[dict], *, batch_size: int = 32, progress: bool = False,
                   desc: str = "evaluating") -> torch.Tensor:
    """(N, n_classes) class scores for `examples`, in order; `progress` shows a bar named `desc` on stderr."""
    was_training = classifier.training
    classifier.eval()
    device = next(classifier.parameters()).device
    out = []
    starts = range(0, len(examples), batch_size)
    for i in tqdm(starts, desc=desc, disable=not progress, leave=False):
        batch = classifier.collate([{k: v for k, v in ex.items() if k != "label"} for ex in examples[i : i + batch_size]])
        batch = {k: v.to(device) for k, v in batch.items()}
        out.append(classifier(batch).float().cpu())
    classifier.train(was_training)
    return torch.cat(out) if out else torch.empty(0, len(classifier.labels))


def metrics(pred: list[int], gold: list[int], n_classes: int) -> dict:
    """Accuracy, macro-F1 (mean of per-class F1, classes absent from both counted as 0) and n."""
    n = len(gold)
    acc = sum(p == g for p, g in zip(pred, gold)) / n if n else 0.0
    f1s = []
    for c in range(n_classes):
        tp = sum(p == c and g == c for p, g in zip(pred, gold))
        fp = sum(p == c and g != c for p, g in zip(pred, gold))
        fn = sum(p != c and g == c for p, g in zip(pred, gold))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"accuracy": acc, "macro_f1": sum(f1s) / n_classes, "n": n}


def evaluate(classifier: nn.Module, examples: list[dict], *, batch_size: int = 32, progress: bool = False) -> dict:
    """Accuracy, macro-F1, n and mean cross-entropy of `classifier` on labelled `examples`.

    Example:
        >>> evaluate(clf, dev_examples)
        {'accuracy': 0.81, 'macro_f1': 0.80, 'n': 32, 'loss': 0.45}
    """
    if getattr(classifier, "generates", False):
        return generation_loss(classifier, examples, batch_size=batch_size, progress=progress)
    scores = predict_scores(classifier, examples, batch_size=batch_size, progress=progress)
    gold = [classifier.label_index(ex["label"]) for ex in examples]
    result = metrics(scores.argmax(-1).tolist(), gold, len(classifier.labels))
    result["loss"] = torch.nn.functional.cross_entropy(scores, torch.tensor(gold)).item() if gold else 0.0
    return result


@torch.no_grad()
def generation_loss(task: nn.Module, examples: list[dict], *, batch_size: int = 32, progress: bool = False) -> dict:
    """A text generator's mean LM loss per target token (batch-weighted), its perplexity and n."""
    was_training = task.training
    task.eval()
    device = next(task.parameters()).device
    total, tokens = 0.0, 0
    for i in tqdm(range(0, len(examples), batch_size), desc="evaluating", disable=not progress, leave=False):
        batch = {k: v.to(device) for k, v in task.collate(examples[i : i + batch_size]).items()}
        n = int((batch["target"] != -100).sum())
        total += float(task(batch)) * n
        tokens += n
    task.train(was_training)
    loss = total / tokens if tokens else 0.0
    return {"loss": loss, "perplexity": float(torch.tensor(loss).exp()), "n": len(examples)}

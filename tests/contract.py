"""What the method contract tests share (tests/test_methods.py, tests/test_weight_methods.py):
the eight training examples, a deterministic loss on them, and each task trained once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

from prompttune import TaskSpec, TrainConfig, build_classifier, train
from prompttune.evaluation import predict_scores

# A method key is "name", "name:variant" or "a+b"; PROMPTS gives its template (None: a classification head)
# and options, soft tokens in several places: first, between fields and text, word-initialised.
TEMPLATE = "{text} it was {mask} ."
PROMPTS = {
    "prompt-tuning": ("{soft:3} {text} {soft} it was {mask} .", {}),
    "p-tuning": ('{soft:2} {text} {soft:"it was"} {mask} .', {"encoder": "lstm"}),
    "p-tuning:mlp": ("{soft:2} {text} it was {mask} {soft} .", {"encoder": "mlp"}),
    "prefix-tuning": (TEMPLATE, {"prompt_length": 3, "reparam_hidden": 16}),
    "p-tuning-v2": (TEMPLATE, {"prompt_length": 3}),
    "p-tuning-v2:head": (None, {"prompt_length": 3, "head": True}),
    "lora": (TEMPLATE, {"lora_rank": 4}),
    "lora:head": (None, {"lora_rank": 4, "head": True}),
    "p-tuning+lora": ("{soft:2} {text} it was {mask} .", {"encoder": "mlp", "lora_rank": 4}),
    "adapter": (TEMPLATE, {"reduction_factor": 8}),
}

EXAMPLES = [
    {"text": "great fun", "label": "1"},
    {"text": "a terrible , boring movie .", "label": "0"},
    {"text": "very good", "label": "1"},
    {"text": "bad and awful film", "label": "0"},
    {"text": "it was great", "label": "1"},
    {"text": "boring , boring , boring", "label": "0"},
    {"text": "good fun film", "label": "1"},
    {"text": "the worst movie", "label": "0"},
]


@dataclasses.dataclass
class Trained:
    spec: TaskSpec
    classifier: torch.nn.Module
    fingerprint: dict
    before: dict[str, torch.Tensor]
    trainable: set[str]
    history: list[dict]
    loss_before: float
    loss_after: float


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def eval_loss(clf) -> float:
    """Cross-entropy on all training examples, dropout off: a deterministic measure of fit."""
    was_training = clf.training
    clf.eval()
    with torch.no_grad():
        batch = clf.collate(EXAMPLES)
        loss = torch.nn.functional.cross_entropy(clf(batch).float(), batch["labels"]).item()
    clf.train(was_training)
    return loss


def scores(clf) -> torch.Tensor:
    return predict_scores(clf, EXAMPLES, batch_size=8)


def train_task(spec: TaskSpec, config: TrainConfig) -> Trained:
    torch.manual_seed(0)  # a new classification head is initialised at build time
    clf, fp = build_classifier(spec)
    before = snapshot(clf)
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    loss_before = eval_loss(clf)
    result = train(clf, EXAMPLES, None, config)
    return Trained(spec, clf, fp, before, trainable, result.history, loss_before, eval_loss(clf))


def trained_fixture(task_spec: Callable[[str, object], TaskSpec], train_config: Callable[[str], TrainConfig]):
    """A fixture `trained(key, model_fixture) -> Trained` that builds and trains each task once per
    test file; tests only read the result."""
    cache: dict[tuple[str, str], Trained] = {}

    @pytest.fixture
    def trained(request):
        def get(key: str, model_fixture: str) -> Trained:
            if (key, model_fixture) not in cache:
                cache[key, model_fixture] = train_task(task_spec(key, request.getfixturevalue(model_fixture)),
                                                       train_config(key))
            return cache[key, model_fixture]

        return get

    return trained

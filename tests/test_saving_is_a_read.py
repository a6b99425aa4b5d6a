"""Saving is a read: `save_artifact` in the middle of training changes nothing about what trains.

For every method of the contract suite (tests/test_methods.py METHODS, tests/test_weight_methods.py
VARIANTS), on tiny BERT: the parameters, their names, requires_grad flags and values are identical
before and after a save; training on after a save gives exactly what training without the save
gives; and the saved artifact reloads to the scores the classifier had when it was saved.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import test_methods
import test_weight_methods
from contract import EXAMPLES, scores
from prompttune import build_classifier, load_artifact, save_artifact, train
from prompttune.parameters import count_parameters

CASES = [("methods", key) for key in test_methods.METHODS] + [("weights", key) for key in test_weight_methods.VARIANTS]


def task_and_config(suite: str, key: str, model_dir):
    """The contract suite's spec for `key`, and its training config cut to one epoch."""
    if suite == "methods":
        return test_methods.task_spec(key, model_dir), dataclasses.replace(test_methods.train_config(key), epochs=1)
    return test_weight_methods.task_spec(key, model_dir), dataclasses.replace(test_weight_methods.TRAIN, epochs=1)


def parameters(clf) -> list[tuple[str, bool, torch.Tensor]]:
    return [(n, p.requires_grad, p.detach().clone()) for n, p in clf.named_parameters()]


@pytest.mark.parametrize(("suite", "key"), CASES, ids=[key for _, key in CASES])
def test_saving_mid_training_changes_nothing_that_trains(suite, key, bert_dir, tmp_path):
    spec, config = task_and_config(suite, key, bert_dir)
    torch.manual_seed(0)
    clf, fp = build_classifier(spec)
    train(clf, EXAMPLES, None, config)
    before, scores_when_saved = parameters(clf), scores(clf)

    save_artifact(tmp_path, spec, clf, fp)

    after = parameters(clf)
    assert [(n, g) for n, g, _ in after] == [(n, g) for n, g, _ in before], f"{key}: the save changed names or flags"
    changed = [n for (n, _, a), (_, _, b) in zip(after, before) if not torch.equal(a, b)]
    assert not changed, f"{key}: the save changed the values of {changed[:5]}"

    train(clf, EXAMPLES, None, config)
    torch.manual_seed(0)
    unsaved, _ = build_classifier(spec)
    train(unsaved, EXAMPLES, None, config)
    train(unsaved, EXAMPLES, None, config)
    a, b = clf.state_dict(), unsaved.state_dict()
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{key}: training after a save differs from training without it in {differ[:5]}"

    reloaded, _ = load_artifact(tmp_path)
    assert torch.equal(scores(reloaded), scores_when_saved), f"{key}: the artifact does not reload to the saved scores"


@pytest.mark.parametrize(("key", "stored_keys"), [("p-tuning", {"soft.vectors"}), ("prefix-tuning", {"deep.prefix"})])
def test_a_reparameterized_prompt_keeps_training_its_encoder_and_stores_its_output(key, stored_keys, bert_dir, tmp_path):
    """P-tuning's LSTM encoder (and prefix-tuning's MLP) keeps training after a save; the artifact holds
    only the vectors it computes, and its counts describe that stored form."""
    spec, _ = task_and_config("methods", key, bert_dir)
    clf, fp = build_classifier(spec)
    trainable_before = count_parameters(clf)
    save_artifact(tmp_path, spec, clf, fp)
    assert count_parameters(clf) == trainable_before
    assert any(n.endswith(("encoder.embedding", "deep.embedding")) for n, p in clf.named_parameters() if p.requires_grad)
    config = json.loads((tmp_path / "config.json").read_text())
    reloaded, _ = load_artifact(tmp_path)
    assert {n for n, p in reloaded.named_parameters() if p.requires_grad} == stored_keys
    assert config["trainable_parameters"] == config["stored_numbers"] == count_parameters(reloaded)[0]
    assert config["total_parameters"] == count_parameters(reloaded)[1]
    assert config["stored_numbers"] < trainable_before[0]

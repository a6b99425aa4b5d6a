"""Prompt transfer (SPoT): start a task's prompt from a stored one, given or found in a bank."""

from __future__ import annotations

import json

import pytest
import torch

from prompttune import TaskSpec, build_classifier, save_artifact
from prompttune.config import load_config
from prompttune.errors import ConfigError, ModelError
from prompttune.prompt_bank import most_similar
from prompttune.recipes import run_training

EXAMPLES = [{"text": t, "label": y} for t, y in [("great fun", "1"), ("a terrible movie", "0"), ("very good", "1"),
                                                  ("bad and awful", "0"), ("good film", "1"), ("boring , boring", "0")]]
TEMPLATES = {"prompt-tuning": "{soft:4} {text} it was {mask} .", "p-tuning-v2": "{text} it was {mask} ."}


def spec(model_dir, method="prompt-tuning", **options) -> TaskSpec:
    return TaskSpec(max_length=64, method=method, model=str(model_dir), text_fields=["text"], labels=["0", "1"],
                    template=TEMPLATES[method], verbalizer={"0": ["bad"], "1": ["good"]},
                    options={"prompt_length": 4, **options})


def prompt_of(clf) -> torch.Tensor:
    return (clf.soft.vectors if clf.soft is not None else clf.deep.prefix).detach()


def stored(directory, model_dir, method="prompt-tuning", *, like=None, seed=0):
    """Save a task whose prompt is `like` (or random) into `directory`."""
    s = spec(model_dir, method)
    torch.manual_seed(seed)
    clf, fp = build_classifier(s)
    with torch.no_grad():
        param = clf.soft.vectors if clf.soft is not None else clf.deep.prefix
        param.copy_(like if like is not None else torch.randn_like(param))
    save_artifact(directory, s, clf, fp)
    return prompt_of(clf)


@pytest.mark.parametrize("method", ["prompt-tuning", "p-tuning-v2"])
def test_init_from_a_path_copies_that_tasks_prompt(method, bert_dir, tmp_path):
    source = stored(tmp_path / "source", bert_dir, method)
    clf, _ = build_classifier(spec(bert_dir, method, init_from=str(tmp_path / "source")))
    assert torch.equal(prompt_of(clf), source), "init_from did not copy the stored prompt"


def test_init_from_a_prompt_of_another_shape_is_refused(bert_dir, tmp_path):
    stored(tmp_path / "source", bert_dir)
    s = spec(bert_dir)
    s.template = "{soft:2} {text} it was {mask} ."
    s.options["init_from"] = str(tmp_path / "source")
    with pytest.raises(ConfigError, match=r"its prompt has shape \(4, 32\), this task's has \(2, 32\)"):
        build_classifier(s)


def test_init_from_a_task_on_another_backbone_is_refused(bert_dir, roberta_dir, tmp_path):
    stored(tmp_path / "source", roberta_dir)
    with pytest.raises(ModelError, match="does not fit"):
        build_classifier(spec(bert_dir, init_from=str(tmp_path / "source")))


def test_init_from_needs_a_prompt_trained_as_stored(bert_dir, tmp_path):
    stored(tmp_path / "source", bert_dir)
    s = TaskSpec(max_length=64, method="p-tuning", model=str(bert_dir), text_fields=["text"], labels=["0", "1"],
                 template=TEMPLATES["prompt-tuning"], verbalizer={"0": ["bad"], "1": ["good"]},
                 options={"init_from": str(tmp_path / "source")})
    with pytest.raises(ConfigError, match="P-tuning's encoder and prefix-tuning's MLP have no stored form"):
        build_classifier(s)


def test_most_similar_picks_the_closest_prompt_of_the_same_method_and_shape(bert_dir, roberta_dir, tmp_path):
    bank = tmp_path / "bank"
    target = stored(bank / "a", bert_dir, seed=1)
    stored(bank / "b", bert_dir, like=-target)  # opposite direction: cosine -1
    stored(bank / "c", bert_dir, seed=2)
    stored(bank / "deep", bert_dir, "p-tuning-v2")  # another method: not comparable
    stored(bank / "other-backbone", roberta_dir, like=target.clone())  # same numbers, other model: not comparable
    clf, fp = build_classifier(spec(bert_dir))
    with torch.no_grad():
        clf.soft.vectors.copy_(target + 0.1 * torch.randn_like(target))
    path, similarity = most_similar(clf, bank, fp)
    assert path.name == "a" and similarity > 0.9, f"picked {path.name} ({similarity:.3f})"


def test_training_with_init_from_most_similar_records_the_choice(bert_dir, tmp_path):
    bank = tmp_path / "bank"
    stored(bank / "only", bert_dir)
    cfg = load_config(raw={
        "model": str(bert_dir), "task": {"text_fields": ["text"]},
        "prompt": {"template": TEMPLATES["prompt-tuning"], "verbalizer": {0: "bad", 1: "good"}},
        "method": {"name": "prompt-tuning", "init_from": "most_similar", "prompt_bank": str(bank)},
        "train": {"epochs": 1, "lr": 0.1, "batch_size": 3, "progress": False},
    })
    summary = run_training(cfg, tmp_path / "task", splits=(EXAMPLES, [], []), log=lambda _: None)
    assert summary["transfer"]["from"] == str(bank / "only") and -1 <= summary["transfer"]["cosine"] <= 1
    saved = json.loads((tmp_path / "task/config.json").read_text())
    assert saved["training"]["transfer"] == summary["transfer"]

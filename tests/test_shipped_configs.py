"""Every shipped config runs: trained for one epoch on a tiny model of its kind, through the command
line, from another working directory, on the shared data its paths name; it prints an evaluation.

Only the model (and what a tiny model cannot hold) is overridden, so the config's data paths, template,
verbalizer and method are exercised as shipped. The real-model times are in the README's table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prompttune.backbones import DEFAULT_MODEL
from prompttune.cli import main
from prompttune.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def tiny_model_for(path: Path, request) -> str:
    """The tiny stand-in: BERT for the MiniLM configs (head methods), GPT-2 (byte-level, so Chinese
    too) for the causal-LM (SmolLM2) ones."""
    return str(request.getfixturevalue("bert_dir" if load_config(path).model == DEFAULT_MODEL else "gpt2_dir"))


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_trains_and_prints_an_evaluation(path, tmp_path, capsys, monkeypatch, request, shared_data):
    monkeypatch.chdir(tmp_path)  # the config's paths are its folder's, not the working directory's
    overrides = [f"model={tiny_model_for(path, request)}", "train.epochs=1", "train.progress=false"]
    if load_config(path).task.generation:  # a few new tokens: the tiny model writes noise
        overrides += ["decoding.max_new_tokens=4", "train.max_length=96"]
    if load_config(path).method.name == "in-context":
        overrides += ["method.context_examples=2", "train.max_length=32"]  # the tiny GPT-2 has 128 positions
    sets = [a for o in overrides for a in ("--set", o)]
    config = path
    if "{trigger" in (load_config(path).prompt.template or ""):  # AutoPrompt: search first, train the config it writes
        code, _, err = run(capsys, "search", "triggers", path, "--out", "search", "--steps", "1", "--candidates", "2", *sets)
        assert code == 0, err
        config = tmp_path / "search" / "config.yaml"
    code, out, err = run(capsys, "train", config, "--out", "task", *sets)
    assert code == 0, err
    result = json.loads(out)
    if load_config(path).task.generation:  # text scored against its references
        assert 0 <= result["eval"]["bleu"] <= 100 and result["eval"]["n"] > 0, result
    else:
        assert 0 <= result["eval"]["accuracy"] <= 1 and result["eval"]["n"] > 0, result
    assert (tmp_path / "task" / "config.json").is_file()

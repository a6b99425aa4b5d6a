"""`prompttune search triggers|labels|templates`: each writes a run config with the found prompt,
which `prompttune train` accepts as an ordinary one, and a report whose numbers reproduce."""

from __future__ import annotations

import json

import pytest
import yaml

from prompttune.cli import main
from prompttune.config import load_config
from prompttune.templates import parse_template
from prompttune.verbalizers import parse_verbalizer

POS = ["this movie was great fun", "a very good film", "fun and good", "great film , very fun", "good fun movie"]
NEG = ["this movie was terrible", "a very bad film", "boring and bad", "awful film , very boring", "bad boring movie"]


@pytest.fixture
def config(tmp_path, bert_dir):
    data = tmp_path / "train.tsv"
    data.write_text("label\tsentence\n" + "\n".join([f"1\t{s}" for s in POS] + [f"0\t{s}" for s in NEG]) + "\n")

    def write(template: str) -> str:
        path = tmp_path / "run.yaml"
        path.write_text(f"""
model: {bert_dir}
task: {{train: {data}, text_fields: [sentence], shots: 2, seed: 3}}
prompt: {{template: "{template}", verbalizer: {{0: bad, 1: good}}}}
method: {{name: prompt-finetune}}
train: {{epochs: 1, progress: false}}
""")
        return str(path)
    return write


def search(capsys, *argv) -> dict:
    code = main(["search", *map(str, argv)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def zero_shot_dev_accuracy(capsys, config_path, out) -> float:
    """Save the found config as a zero-shot task, reload it, and score it on the dev draw the search used."""
    from prompttune import evaluate, load_artifact
    from prompttune.recipes import load_splits

    code = main(["train", str(config_path), "--out", str(out), "--set", "method.name=zero-shot"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    _, dev, _ = load_splits(load_config(config_path))
    return evaluate(load_artifact(out)[0], dev)["accuracy"]


@pytest.mark.parametrize("kind, template, extra", [
    ("triggers", "{sentence} {trigger:2} {mask} .", ["--steps", "3", "--candidates", "4"]),
    ("labels", "{sentence} it was {mask} .", ["--per-class", "5", "--assignments", "10"]),
    ("templates", "{sentence} it was {mask} .", ["--beams", "3", "--keep", "2"]),
])
def test_a_search_writes_an_ordinary_config_whose_dev_accuracy_reproduces(kind, template, extra, config, capsys,
                                                                           tmp_path, t5_dir):
    if kind == "templates":
        extra = [*extra, "--generator", t5_dir]
    printed = search(capsys, kind, config(template), "--out", tmp_path / "found", *extra)
    written = yaml.safe_load((tmp_path / "found" / "config.yaml").read_text())
    cfg = load_config(tmp_path / "found" / "config.yaml")
    assert "{trigger" not in cfg.prompt.template
    parse_template(cfg.prompt.template), parse_verbalizer(cfg.prompt.verbalizer)
    assert written["prompt"] == {"template": cfg.prompt.template, "verbalizer": cfg.prompt.verbalizer}
    assert printed["found"] == {"template": cfg.prompt.template} if kind != "labels" else \
        printed["found"] == {"verbalizer": cfg.prompt.verbalizer}
    report = json.loads((tmp_path / "found" / "search.json").read_text())
    assert report["search"] == kind and report["dev_accuracy"]["found"] == printed["dev_accuracy"]["found"]
    assert zero_shot_dev_accuracy(capsys, tmp_path / "found" / "config.yaml", tmp_path / "task") == \
        report["dev_accuracy"]["found"], "the written prompt does not score on dev what the search reported"


def test_search_errors_are_one_line(config, capsys, tmp_path):
    code = main(["search", "triggers", config("{sentence} it was {mask} ."), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "trigger" in err, err
    path = config("{sentence} {trigger} {mask} .")
    code = main(["train", path, "--out", str(tmp_path / "y")])
    err = capsys.readouterr().err
    assert code == 2 and "prompttune search triggers" in err, err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y" / "config.json").exists()

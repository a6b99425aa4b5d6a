"""`prompttune demo` end to end on a tiny GPT-2 standing in for SmolLM2: every row of the table is
trained, saved and scored on the held-out sentences, and the table reads its own numbers."""

from __future__ import annotations

import random

import pytest

import prompttune.demo as demo
from prompttune.artifacts import load_artifact
from prompttune.errors import OutputError
from prompttune.evaluation import evaluate

GOOD = "a gripping , moving and wonderful film that i loved so much".split()
BAD = "a dull , boring and terrible film that i hated so much".split()


def sst2_folder(root, per_class: int):
    """train.tsv and dev.tsv of 10-word sentences (the demo trains on sentences of ≥ 10 words)."""
    rng = random.Random(0)
    root.mkdir()
    for name, n in (("train.tsv", per_class), ("dev.tsv", 8)):
        rows = ["label\tsentence"]
        for i in range(n):
            for label, words in ((1, GOOD), (0, BAD)):
                rows.append(f"{label}\t{' '.join(rng.sample(words, 10))}")
        (root / name).write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def small_rows(monkeypatch):
    """The demo's rows, sized to the tiny model's 128 positions (1 demonstration in context) and 1 epoch."""
    rows = dict(demo.ROWS)
    title, method, _ = rows["in-context"]
    rows["in-context"] = (title, {**method, "context_examples": 1}, {})
    title, method, settings = rows["lora"]
    rows["lora"] = (title, method, {**settings, "epochs": 1})
    monkeypatch.setattr(demo, "ROWS", rows)


def test_the_demo_scores_every_row_on_the_held_out_sentences_and_reads_the_table(gpt2_dir, tmp_path, capsys, small_rows):
    data = sst2_folder(tmp_path / "sst2", per_class=40)
    results = demo.run_demo(data=str(data), out=tmp_path / "demo", model=str(gpt2_dir), held_out_per_class=4, progress=False)
    out = capsys.readouterr().out
    assert set(results) == {"zero-shot", "in-context", "lora"}
    for row, m in results.items():
        assert m["n"] == 8, f"{row} was not scored on the 8 held-out sentences"
        clf, _ = load_artifact(tmp_path / "demo" / row)  # each row is a task artifact that reloads to its numbers
        held_out = demo.sample_per_class(demo.load_examples(data / "dev.tsv", ["sentence"], "label"), 4, seed=0)
        assert evaluate(clf, held_out)["accuracy"] == pytest.approx(m["accuracy"])
    assert results["zero-shot"]["trainable_parameters"] == 0 and results["lora"]["trainable_parameters"] > 0
    assert "majority class (learns nothing)" in out and "0.500" in out
    assert f"zero-shot {results['zero-shot']['accuracy'] - 0.5:+.3f} over the majority class" in out
    for title, _, _ in demo.ROWS.values():
        assert title in out


def test_a_second_demo_into_the_same_folder_needs_overwrite(gpt2_dir, tmp_path, small_rows):
    data = sst2_folder(tmp_path / "sst2", per_class=40)
    (tmp_path / "demo" / "zero-shot").mkdir(parents=True)
    kwargs = dict(data=str(data), model=str(gpt2_dir), held_out_per_class=4, progress=False)
    demo.run_demo(out=tmp_path / "demo", **kwargs)
    with pytest.raises(OutputError, match="pass --overwrite"):
        demo.run_demo(out=tmp_path / "demo", **kwargs)
    demo.run_demo(out=tmp_path / "demo", overwrite=True, **kwargs)


def test_the_demo_says_where_to_put_its_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "__file__", str(tmp_path / "x" / "demo.py"))
    monkeypatch.setattr(demo, "DATA_CANDIDATES", ("no-such-folder",))  # whatever this machine has above tmp_path
    with pytest.raises(demo.DataError, match="pass --data FOLDER"):
        demo.find_data(None)


def test_too_few_long_sentences_name_the_file_and_what_the_demo_needs(tmp_path, small_rows):
    data = sst2_folder(tmp_path / "sst2", per_class=10)  # 10 per class: fewer than 16 + 16
    with pytest.raises(demo.DataError, match=r"train.tsv: the demo trains on 16 \+ 16 sentences of at least 10 words"):
        demo.run_demo(data=str(data), out=tmp_path / "demo", model="unused", held_out_per_class=4, progress=False)
    with pytest.raises(demo.DataError, match=r"dev.tsv: the demo scores 200 sentences per class"):
        demo.run_demo(data=str(sst2_folder(tmp_path / "more", per_class=40)), out=tmp_path / "demo2", model="unused",
                      progress=False)

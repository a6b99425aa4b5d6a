"""The commands users expect: `predict --data` (a file or standard input, JSON lines, --out written
atomically), `render` (the input as the model reads it), `--version`, and bare `prompttune`."""

import io
import json
import re
import sys
from pathlib import Path

import pytest

import prompttune
from prompttune.artifacts import load_artifact
from prompttune.cli import build_parser, main
from prompttune.evaluation import predict_scores
from prompttune.task import TaskSpec, build_classifier

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ["this movie was great fun", "a very bad film", "fun and good", "awful film , very boring",
             "good fun movie", "boring and bad", "a wonderful film"]
TEMPLATE = "{soft:2} {sentence} it was {mask} ."
VERBALIZER = "{0: [bad, boringly], 1: [good, wonderful]}"  # 'boringly' and 'wonderful' are two WordPiece tokens


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def data_tsv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "test.tsv"
    path.write_text("label\tsentence\n" + "".join(f"{i % 2}\t{s}\n" for i, s in enumerate(SENTENCES)))
    return path


@pytest.fixture(scope="module")
def config_yaml(tmp_path_factory, bert_dir, data_tsv) -> Path:
    path = tmp_path_factory.mktemp("config") / "run.yaml"
    path.write_text(f"""
model: {bert_dir}
task: {{train: {data_tsv}, text_fields: [sentence]}}
prompt: {{template: "{TEMPLATE}", verbalizer: {VERBALIZER}}}
method: {{name: prompt-tuning}}
train: {{epochs: 1, lr: 0.1, batch_size: 4, max_length: 32, progress: false}}
""")
    return path


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, config_yaml) -> Path:
    out = tmp_path_factory.mktemp("task") / "sst2"
    assert main(["train", str(config_yaml), "--out", str(out)]) == 0
    return out


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_predict_data_gives_what_predict_text_and_the_library_give(artifact, data_tsv, capsys):
    code, out, err = run(capsys, "predict", artifact, "--data", data_tsv)
    assert code == 0, err
    rows = json_lines(out)
    assert [r["input"] for r in rows] == [{"sentence": s} for s in SENTENCES]
    assert [r["gold"] for r in rows] == [str(i % 2) for i in range(len(SENTENCES))], "the file's labels, as gold"

    text_args = [a for s in SENTENCES for a in ("--text", s)]
    code, out, err = run(capsys, "predict", artifact, *text_args, "--json")
    assert code == 0, err
    by_text = json_lines(out)
    assert [(r["label"], r["probabilities"]) for r in rows] == [(r["label"], r["probabilities"]) for r in by_text]
    assert [r["input"] for r in by_text] == [r["input"] for r in rows], "one shape of input for --text and --data"

    clf, config = load_artifact(artifact)
    probs = predict_scores(clf, [{"sentence": s} for s in SENTENCES]).softmax(-1)
    assert [list(r["probabilities"].values()) for r in rows] == probs.tolist()
    assert [r["label"] for r in rows] == [config["labels"][i] for i in probs.argmax(-1).tolist()]

    code, out, err = run(capsys, "predict", artifact, "--data", data_tsv, "--batch-size", "3")
    assert code == 0, err
    for small, whole in zip(json_lines(out), rows):  # other batches pad differently: equal up to float rounding
        assert small["label"] == whole["label"]
        assert small["probabilities"] == pytest.approx(whole["probabilities"], abs=1e-6)


def test_predict_data_without_a_label_column_and_one_model_load(artifact, tmp_path, capsys, monkeypatch):
    import prompttune.artifacts

    path = tmp_path / "unlabelled.jsonl"
    path.write_text("".join(json.dumps({"sentence": s, "id": n}) + "\n" for n, s in enumerate(SENTENCES)))
    loads = []
    real = prompttune.artifacts.load_artifact
    monkeypatch.setattr(prompttune.artifacts, "load_artifact", lambda *a, **k: loads.append(a) or real(*a, **k))
    code, out, err = run(capsys, "predict", artifact, "--data", path, "--batch-size", "2")
    assert code == 0, err
    rows = json_lines(out)
    assert len(rows) == len(SENTENCES) and all("gold" not in r for r in rows)
    assert [r["input"] for r in rows] == [{"sentence": s} for s in SENTENCES], "only the task's fields are echoed"
    assert len(loads) == 1, "the model loads once for the whole file"
    assert err == "", "no progress bar when stderr is not a terminal"


def test_predict_reads_standard_input_one_input_per_line(artifact, capsys, monkeypatch):
    lines = ["a very bad film", "", '{"sentence": "fun and good"}', "{not json} is text"]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\n".join(lines).encode())))
    code, out, err = run(capsys, "predict", artifact, "--data", "-")
    assert code == 0, err
    rows = json_lines(out)
    assert [r["input"]["sentence"] for r in rows] == ["a very bad film", "fun and good", "{not json} is text"]
    code, out, _ = run(capsys, "predict", artifact, "--text", "a very bad film", "--text", "fun and good",
                       "--text", "{not json} is text", "--json")
    assert [r["probabilities"] for r in rows] == [r["probabilities"] for r in json_lines(out)]


def test_predict_names_the_line_of_bad_standard_input(artifact, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"fine\ncaf\xe9\n")))
    code, out, err = run(capsys, "predict", artifact, "--data", "-")
    assert code == 2 and out == "" and err.count("\n") == 1 and "<stdin>:2: not UTF-8" in err, err
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\n  \n")))
    code, _, err = run(capsys, "predict", artifact, "--data", "-")
    assert code == 2 and "no inputs" in err, err


def test_predict_out_is_written_whole_and_never_replaced_unasked(artifact, data_tsv, tmp_path, capsys, monkeypatch):
    out_file = tmp_path / "preds" / "test.jsonl"
    code, out, err = run(capsys, "predict", artifact, "--data", data_tsv, "--out", out_file)
    assert code == 0 and out == "", err
    assert err == f"wrote {len(SENTENCES)} prediction(s) to {out_file}\n", "say what was written where"
    first = out_file.read_text()
    assert len(json_lines(first)) == len(SENTENCES)
    assert sorted(p.name for p in out_file.parent.iterdir()) == ["test.jsonl"], "no staging files left"

    import prompttune.artifacts

    monkeypatch.setattr(prompttune.artifacts, "load_artifact", lambda *a, **k: pytest.fail("the model loaded"))
    code, out, err = run(capsys, "predict", artifact, "--text", "dull", "--out", out_file)
    assert code == 2 and err.count("\n") == 1 and f"{out_file} already exists; pass --overwrite" in err, err
    assert out_file.read_text() == first, "refused before the model loads, the file untouched"
    monkeypatch.undo()

    code, out, err = run(capsys, "predict", artifact, "--text", "dull", "--out", out_file, "--overwrite")
    assert code == 0 and out == "", err
    assert out_file.read_text().startswith("0\t") or out_file.read_text().startswith("1\t")
    code, _, err = run(capsys, "predict", artifact, "--text", "dull", "--out", tmp_path)
    assert code == 2 and "is a directory" in err, err


@pytest.mark.parametrize("bad_row, message", [
    ("1\tno tab here\textra\n", "the row has 3 cell(s), the header has 2"),
    ("7\ta fine sentence\n", "label '7' is not one of the task's labels"),
    ("1\t \n", "are empty"),
])
def test_a_bad_row_is_one_line_naming_file_and_line(artifact, data_tsv, tmp_path, capsys, bad_row, message):
    path = tmp_path / "bad.tsv"
    path.write_text(data_tsv.read_text() + "\n" + bad_row)  # header, 7 rows, a blank line: the bad row is line 10
    code, out, err = run(capsys, "predict", artifact, "--data", path)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert f"{path}:10: " in err and message in err, err


def test_render_shows_what_the_model_reads(config_yaml, bert_dir, data_tsv, capsys, monkeypatch):
    import prompttune.backbones

    monkeypatch.setattr(prompttune.backbones, "load_pretrained", lambda *a, **k: pytest.fail("render loaded weights"))
    code, out, err = run(capsys, "render", config_yaml, "--n", "2", "--json")
    assert code == 0, err
    report = json.loads(out)
    monkeypatch.undo()
    assert report["kind"] == "masked" and len(report["inputs"]) == 2

    spec = TaskSpec(method="prompt-tuning", model=str(bert_dir), text_fields=["sentence"], labels=["0", "1"],
                    template=TEMPLATE, verbalizer={"0": ["bad", "boringly"], "1": ["good", "wonderful"]}, max_length=32)
    clf, _ = build_classifier(spec)
    tok = clf.tokenizer
    for rendered, sentence in zip(report["inputs"], SENTENCES):
        batch = clf.scorer.encode([{"sentence": sentence}])
        assert rendered["ids"] == batch["ids1"][0].tolist(), "the ids the scorer gives the model (one mask)"
        assert rendered["mask"] == int(batch["pos1"][0, 0]) and rendered["tokens"][rendered["mask"]] == "[MASK]"
        assert rendered["soft"] == [1, 2] and rendered["tokens"][1:3] == ["<soft:1>", "<soft:2>"]
        assert rendered["tokens"][3:3 + len(sentence.split())] == sentence.split()
        assert "<soft:1> <soft:2> " + sentence in rendered["text"]
    assert [r["where"] for r in report["inputs"]] == [f"{data_tsv}:2", f"{data_tsv}:3"]
    assert [r["label"] for r in report["inputs"]] == ["0", "1"]
    words = report["label_words"]
    assert [e["word"] for e in words["0"] + words["1"]] == ["bad", "boringly", "good", "wonderful"]
    assert [e["ids"] for e in words["0"] + words["1"]] == clf.scorer.word_ids
    for e in words["0"] + words["1"]:
        assert e["ids"] == tok(e["word"], add_special_tokens=False)["input_ids"]
    assert words["1"][1]["tokens"] == ["wonder", "##ful"], "a multi-token word shows every id"

    code, out, err = run(capsys, "render", config_yaml, "--n", "1")
    assert code == 0, err
    assert re.search(r"^  mask:   position \d+ \(\[MASK\]; a word of k tokens is read at k masks", out, re.M), out
    assert "  soft:   positions 1-2 (2 vector(s))" in out and "wonderful [" in out and "1:<soft:1>" in out


@pytest.mark.parametrize("model", ["gpt2", "t5"])
def test_render_gives_the_scorers_ids_on_every_kind(model, request, tmp_path, capsys):
    model_dir = request.getfixturevalue(f"{model}_dir")
    path = tmp_path / "run.yaml"
    path.write_text(f"""
model: {model_dir}
task: {{text_fields: [sentence]}}
prompt: {{template: "{{soft:3}} {{sentence}} it was {{mask}}", verbalizer: {{0: bad, 1: good}}}}
method: {{name: prompt-tuning}}
""")
    code, out, err = run(capsys, "render", path, "--text", "a very good film", "--json")
    assert code == 0, err
    (rendered,) = json.loads(out)["inputs"]
    spec = TaskSpec(method="prompt-tuning", model=str(model_dir), text_fields=["sentence"], labels=["0", "1"],
                    template="{soft:3} {sentence} it was {mask}", verbalizer={"0": ["bad"], "1": ["good"]})
    clf, _ = build_classifier(spec)
    batch = clf.scorer.encode([{"sentence": "a very good film"}])
    if model == "gpt2":  # the text before the mask; the word continues it
        assert rendered["ids"][: rendered["mask"]] == batch["ids"][0].tolist()
    else:
        assert rendered["ids"] == batch["ids"][0].tolist()
        assert rendered["tokens"][rendered["mask"]] == "<extra_id_0>"
    assert len(rendered["soft"]) == 3 and all(rendered["tokens"][p].startswith("<soft:") for p in rendered["soft"])


def test_render_without_inputs_says_what_to_give(tmp_path, bert_dir, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(f"model: {bert_dir}\nprompt: {{template: '{{sentence}} {{mask}}', verbalizer: {{0: bad, 1: good}}}}\n"
                    "method: {name: zero-shot}\n")
    code, _, err = run(capsys, "render", path)
    assert code == 2 and err.count("\n") == 1 and "set task.train or give --text" in err, err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"prompttune {prompttune.__version__}\n"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^version = "(.+)"$', pyproject, re.M).group(1) == prompttune.__version__


def test_bare_prompttune_lists_the_commands(capsys):
    code, out, err = run(capsys)
    assert code == 0 and err == ""
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    assert listed == list(sub.choices) and "render" in listed and "predict" in listed
    assert "prompttune COMMAND --help" in out


def test_render_writes_each_input_on_one_line(tmp_path, gpt2_dir, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(f"model: {gpt2_dir}\nprompt: {{template: \"Review: {{sentence}}\\nSentiment: {{mask}}\", "
                    "verbalizer: {0: bad, 1: good}}\nmethod: {name: zero-shot}\n")
    code, out, err = run(capsys, "render", path, "--text", "a film")
    assert code == 0, err
    text = next(line for line in out.splitlines() if line.startswith("  text:"))
    assert "Review: a film\\nSentiment:" in text, text


def test_progress_bars_show_on_a_terminal_only():
    from prompttune.progress import bar_off

    assert bar_off(False) is True and bar_off(True) is None, "None: tqdm's own check that stderr is a terminal"


def test_predict_out_never_replaces_a_file_that_appeared_while_the_model_ran(artifact, data_tsv, tmp_path, capsys,
                                                                               monkeypatch):
    import prompttune.artifacts

    out_file = tmp_path / "preds.jsonl"
    real = prompttune.artifacts.load_artifact

    def another_run_writes_first(*args, **kwargs):
        out_file.write_text("the other run's predictions\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(prompttune.artifacts, "load_artifact", another_run_writes_first)
    code, _, err = run(capsys, "predict", artifact, "--data", data_tsv, "--out", out_file)
    assert code == 2 and err.count("\n") == 1 and "appeared while this run worked; pass --overwrite" in err, err
    assert out_file.read_text() == "the other run's predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.jsonl"], "no staging file left"


def test_predict_out_into_a_folder_a_run_holds_is_refused(artifact, data_tsv, tmp_path, capsys):
    import fcntl
    import os

    (tmp_path / "run").mkdir()
    fd = os.open(tmp_path / "run", os.O_RDONLY | os.O_DIRECTORY)  # another run's lock (`claim_output`'s)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        code, _, err = run(capsys, "predict", artifact, "--data", data_tsv, "--out", tmp_path / "run" / "p.jsonl")
    finally:
        os.close(fd)
    assert code == 2 and "another prompttune run" in err, err
    assert not (tmp_path / "run" / "p.jsonl").exists()


def test_predict_names_a_label_field_that_is_not_a_column(artifact, data_tsv, capsys):
    code, _, err = run(capsys, "predict", artifact, "--data", data_tsv, "--label-field", "nope")
    assert code == 2 and err.count("\n") == 1 and "--label-field 'nope' is not a column" in err, err

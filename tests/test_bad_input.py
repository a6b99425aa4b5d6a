"""Bad input gets one clear line, never a traceback (issue 10).

Every case runs through the command line and checks the whole contract: exit status 2, exactly
one line on stderr, `prompttune CMD: error: ...` naming the file and line (or the config key, the
flag, the --text) and the problem. Rows are located as `FILE:LINE`, the physical line of the file
where the row starts (the header is line 1, blank lines count); a JSON array's rows as
`FILE, item N`; a saved dataset's as `DIR, row N`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prompttune import TaskSpec, build_classifier, save_artifact
from prompttune.cli import main
from prompttune.config import load_config
from prompttune.data import examples_from_texts, load_examples
from prompttune.errors import DataError
from prompttune.recipes import load_splits
from prompttune.training import TrainConfig
from prompttune.verbalizers import label_key
from test_lora import lora_task

POS = ["this movie was great fun", "a very good film", "fun and good", "great film , very fun"]
NEG = ["this movie was terrible", "a very bad film", "boring and bad", "awful film , very boring"]
GOOD_TSV = "label\tsentence\n" + "".join(f"1\t{s}\n" for s in POS) + "".join(f"0\t{s}\n" for s in NEG)


def zero_shot_task(directory: Path, model_dir: Path, text_fields=("sentence",)) -> Path:
    """A saved zero-shot task (nothing trains, so it is built in a moment)."""
    template = " ".join(f"{{{f}}}" for f in text_fields) + " it was {mask} ."
    spec = TaskSpec(method="zero-shot", model=str(model_dir), text_fields=list(text_fields), labels=["0", "1"],
                    template=template, verbalizer={"0": ["bad"], "1": ["good"]})
    clf, fp = build_classifier(spec)
    return save_artifact(directory, spec, clf, fp)


@pytest.fixture(scope="module")
def task(bert_dir, tmp_path_factory) -> Path:
    """A one-field sentiment task on the tiny BERT: labels '0' and '1'."""
    return zero_shot_task(tmp_path_factory.mktemp("task"), bert_dir)


@pytest.fixture
def config(tmp_path, bert_dir) -> Path:
    """A zero-shot run config over a good train.tsv (its line 5 is 'great film , very fun')."""
    (tmp_path / "train.tsv").write_text(GOOD_TSV, encoding="utf-8")
    path = tmp_path / "run.yaml"
    path.write_text(f"""model: {bert_dir}
task: {{train: {tmp_path / 'train.tsv'}, text_fields: [sentence]}}
prompt:
  template: "{{sentence}} it was {{mask}} ."
  verbalizer: {{0: bad, 1: good}}
method: {{name: zero-shot}}
train: {{epochs: 1, progress: false}}
""", encoding="utf-8")
    return path


def one_error(capsys, *argv) -> str:
    """Run the CLI, expect exit status 2 and exactly one error line on stderr, no traceback; return the line."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
        err = capsys.readouterr().err
    else:
        err = capsys.readouterr().err
    assert code == 2, f"expected exit status 2, got {code}; stderr: {err}"
    assert "Traceback" not in err, f"a traceback instead of one line: {err}"
    assert err.count("\n") == 1 and err.endswith("\n"), f"expected one error line, got: {err}"
    return err.rstrip("\n")


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


# --- 4. export prints what the adapter has ---------------------------------------------------


def test_export_of_a_lora_task_prints_its_rank_and_target_modules(bert_dir, tmp_path, capsys):
    lora_task(bert_dir, tmp_path, lora_alpha=8)
    code = main(["export", str(tmp_path / "task"), "--format", "peft", "--out", str(tmp_path / "peft")])
    out, err = capsys.readouterr()
    assert code == 0, f"export of a LoRA task failed: {err}"
    printed = json.loads(out)
    assert printed["peft_type"] == "LORA" and printed["r"] == 4 and printed["lora_alpha"] == 8, printed
    assert sorted(printed["target_modules"]) == ["query", "value"], f"BERT's default LoRA targets expected: {printed}"
    assert "num_virtual_tokens" not in printed, "a LoRA adapter has no virtual tokens"


# --- 11, 12, 15. data files: one line naming the file, the line and the problem ---------------

LATIN1 = "label\tsentence\n1\tgood\n0\tun caf\xe9 froid\n".encode("latin-1")

DATA_CASES = {
    # name: (file name, content, the error after 'FILE')
    "latin-1": ("d.tsv", LATIN1, ":3: not UTF-8 text (byte 0xe9); re-encode the file as UTF-8, e.g. from Latin-1: "
                                 "iconv -f latin1 -t utf-8 {path} > {dir}/d.utf8.tsv"),
    "jsonl list line": ("d.jsonl", '{"sentence": "good", "label": 1}\n[1, 2]\n', ":2: expected a JSON object, got a list"),
    "jsonl string line": ("d.jsonl", '{"sentence": "good", "label": 1}\n\n"x"\n', ":3: expected a JSON object, got a string"),
    "json one object": ("d.json", '{\n  "sentence": "good",\n  "label": 1\n}\n',
                        ": the file is one JSON object; expected a JSON array of objects ([{...}, {...}]) or one object "
                        "per line (JSON lines)"),
    "json array of a number": ("d.json", '[{"sentence": "good", "label": 1}, 5]',
                               ", item 2: expected a JSON object, got a number"),
    "json array broken": ("d.json", '[\n  {"sentence": "good", "label": 1},\n  {"sentence": "bad" "label": 0}\n]\n',
                          ":3: not valid JSON (Expecting ',' delimiter)"),
    "tsv missing tab": ("d.tsv", "label\tsentence\n1\tgood\n0\tbad\nan awful film\n",
                        ":4: the row has 1 cell(s), the header has 2 – a missing tab?"),
    "tsv extra tab": ("d.tsv", "label\tsentence\n1\tgood\n\n\n0\tbad\tfilm\n",
                      ":5: the row has 3 cell(s), the header has 2 – a tab inside a text?"),
    "csv extra comma after a quoted row of two lines": (
        "d.csv", 'label,sentence\n1,"good\nand fun"\n0,bad, boring\n',
        ":4: the row has 3 cell(s), the header has 2 – a comma inside a text that is not in double quotes?"),
    "csv quote never closed": ("d.csv", 'label,sentence\n1,good\n0,"bad\n1,fun\n',
                               ':3: a double quote opened in this row is never closed, so the rest of the file became '
                               'one cell; close it, or write a quote inside a quoted cell as ""'),
    "header twice": ("d.tsv", "label\tsentence\tlabel\n1\tgood\t1\n",
                     ":1: the header names column(s) ['label'] more than once"),
    "empty label cell": ("d.tsv", "label\tsentence\n1\tgood\n\ta bad film\n", ":3: label column 'label' is empty"),
    "null label": ("d.jsonl", '{"sentence": "good", "label": 1}\n{"sentence": "bad", "label": null}\n',
                   ":2: label column 'label' is empty"),
    "list label": ("d.jsonl", '{"sentence": "good", "label": [1]}\n',
                   ":1: label column 'label' holds a list, expected a label"),
    "empty text": ("d.tsv", "label\tsentence\n1\tgood\n0\t   \n",
                   ":3: the text column(s) ['sentence'] are empty; fill in the row or remove it"),
    "object as text": ("d.jsonl", '{"sentence": {"a": 1}, "label": 1}\n',
                       ":1: column 'sentence' holds an object, expected text"),
    "unknown label": ("d.tsv", "label\tsentence\n1\tgood\n0\tbad\nneutral\tso-so\n",
                      ":4: label 'neutral' is not one of the task's labels ['0', '1']"),
    "jsonl row lacking the label": ("d.jsonl", '{"sentence": "good", "label": 1}\n{"sentence": "bad"}\n',
                                    ":2: the row has no column(s) ['label']"),
    "lone surrogate in a text": ("d.jsonl", '{"sentence": "good", "label": 1}\n{"sentence": "bad \\ud800 film", "label": 0}\n',
                                 ":2: column 'sentence' holds text that is not valid Unicode ('\\ud800' at character 4); "
                                 "write it as UTF-8"),
    "json nested too deeply": ("d.jsonl", "[" * 100_000 + "\n", ":1: JSON nested too deeply to read"),
    "json number of 5,000 digits": ("d.jsonl", '{"sentence": "good", "label": ' + "9" * 5000 + "}\n",
                                    ":1: not valid JSON (Exceeds the limit (4300 digits) for integer string conversion: "
                                    "value has 5000 digits; use sys.set_int_max_str_digits() to increase the limit)"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_a_bad_data_file_is_one_line_naming_file_line_and_problem(case, task, tmp_path, capsys, monkeypatch):
    import prompttune.evaluation

    monkeypatch.setattr(prompttune.evaluation, "evaluate", lambda *a, **k: pytest.fail("scored a file with a bad row"))
    name, content, problem = DATA_CASES[case]
    path = write(tmp_path / name, content)
    line = one_error(capsys, "eval", task, "--data", path)
    expected = f"prompttune eval: error: {path}" + problem.replace("{path}", str(path)).replace("{dir}", str(tmp_path))
    assert line == expected, f"{case}:\n got      {line}\n expected {expected}"


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("empty.tsv", "", "data file '{path}' has no rows"),
    ("header_only.csv", "label,sentence\n", "data file '{path}' has no rows"),
    ("d.xlsx", "x", "cannot read '{path}': expected a .tsv, .csv, .json or .jsonl file or a saved Hugging Face "
                    "dataset directory"),
    ("missing.tsv", None, "data file '{path}' does not exist"),
])
def test_an_empty_missing_or_unknown_data_file_is_one_line(name, content, expected, task, tmp_path, capsys):
    path = tmp_path / name
    if content is not None:
        write(path, content)
    assert one_error(capsys, "eval", task, "--data", path) == "prompttune eval: error: " + expected.format(path=path)


def test_a_directory_without_a_dataset_is_one_line(task, tmp_path, capsys):
    pytest.importorskip("datasets", reason="reading saved datasets needs the `datasets` test dependency")
    (tmp_path / "notes").mkdir()
    line = one_error(capsys, "eval", task, "--data", tmp_path / "notes")
    assert line.startswith(f"prompttune eval: error: '{tmp_path / 'notes'}' is not a saved Hugging Face dataset ("), line
    assert line.endswith("a data path is a .tsv, .csv, .json or .jsonl file or a directory written by "
                         "Dataset.save_to_disk"), line


def test_a_saved_dataset_row_is_named_by_its_number(tmp_path):
    datasets = pytest.importorskip("datasets", reason="reading saved datasets needs the `datasets` test dependency")
    datasets.Dataset.from_dict({"sentence": ["good", "bad"], "label": [1, 2]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError) as err:
        load_examples(tmp_path / "ds", ["sentence"], labels=["0", "1"])
    assert str(err.value) == f"{tmp_path / 'ds'}, row 2: label '2' is not one of the task's labels ['0', '1']"


# --- 11. .json: an array of objects or JSON lines ---------------------------------------------

ROWS = [{"sentence": "great fun", "label": 1}, {"sentence": "a dull film", "label": 0}]
EXPECTED = [{"sentence": "great fun", "label": "1"}, {"sentence": "a dull film", "label": "0"}]


@pytest.mark.parametrize(("name", "text"), [
    ("array.json", json.dumps(ROWS, indent=2)),
    ("array_one_line.json", "  " + json.dumps(ROWS)),
    ("lines.json", "".join(json.dumps(r) + "\n" for r in ROWS)),
    ("lines.jsonl", "\n".join(json.dumps(r) for r in ROWS) + "\n\n"),
    ("bom.jsonl", "\ufeff" + "".join(json.dumps(r) + "\n" for r in ROWS)),
])
def test_json_files_are_read_as_an_array_or_as_json_lines(name, text, tmp_path):
    assert load_examples(write(tmp_path / name, text), ["sentence"]) == EXPECTED, f"{name} was not read as 2 rows"


# --- 12. booleans: YAML's and JSON's ------------------------------------------------------------


@pytest.mark.parametrize(("edit", "problem"), [
    (("{0: bad, 1: good}", "{yes: good, no: bad}"),
     ":5: config key prompt.verbalizer: label yes was read by YAML as the boolean True; quote it: 'yes'"),
    (("{0: bad, 1: good}", "{0: bad, 1: [good, on]}"),
     ":5: config key prompt.verbalizer: label word on was read by YAML as the boolean True; quote it: 'on'"),
    (("text_fields: [sentence]", "text_fields: [sentence], labels: [Off, On]"),
     ":2: config key task.labels: item Off was read by YAML as the boolean False; quote it: 'Off'"),
    (('template: "{sentence} it was {mask} ."', "template: yes"),
     ":4: config key prompt.template: value yes was read by YAML as the boolean True; quote it: 'yes'"),
])
def test_a_yaml_boolean_where_text_belongs_names_the_key_and_how_to_quote_it(edit, problem, config, capsys):
    config.write_text(config.read_text().replace(*edit))
    line = one_error(capsys, "train", config, "--out", config.parent / "out")
    assert line == f"prompttune train: error: {config}{problem}", line
    assert not (config.parent / "out").exists(), "a refused config must not create the output directory"


@pytest.mark.parametrize(("item", "problem"), [
    ("task.labels=[yes, no]", "config key task.labels: item yes was read by YAML as the boolean True; quote it: 'yes'"),
    ("prompt.verbalizer={true: good, false: bad}",
     "config key prompt.verbalizer: label true was read by YAML as the boolean True; quote it: 'true'"),
    ("prompt={verbalizer: {0: bad, 1: no}}",
     "config key prompt.verbalizer: label word no was read by YAML as the boolean False; quote it: 'no'"),
    ("task.label_field=off", "config key task.label_field: value off was read by YAML as the boolean False; quote it: 'off'"),
])
def test_a_yaml_boolean_in_a_set_value_names_the_item(item, problem, config, capsys):
    line = one_error(capsys, "train", config, "--out", config.parent / "out", "--set", item)
    assert line == f"prompttune train: error: --set {item}: {problem}", line


def test_quoted_yes_and_no_are_labels_and_booleans_stay_booleans_where_a_key_takes_one(config):
    config.write_text(config.read_text().replace("{0: bad, 1: good}", "{'yes': good, 'no': bad}")
                      .replace("progress: false", "progress: no"))
    cfg = load_config(config, ["task.labels=['yes', 'no']", "method.merge=yes"])
    assert cfg.prompt.verbalizer == {"yes": "good", "no": "bad"} and cfg.task.labels == ["yes", "no"]
    assert cfg.train.progress is False and cfg.method.merge is True, "bool keys must keep reading yes/no as booleans"


def test_json_boolean_labels_match_a_verbalizer_written_with_quoted_true_and_false(config, capsys):
    assert (label_key(True), label_key(False)) == ("true", "false"), "a JSON true is the label 'true'"
    data = config.parent / "bools.jsonl"
    data.write_text("".join(json.dumps({"sentence": s, "label": label}) + "\n"
                            for s, label in [("good fun", True), ("bad film", False), ("great", True)]))
    config.write_text(config.read_text().replace("{0: bad, 1: good}", "{'false': bad, 'true': good}"))
    code = main(["train", str(config), "--out", str(config.parent / "out"), "--set", f"task.train={data}",
                 "--set", f"task.eval={data}"])
    out, err = capsys.readouterr()
    assert code == 0, f"JSON true/false labels should match the verbalizer's 'true'/'false': {err}"
    assert json.loads(out)["eval"]["n"] == 3
    assert json.loads((config.parent / "out" / "config.json").read_text())["labels"] == ["false", "true"]


# --- 13. numbers: config keys and command-line flags -------------------------------------------


@pytest.mark.parametrize(("item", "expected"), [
    ("train.warmup_ratio=-1", "train.warmup_ratio must be a fraction of the steps in [0, 1], got -1"),
    ("train.warmup_ratio=1.5", "train.warmup_ratio must be a fraction of the steps in [0, 1], got 1.5"),
    ("train.lr=.nan", "train.lr must be a finite number > 0, got nan"),
    ("train.lr=.inf", "train.lr must be a finite number > 0, got inf"),
    ("train.weight_decay=-0.1", "train.weight_decay must be a finite number ≥ 0, got -0.1"),
    ("train.max_grad_norm=-1", "train.max_grad_norm must be a finite number ≥ 0 (0 = no clipping), got -1"),
    ("train.max_grad_norm=.nan", "train.max_grad_norm must be a finite number ≥ 0 (0 = no clipping), got nan"),
    ("train.batch_size=0", "train.batch_size must be a positive whole number, got 0"),
    ("train.seed=-1", "train.seed must be a whole number from 0 to 4294967, got -1"),
    ("train.early_stopping_patience=0", "train.early_stopping_patience must be a positive whole number of epochs or null, "
                                        "got 0"),
    ("train.early_stopping_patience=2", "train.early_stopping_patience needs a dev set to tell an improvement: set "
                                        "task.dev (or task.shots, which draws a dev set from train)"),
    ("train.report_to=wandb", "train.report_to must be one of ['none', 'tensorboard'], got 'wandb'"),
    ("method.lora_rank=0", "method.lora_rank must be ≥ 1, got 0"),
    ("method.lora_alpha=0", "method.lora_alpha must be > 0, got 0"),
    ("method.lora_dropout=1.0", "method.lora_dropout must be a probability in [0, 1), got 1.0"),
    ("method.lora_dropout=-0.1", "method.lora_dropout must be a probability in [0, 1), got -0.1"),
    ("method.lora_dropout=.nan", "method.lora_dropout must be a probability in [0, 1), got nan"),
    ("method.reduction_factor=0", "method.reduction_factor must be ≥ 1, got 0"),
    ("method.adapter_kind=parallel", "method.adapter_kind must be one of ['houlsby', 'pfeiffer'], got 'parallel'"),
    ("method.reparam_hidden=0", "method.reparam_hidden must be ≥ 1, got 0"),
    ("method.transfer_epochs=0", "method.transfer_epochs must be ≥ 1, got 0"),
    ("method.prompt_length=0", "method.prompt_length must be ≥ 1, got 0"),
    ("method.demonstrations=-1", "method.demonstrations must be ≥ 0, got -1"),
    ("method.context_examples=-1", "method.context_examples must be ≥ 0, got -1"),
    ("method.max_reasoning_tokens=0", "method.max_reasoning_tokens must be ≥ 1, got 0"),
])
def test_a_numeric_config_value_out_of_range_is_one_line(item, expected, config, capsys):
    line = one_error(capsys, "train", config, "--out", config.parent / "out", "--set", item)
    assert line == f"prompttune train: error: {expected}", line
    assert not (config.parent / "out").exists(), "a refused config must not create the output directory"


def test_the_training_defaults_and_no_clipping_are_accepted():
    assert TrainConfig(max_grad_norm=0, warmup_ratio=1.0, weight_decay=0.0).max_grad_norm == 0


NEEDS_CONFIG = ["CONFIG", "--out", "OUT"]
FLAGS = [  # (argv before the flag, flag, bad value, expected)
    (["eval", "TASK", "--data", "DATA"], "--batch-size", "0", "≥ 1"),
    (["eval", "TASK", "--data", "DATA"], "--batch-size", "many", "≥ 1"),
    (["generate", "TASK", "--text", "x"], "--max-new-tokens", "0", "≥ 1"),
    (["search", "triggers", *NEEDS_CONFIG], "--steps", "0", "≥ 1"),
    (["search", "triggers", *NEEDS_CONFIG], "--candidates", "-3", "≥ 1"),
    (["search", "triggers", *NEEDS_CONFIG], "--batch-size", "0", "≥ 1"),
    (["search", "labels", *NEEDS_CONFIG], "--per-class", "0", "≥ 1"),
    (["search", "labels", *NEEDS_CONFIG], "--assignments", "1.5", "≥ 1"),
    (["search", "templates", *NEEDS_CONFIG, "--generator", "T5"], "--beams", "0", "≥ 1"),
    (["search", "templates", *NEEDS_CONFIG, "--generator", "T5"], "--keep", "0", "≥ 1"),
    (["fit-lm-head", "--data", "DATA", "--out", "OUT"], "--max-texts", "0", "≥ 1"),
    (["fit-lm-head", "--data", "DATA", "--out", "OUT"], "--held-out", "0", "≥ 1"),
    (["fit-lm-head", "--data", "DATA", "--out", "OUT"], "--seed", "-1", "from 0 to 4294967295"),
]


@pytest.mark.parametrize(("before", "flag", "value", "expected"), FLAGS, ids=[f"{b[0]} {f} {v}" for b, f, v, _ in FLAGS])
def test_a_bad_numeric_flag_is_refused_in_argparses_one_line(before, flag, value, expected, capsys):
    line = one_error(capsys, *before, flag, value)
    command = " ".join(before[:2]) if before[0] == "search" else before[0]
    assert line == (f"prompttune {command}: error: argument {flag}: expected a whole number {expected}, got '{value}' "
                    f"(see prompttune {command} --help)"), line


def test_fit_lm_head_with_fewer_texts_than_held_out_is_one_line(tmp_path, capsys, bert_dir):
    data = write(tmp_path / "d.tsv", GOOD_TSV)
    line = one_error(capsys, "fit-lm-head", "--model", bert_dir, "--data", data, "--out", tmp_path / "head",
                     "--held-out", "8")
    assert line == (f"prompttune fit-lm-head: error: {data} has 8 text(s) and --held-out 8 keeps them all aside, "
                    "leaving none to fit the head on; lower --held-out or give more text"), line


# --- 14. --text: empty inputs and JSON objects --------------------------------------------------


def test_predict_refuses_a_text_that_is_not_valid_unicode(task, capsys):
    """Bytes of another encoding on a command line reach Python as lone surrogates."""
    line = one_error(capsys, "predict", task, "--text", "caf\udce9")
    assert line == ("prompttune predict: error: --text 'caf\\udce9' holds text that is not valid Unicode ('\\udce9' at "
                    "character 3); write it as UTF-8"), line


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_predict_refuses_an_empty_text(text, task, capsys):
    line = one_error(capsys, "predict", task, "--text", "a good film", "--text", text)
    assert line == f"prompttune predict: error: --text {text!r} has no text (empty, or only whitespace or invisible characters)", line


def test_generate_refuses_an_empty_text(gpt2_dir, tmp_path, capsys):
    task = zero_shot_task(tmp_path / "gpt2", gpt2_dir)
    assert one_error(capsys, "generate", task, "--text", "") == \
        "prompttune generate: error: --text '' has no text (empty, or only whitespace or invisible characters)"


def test_on_one_field_a_text_is_literal_unless_a_json_object_with_the_field():
    texts = ["{braces} first", '{"sentence": "from json"}', '{"other": 1}', "[1, 2]", '{"sentence": 5}']
    assert examples_from_texts(texts, ["sentence"]) == [
        {"sentence": "{braces} first"}, {"sentence": "from json"}, {"sentence": '{"other": 1}'}, {"sentence": "[1, 2]"},
        {"sentence": "5"}]


def test_predict_reads_a_text_starting_with_a_brace_on_a_one_field_task(task, capsys):
    code = main(["predict", str(task), "--text", "{braces} a good film", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, f"a text starting with '{{' should be predicted on a one-field task: {err}"
    assert json.loads(out)["text"] == "{braces} a good film"


@pytest.mark.parametrize(("text", "problem"), [
    ("a plain text", "is not a JSON object; this task reads fields ['premise', 'hypothesis']: give each input as "
                     '\'{"premise": "...", "hypothesis": "..."}\''),
    ('{"premise": "p"}', "lacks field(s) ['hypothesis']; the task reads ['premise', 'hypothesis']"),
    ('{"premise": "", "hypothesis": "  "}',
     ": the field(s) ['premise', 'hypothesis'] are all empty or only whitespace; give text in at least one"),
    ('{"premise": ["p"], "hypothesis": "h"}', ": field 'premise' holds a list, expected text"),
])
def test_on_several_fields_a_text_is_a_json_object_with_them(text, problem, bert_dir, tmp_path, capsys):
    task = zero_shot_task(tmp_path / "pair", bert_dir, ("premise", "hypothesis"))
    line = one_error(capsys, "predict", task, "--text", text)
    assert line == f"prompttune predict: error: --text {text!r}" + ("" if problem[0] == ":" else " ") + problem, line


def test_on_several_fields_one_non_empty_field_is_enough_and_other_keys_are_left_out():
    assert examples_from_texts(['{"premise": "p", "hypothesis": "", "extra": 1}'], ["premise", "hypothesis"]) == \
        [{"premise": "p", "hypothesis": ""}]


# --- 15. labels are checked where rows are read, before anything is scored or trained -----------


@pytest.mark.parametrize("split", ["train", "dev", "eval"])
def test_train_names_the_file_and_line_of_an_unknown_label(split, config, capsys):
    bad = write(config.parent / f"{split}.tsv", GOOD_TSV + "2\tneutral film\n")
    line = one_error(capsys, "train", config, "--out", config.parent / "out", "--set", f"task.{split}={bad}")
    assert line == f"prompttune train: error: {bad}:10: label '2' is not one of the task's labels ['0', '1']", line


def test_an_unknown_label_is_named_before_few_shot_sampling(config, capsys):
    bad = write(config.parent / "bad.tsv", GOOD_TSV + "2\tneutral film\n")
    line = one_error(capsys, "train", config, "--out", config.parent / "out", "--set", f"task.train={bad}",
                     "--set", "task.shots=1")
    assert line.endswith(f"{bad}:10: label '2' is not one of the task's labels ['0', '1']"), line


def test_a_head_task_checks_dev_and_eval_labels_against_those_of_train(config, tmp_path):
    bad = write(tmp_path / "eval.tsv", GOOD_TSV.replace("0\tboring and bad", "neg\tboring and bad"))
    cfg = load_config(config, ["method.name=finetune", "prompt=null", f"task.eval={bad}"])
    with pytest.raises(DataError) as err:
        load_splits(cfg)
    assert str(err.value) == f"{bad}:8: label 'neg' is not one of the task's labels ['0', '1']"


# --- config files -------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "expected"), [
    ("- model: x\n- task: y\n", "config file '{path}' holds list [{{'model': 'x'}}, {{'task': 'y'}}]; a config is a "
                                "mapping of keys to values (model: ..., task: {{...}}, prompt: {{...}}, method: {{...}}, "
                                "train: {{...}})"),
    ("model: [unclosed\n", "{path}:2: not valid YAML: expected ',' or ']', but got '<stream end>' (while parsing a "
                           "flow sequence that starts on line 1)"),
    ("model: x\n\ttask: y\n", "{path}:2: not valid YAML: found character '\\t' that cannot start any token"),
    (b"model: caf\xe9\n", "{path}:1: not UTF-8 text (byte 0xe9); re-encode the file as UTF-8, e.g. from Latin-1: "
                          "iconv -f latin1 -t utf-8 {path} > {dir}/run.utf8.yaml"),
])
@pytest.mark.parametrize("command", [["train"], ["search", "labels"]])
def test_a_config_file_that_is_not_a_yaml_mapping_is_one_line(content, expected, command, tmp_path, capsys):
    path = write(tmp_path / "run.yaml", content)
    line = one_error(capsys, *command, path, "--out", tmp_path / "out", "--set", "train.lr=1e-3")
    assert line == f"prompttune {command[0]}: error: " + expected.format(path=path, dir=tmp_path), line


def test_a_config_path_that_is_a_directory_is_one_line(tmp_path, capsys):
    line = one_error(capsys, "train", tmp_path, "--out", tmp_path / "out")
    assert line == f"prompttune train: error: config file '{tmp_path}' is a directory", line


def test_a_set_key_into_a_value_that_is_not_a_section_is_one_line(config, capsys):
    line = one_error(capsys, "train", config, "--out", config.parent / "out", "--set", "model.name=x")
    assert line == "prompttune train: error: --set model.name: 'model' is not a section", line


def test_an_empty_config_file_is_read_as_no_keys_and_fails_in_one_line(tmp_path, capsys):
    path = write(tmp_path / "run.yaml", "")
    line = one_error(capsys, "train", path, "--out", tmp_path / "out")
    assert line == "prompttune train: error: method 'prompt-finetune' needs prompt.template and prompt.verbalizer", line


# --- found by the review: artifacts edited by hand, models, methods, the command line ------------


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("labels", 5, "key 'labels' holds 5, expected a list of labels"),
    ("labels", [], "key 'labels' is empty; a classification task needs its labels"),
    ("text_fields", None, "key 'text_fields' holds null, expected a non-empty list of column names"),
    ("max_length", "big", "key 'max_length' holds \"big\", expected a whole number ≥ 1"),
    ("backbone", {}, "key 'backbone' holds {}, expected the backbone's fingerprint (name, kind, one of embedding_sha256, embedding_bf16_sha256, embedding_fp16_sha256...)"),
    ("weights", None, "key 'weights' holds null, expected the weights file's sha256"),
])
def test_a_config_json_edited_by_hand_is_one_line_naming_the_key(key, value, expected, task, tmp_path, capsys):
    import shutil

    edited = tmp_path / "task"
    shutil.copytree(task, edited)
    config = json.loads((edited / "config.json").read_text())
    (edited / "config.json").write_text(json.dumps({**config, key: value}))
    line = one_error(capsys, "predict", edited, "--text", "a film")
    assert line == f"prompttune predict: error: {edited / 'config.json'}: {expected}", line


def test_a_max_length_beyond_the_models_positions_is_one_line_before_training(config, capsys):
    line = one_error(capsys, "train", config, "--out", config.parent / "out", "--set", "train.max_length=1000")
    assert line.endswith("train.max_length 1000 exceeds the 128 positions of model "
                         f"'{load_config(config).model}'; set train.max_length to at most 128"), line


def test_a_deep_prompt_counts_against_the_models_positions(config, capsys):
    line = one_error(capsys, "train", config, "--out", config.parent / "out", "--set", "method.name=p-tuning-v2",
                     "--set", "method.prompt_length=8", "--set", "train.max_length=128")
    assert "train.max_length 128 with a deep prompt of 8 exceeds the 128 positions" in line and "at most 120" in line, line


def test_a_method_whose_parameters_never_reach_the_loss_is_one_line(t5_dir, tmp_path, capsys):
    """LoRA on T5's `shared` embedding: the encoder calls its own embedding module, so nothing trains."""
    (tmp_path / "train.tsv").write_text(GOOD_TSV, encoding="utf-8")
    (tmp_path / "run.yaml").write_text(f"""model: {t5_dir}
task: {{train: {tmp_path / 'train.tsv'}, text_fields: [sentence]}}
prompt: {{template: "{{sentence}} it was {{mask}} .", verbalizer: {{0: bad, 1: good}}}}
method: {{name: lora, target_modules: [shared]}}
train: {{epochs: 1, max_length: 64, progress: false, checkpoint: false}}
""")
    code = main(["train", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    line = err.splitlines()[-1]  # after the run's own log line
    assert line.startswith("prompttune train: error: the loss does not depend on any of the 2 trainable parameter(s)"), line


@pytest.mark.parametrize(("item", "expected"), [
    ("prompt.verbalizer={0: good, 1: good}", "label word 'good' is a word of both label '0' and label '1'; a label word "
                                             "can stand for one label only"),
    ("prompt.verbalizer={~: bad, 1: good}", "a verbalizer label is null (YAML reads an empty key or ~ as null); write the "
                                            "label, e.g. {0: terrible, 1: great}"),
    ("method.target_modules=[]", "method.target_modules is an empty list; name the modules to adapt, e.g. [query, value], "
                                 "or leave it out for peft's default"),
])
def test_a_verbalizer_or_method_option_that_cannot_work_is_one_line(item, expected, config, capsys):
    line = one_error(capsys, "train", config, "--out", config.parent / "out", "--set", item)
    assert line == f"prompttune train: error: {expected}", line


def test_unrecognized_arguments_are_named_by_their_command(config, capsys):
    line = one_error(capsys, "train", config, "--out", config.parent / "out", "--bogus")
    assert line == "prompttune train: error: unrecognized arguments: --bogus (see prompttune train --help)", line


def test_resume_and_overwrite_together_are_refused(config, capsys):
    line = one_error(capsys, "train", config, "--out", config.parent / "out", "--resume", "--overwrite")
    assert line == ("prompttune train: error: argument --overwrite: not allowed with argument --resume "
                    "(see prompttune train --help)"), line


def test_a_message_quoting_a_librarys_lines_is_printed_on_one_line(task, capsys, monkeypatch):
    from prompttune.errors import ModelError
    import prompttune.artifacts

    def fails(*args, **kwargs):
        raise ModelError("cannot load model 'x': We couldn't connect.\nCheck your connection\n")

    monkeypatch.setattr(prompttune.artifacts, "load_artifact", fails)
    line = one_error(capsys, "predict", task, "--text", "a film")
    assert line == "prompttune predict: error: cannot load model 'x': We couldn't connect. Check your connection", line

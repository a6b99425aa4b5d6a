"""The CLI contract of DESIGN.md: train / eval --json / predict, help texts, one-line errors,
and every shipped example config is a valid config."""

import json
from pathlib import Path

import pytest

from prompttune.cli import build_parser, main
from prompttune.config import load_config

ROOT = Path(__file__).resolve().parents[1]
POS = ["this movie was great fun", "a very good film", "fun and good", "great film , very fun", "good fun movie"]
NEG = ["this movie was terrible", "a very bad film", "boring and bad", "awful film , very boring", "bad boring movie"]


@pytest.fixture
def sentiment_tsv(tmp_path) -> Path:
    path = tmp_path / "train.tsv"
    rows = [f"1\t{s}" for s in POS] + [f"0\t{s}" for s in NEG]
    path.write_text("label\tsentence\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture
def config_yaml(tmp_path, bert_dir, sentiment_tsv) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(
        f"""
model: {bert_dir}
task: {{train: {sentiment_tsv}, eval: {sentiment_tsv}, text_fields: [sentence], shots: 2}}
prompt: {{template: "{{sentence}} it was {{mask}} .", verbalizer: {{0: bad, 1: good}}}}
method: {{name: prompt-finetune}}
train: {{epochs: 2, lr: 1.0e-3, batch_size: 4, progress: false}}
"""
    )
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_eval_predict_end_to_end(tmp_path, capsys, config_yaml, sentiment_tsv):
    out_dir = tmp_path / "task"
    code, out, err = run(capsys, "train", config_yaml, "--out", out_dir, "--set", "train.epochs=3")
    assert code == 0, err
    assert (out_dir / "config.json").is_file() and (out_dir / "weights.safetensors").is_file()
    assert not (out_dir / "checkpoint").exists(), "the resume checkpoint should be removed after a finished run"
    assert json.loads((out_dir / "config.json").read_text())["training"]["history"][-1]["epoch"] == 3, "--set was ignored"

    code, out, err = run(capsys, "eval", out_dir, "--data", sentiment_tsv, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert set(result) >= {"accuracy", "n", "macro_f1"} and result["n"] == 10

    code, out, err = run(capsys, "predict", out_dir, "--text", "a good film", "--text", "a bad film", "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["text"] for line in lines] == ["a good film", "a bad film"]
    assert all(line["label"] in ("0", "1") and abs(sum(line["probabilities"].values()) - 1) < 1e-5 for line in lines)


def test_finetune_baseline_through_cli(tmp_path, capsys, config_yaml, sentiment_tsv):
    code, out, err = run(capsys, "train", config_yaml, "--out", tmp_path / "ft", "--set", "method.name=finetune")
    assert code == 0, err
    assert json.loads(out)["method"] == "finetune"


@pytest.mark.parametrize(
    "override, message",
    [
        ("prompt.template={sentence} it was {mask", "unbalanced '{'"),
        ("prompt.template={review} it was {mask}", "'review'"),
        ("method.name=no-such-method", "unknown method.name 'no-such-method'"),
        ("train.lrr=0.1", "unknown config key(s) ['train.lrr']"),
        ("train.epochs=many", "train.epochs"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, capsys, config_yaml, override, message):
    code, out, err = run(capsys, "train", config_yaml, "--out", tmp_path / "x", "--set", override)
    assert code == 2
    assert message in err and err.count("\n") == 1, f"expected one error line naming {message!r}, got: {err}"
    assert not (tmp_path / "x").exists(), "a failed config must not create the output directory"


def test_unknown_label_in_data_is_named(tmp_path, capsys, config_yaml, sentiment_tsv):
    bad = tmp_path / "bad.tsv"
    bad.write_text(sentiment_tsv.read_text() + "2\tneutral film\n")
    code, _, err = run(capsys, "train", config_yaml, "--out", tmp_path / "x", "--set", f"task.train={bad}", "--set", "task.shots=null")
    assert code == 2 and "'2'" in err, err


def test_eval_refuses_a_directory_that_is_not_an_artifact(tmp_path, capsys, sentiment_tsv):
    code, _, err = run(capsys, "eval", tmp_path, "--data", sentiment_tsv)
    assert code == 2 and "not a task artifact" in err


def test_methods_are_listed(capsys):
    code, out, _ = run(capsys, "methods")
    listed = {line.split()[0] for line in out.splitlines()}
    assert code == 0 and {"zero-shot", "prompt-finetune", "finetune", "prompt-tuning", "p-tuning", "prefix-tuning",
                          "p-tuning-v2"} <= listed, listed


@pytest.mark.parametrize("command", ["train", "eval", "compare", "predict", "generate", "export", "demo", "fit-lm-head",
                                     "render",
                                     "methods"])
def test_every_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    assert "usage: prompttune " + command in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_is_valid(path):
    cfg = load_config(path)
    assert cfg.method.name and cfg.task.text_fields


def test_resume_checkpoints_can_be_switched_off(tmp_path, config_yaml, monkeypatch):
    import prompttune.training
    from prompttune.recipes import run_training

    written = []
    monkeypatch.setattr(prompttune.training, "_save_checkpoint", lambda *args: written.append(args))
    run_training(load_config(config_yaml, ["train.checkpoint=false"]), tmp_path / "task", log=lambda _: None)
    assert not written, "train.checkpoint=false must not write a checkpoint after each epoch"


@pytest.mark.parametrize("method", ["prompt-tuning", "p-tuning", "prefix-tuning", "p-tuning-v2"])
def test_prompt_methods_train_and_generate_through_the_cli(method, tmp_path, capsys, gpt2_dir, sentiment_tsv):
    template = "{soft:3} {sentence} it was {mask}" if method in ("prompt-tuning", "p-tuning") else "{sentence} it was {mask}"
    path = tmp_path / "run.yaml"
    path.write_text(f"""
model: {gpt2_dir}
task: {{train: {sentiment_tsv}, text_fields: [sentence], shots: 2}}
prompt: {{template: "{template}", verbalizer: {{0: bad, 1: good}}}}
method: {{name: {method}, prompt_length: 3, encoder: mlp}}
train: {{epochs: 1, lr: 0.1, batch_size: 2, max_length: 64, progress: false}}
""")
    code, out, err = run(capsys, "train", path, "--out", tmp_path / "task")
    assert code == 0, err
    assert json.loads(out)["trainable_parameters"] > 0
    code, out, err = run(capsys, "generate", tmp_path / "task", "--text", "a good film", "--text", "bad", "--max-new-tokens", "3", "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in rows] == ["a good film", "bad"] and all(isinstance(r["generated"], str) for r in rows)


def test_generate_refuses_a_masked_lm_task_in_one_line(tmp_path, capsys, config_yaml):
    code, _, err = run(capsys, "train", config_yaml, "--out", tmp_path / "task", "--set", "train.epochs=1")
    assert code == 0, err
    code, _, err = run(capsys, "generate", tmp_path / "task", "--text", "a good film")
    assert code == 2 and err.count("\n") == 1 and "does not generate" in err, err

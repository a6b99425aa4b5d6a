"""Runs you can read and compare: `eval`'s per-class numbers, confusion matrix and majority
baseline (scikit-learn's), early stopping that keeps the best epoch, the training plot, TensorBoard
logs through accelerate, and `compare`'s table."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from sklearn.metrics import classification_report, confusion_matrix

import prompttune.training
from prompttune import TaskSpec, TrainConfig, build_classifier, train
from prompttune.artifacts import load_artifact
from prompttune.cli import main
from prompttune.data import load_examples
from prompttune.errors import ConfigError
from prompttune.evaluation import evaluate, metrics, predict_scores
from prompttune.parameters import trainable_state_dict
from test_faults import Interrupted, interrupt_after_epoch

POS = ["this movie was great fun", "a very good film", "fun and good", "great film , very fun", "good fun movie",
       "good and great", "a fun film"]
NEG = ["this movie was terrible", "a very bad film", "boring and bad", "awful film , very boring", "bad boring movie"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_config(directory: Path, model_dir: Path, train_rows: str, **train) -> Path:
    """A prompt-finetune run config over train.tsv (its rows `train_rows`), with dev and eval data."""
    (directory / "train.tsv").write_text("label\tsentence\n" + train_rows, encoding="utf-8")
    (directory / "all.tsv").write_text("label\tsentence\n" + "".join(f"1\t{s}\n" for s in POS)
                                       + "".join(f"0\t{s}\n" for s in NEG), encoding="utf-8")
    settings = {"epochs": 2, "lr": 1.0e-3, "batch_size": 4, "progress": False, **train}
    path = directory / "run.yaml"
    path.write_text(f"""
model: {model_dir}
task: {{train: {directory / 'train.tsv'}, dev: {directory / 'all.tsv'}, eval: {directory / 'all.tsv'}, text_fields: [sentence]}}
prompt: {{template: "{{sentence}} it was {{mask}} .", verbalizer: {{0: bad, 1: good}}}}
method: {{name: prompt-finetune}}
train: {json.dumps(settings)}
""", encoding="utf-8")
    return path


# The training labels lean to 0 (3 to 2) while the evaluated data leans to 1 (7 to 5): the majority
# baseline says which it took.
TRAIN_ROWS = "".join(f"0\t{s}\n" for s in NEG[:3]) + "".join(f"1\t{s}\n" for s in POS[:2])


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory, bert_dir) -> Path:
    """A 2-epoch tiny prompt-finetune run with dev and eval data: its artifact directory."""
    root = tmp_path_factory.mktemp("trained")
    out = root / "task"
    assert main(["train", str(write_config(root, bert_dir, TRAIN_ROWS)), "--out", str(out)]) == 0
    return out


# --- eval: scikit-learn's per-class numbers, the confusion matrix, the majority baseline -----------


def test_eval_reports_sklearns_per_class_numbers_and_a_confusion_matrix_summing_to_n(trained, capsys):
    data = trained.parent / "all.tsv"
    code, out, err = run(capsys, "eval", trained, "--data", data, "--json")
    assert code == 0, err
    result = json.loads(out)
    clf, config = load_artifact(trained)
    examples = load_examples(data, ["sentence"], "label", labels=config["labels"])
    pred = predict_scores(clf, examples).argmax(-1).tolist()
    gold = [clf.label_index(ex["label"]) for ex in examples]
    expected = classification_report(gold, pred, labels=[0, 1], target_names=config["labels"], output_dict=True,
                                     zero_division=0)
    assert result["labels"] == config["labels"] == ["0", "1"]
    for label in config["labels"]:
        got, want = result["per_class"][label], expected[label]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == \
               (want["precision"], want["recall"], want["f1-score"], want["support"])
    assert result["macro_f1"] == expected["macro avg"]["f1-score"] and result["accuracy"] == expected["accuracy"]
    assert result["confusion_matrix"] == confusion_matrix(gold, pred, labels=[0, 1]).tolist()
    assert sum(map(sum, result["confusion_matrix"])) == result["n"] == len(examples) == 12
    # The majority of the training labels the artifact records (0: 3 of 5), scored on the data (5 of 12 are 0).
    assert config["training"]["train_label_counts"] == {"0": 3, "1": 2}
    assert result["majority"] == {"label": "0", "from": "train", "tie": False, "accuracy": 5 / 12, "macro_f1": pytest.approx((10 / 17) / 2)}


def test_eval_text_output_is_a_table(trained, capsys):
    code, out, err = run(capsys, "eval", trained, "--data", trained.parent / "all.tsv")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("accuracy ") and "macro-F1 " in lines[0] and lines[0].endswith("n 12")
    assert lines[1].startswith("majority baseline: always '0' (the majority of the training labels): accuracy 0.4167")
    header = lines.index("label  precision  recall      F1  support")
    assert [line.split()[0] for line in lines[header + 1 : header + 3]] == ["0", "1"]
    assert lines[header + 1].split()[-1] == "5" and lines[header + 2].split()[-1] == "7", "support per class"
    assert "confusion matrix (rows: true label, columns: predicted)" in lines


def test_eval_takes_the_majority_of_the_data_when_the_artifact_records_no_training_labels(trained, tmp_path, capsys):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(trained, old)
    config = json.loads((old / "config.json").read_text())
    del config["training"]["train_label_counts"]  # as an artifact of an older prompttune
    (old / "config.json").write_text(json.dumps(config))
    code, out, err = run(capsys, "eval", old, "--data", trained.parent / "all.tsv", "--json")
    assert code == 0, err
    assert json.loads(out)["majority"] == {"label": "1", "from": "eval", "tie": False, "accuracy": 7 / 12,
                                           "macro_f1": pytest.approx((14 / 19) / 2)}


def test_metrics_match_sklearn_even_for_labels_named_like_its_summary_rows():
    labels = ["accuracy", "macro avg", "weighted avg"]
    rng = random.Random(0)
    for _ in range(20):
        gold = [rng.randrange(3) for _ in range(rng.randint(1, 15))]
        pred = [rng.randrange(3) for _ in gold]
        got = metrics(pred, gold, labels, details=True)
        want = classification_report(gold, pred, labels=[0, 1, 2], output_dict=True, zero_division=0)
        assert got["macro_f1"] == want["macro avg"]["f1-score"]
        assert [got["per_class"][label]["f1"] for label in labels] == [want[str(c)]["f1-score"] for c in range(3)]
        assert sum(map(sum, got["confusion_matrix"])) == len(gold)


# --- early stopping keeps the best epoch ------------------------------------------------------------


def test_early_stopping_stops_after_patience_and_keeps_the_best_epochs_weights(bert_dir, monkeypatch):
    """Dev accuracy 0.50, 0.75, 0.60, 0.70 (scripted): with patience 2 the run stops after epoch 4 of 10
    and the classifier ends with epoch 2's weights."""
    spec = TaskSpec(method="prompt-finetune", model=str(bert_dir), text_fields=["sentence"], labels=["0", "1"],
                    template="{sentence} it was {mask} .", verbalizer={"0": ["bad"], "1": ["good"]})
    clf, _ = build_classifier(spec)
    examples = [{"sentence": s, "label": "1"} for s in POS] + [{"sentence": s, "label": "0"} for s in NEG]
    scripted, snapshots = iter([0.50, 0.75, 0.60, 0.70, 0.99, 0.99]), []

    def scripted_evaluate(classifier, dev, **_):
        snapshots.append({k: v.clone() for k, v in trainable_state_dict(classifier).items()})
        return {"accuracy": next(scripted), "macro_f1": 0.0, "n": len(dev), "loss": 1.0}

    monkeypatch.setattr(prompttune.training, "evaluate", scripted_evaluate)
    config = TrainConfig(epochs=10, lr=1e-3, batch_size=4, progress=False, early_stopping_patience=2)
    result = train(clf, examples, examples, config)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4] and result.stopped_early
    assert result.best_epoch == 2 and result.best_dev["accuracy"] == 0.75
    final = trainable_state_dict(clf)
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final), "the best epoch's weights must be kept"
    assert not all(torch.equal(final[k], snapshots[3][k]) for k in final), "the last epoch trained on"


@pytest.mark.parametrize("interrupted_after", [3, 4])
def test_a_resumed_run_stops_where_the_uninterrupted_one_would(interrupted_after, bert_dir, tmp_path, monkeypatch):
    """Dev accuracy 0.50, 0.75, 0.60, 0.70 with patience 2: killed after epoch 3 (one more epoch to go) or
    after epoch 4 (out of patience, killed before the artifact was saved), the resumed run stops after
    epoch 4 with epoch 2's weights."""
    spec = TaskSpec(method="prompt-finetune", model=str(bert_dir), text_fields=["sentence"], labels=["0", "1"],
                    template="{sentence} it was {mask} .", verbalizer={"0": ["bad"], "1": ["good"]})
    examples = [{"sentence": s, "label": "1"} for s in POS] + [{"sentence": s, "label": "0"} for s in NEG]
    accuracies, snapshots = [0.50, 0.75, 0.60, 0.70, 0.99], []

    def scripted_evaluate(classifier, dev, **_):
        snapshots.append({k: v.clone() for k, v in trainable_state_dict(classifier).items()})
        return {"accuracy": accuracies[len(snapshots) - 1], "n": len(dev), "loss": 1.0}

    monkeypatch.setattr(prompttune.training, "evaluate", scripted_evaluate)
    config = TrainConfig(epochs=10, lr=1e-3, batch_size=4, progress=False, early_stopping_patience=2)
    with monkeypatch.context() as m, pytest.raises(Interrupted):
        interrupt_after_epoch(m, interrupted_after)
        train(build_classifier(spec)[0], examples, examples, config, checkpoint_dir=tmp_path)
    clf, _ = build_classifier(spec)
    result = train(clf, examples, examples, config, checkpoint_dir=tmp_path, resume=True)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4] and result.stopped_early and result.best_epoch == 2
    assert len(snapshots) == 4, "no epoch past the 4th is trained"
    final = trainable_state_dict(clf)
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final), "the best epoch's weights must be kept"


def test_a_run_that_improves_to_the_end_is_not_stopped_early(bert_dir, monkeypatch):
    spec = TaskSpec(method="prompt-finetune", model=str(bert_dir), text_fields=["sentence"], labels=["0", "1"],
                    template="{sentence} it was {mask} .", verbalizer={"0": ["bad"], "1": ["good"]})
    clf, _ = build_classifier(spec)
    examples = [{"sentence": s, "label": "1"} for s in POS[:2]] + [{"sentence": s, "label": "0"} for s in NEG[:2]]
    scripted = iter([0.5, 0.5, 0.75])
    monkeypatch.setattr(prompttune.training, "evaluate",
                        lambda classifier, dev, **_: {"accuracy": next(scripted), "n": len(dev), "loss": 1.0})
    result = train(clf, examples, examples, TrainConfig(epochs=3, batch_size=4, progress=False, early_stopping_patience=2))
    assert len(result.history) == 3 and result.best_epoch == 3 and not result.stopped_early


def test_early_stopping_through_train_records_it_and_the_artifact_reloads_to_the_best_dev_accuracy(
        tmp_path, bert_dir, capsys):
    """At a learning rate too small to move a float32 weight, no epoch beats the first: patience 2 ends
    the run after epoch 3 of 10, and the saved task scores the recorded best dev accuracy."""
    out = tmp_path / "task"
    config = write_config(tmp_path, bert_dir, TRAIN_ROWS, epochs=10, lr=1e-20, early_stopping_patience=2)
    code, _, err = run(capsys, "train", config, "--out", out)
    assert code == 0, err
    training = json.loads((out / "config.json").read_text())["training"]
    assert training["stopped_early"] is True and training["best_epoch"] == 1 and len(training["history"]) == 3
    assert training["seconds"] > 0
    dev = load_examples(tmp_path / "all.tsv", ["sentence"], "label", labels=["0", "1"])
    reloaded = evaluate(load_artifact(out)[0], dev)
    assert reloaded["accuracy"] == training["best_dev"]["accuracy"]
    assert reloaded["loss"] == pytest.approx(training["best_dev"]["loss"], abs=1e-6)


def test_early_stopping_without_dev_data_is_refused(bert_dir):
    spec = TaskSpec(method="prompt-finetune", model=str(bert_dir), text_fields=["sentence"], labels=["0", "1"],
                    template="{sentence} it was {mask} .", verbalizer={"0": ["bad"], "1": ["good"]})
    clf, _ = build_classifier(spec)
    examples = [{"sentence": "good", "label": "1"}, {"sentence": "bad", "label": "0"}]
    with pytest.raises(ConfigError, match="early_stopping_patience needs dev data"):
        train(clf, examples, [], TrainConfig(epochs=2, progress=False, early_stopping_patience=1))


# --- the training plot ------------------------------------------------------------------------------


def test_train_saves_a_png_plot_of_the_run_that_loading_ignores(trained):
    plot = trained / "training.png"
    assert plot.is_file() and plot.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in trained.iterdir()) == ["config.json", "eval.json", "training.png", "weights.safetensors"]
    load_artifact(trained)  # the pair's checksum does not cover the plot, and loading does not read it


def test_a_replaced_artifact_takes_its_plot_with_it(tmp_path, bert_dir, capsys):
    out = tmp_path / "task"
    config = write_config(tmp_path, bert_dir, TRAIN_ROWS, epochs=1)
    assert run(capsys, "train", config, "--out", out)[0] == 0
    code, _, err = run(capsys, "train", config, "--out", out, "--overwrite", "--set", "method.name=zero-shot",
                       "--set", "task.eval=null")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "weights.safetensors"], "zero-shot trains no epoch"


# --- TensorBoard through accelerate's trackers ------------------------------------------------------


def test_report_to_tensorboard_writes_loss_lr_and_dev_numbers(tmp_path, bert_dir, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "task"
    config = write_config(tmp_path, bert_dir, TRAIN_ROWS, report_to="tensorboard")
    code, _, err = run(capsys, "train", config, "--out", out)
    assert code == 0, err
    events = list((out / "logs" / "train").glob("events.out.tfevents.*"))
    assert len(events) == 1, sorted((out / "logs").rglob("*"))
    accumulator = EventAccumulator(str(events[0])).Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/epoch_loss", "dev/accuracy", "dev/loss"} <= tags, tags
    assert len(accumulator.Scalars("train/loss")) == 4, "5 examples in batches of 4: 2 steps an epoch, 2 epochs"
    assert [e.step for e in accumulator.Scalars("dev/accuracy")] == [2, 4]
    # A run started over replaces the old run's event files; one without a tracker leaves no logs.
    code, _, err = run(capsys, "train", config, "--out", out, "--overwrite", "--set", "train.report_to=none")
    assert code == 0, err
    assert not (out / "logs").exists()


def test_overwrite_leaves_event_files_where_no_prompttune_run_was(tmp_path, bert_dir, capsys):
    """--overwrite into another tool's project (its own logs/train): its TensorBoard files are not ours."""
    out = tmp_path / "their-project"
    theirs = out / "logs" / "train" / "events.out.tfevents.1.host"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"their events")
    config = write_config(tmp_path, bert_dir, TRAIN_ROWS, epochs=1)
    code, _, err = run(capsys, "train", config, "--out", out, "--overwrite")
    assert code == 0, err
    assert theirs.read_bytes() == b"their events"


# --- compare ---------------------------------------------------------------------------------------


def test_compare_shows_one_row_per_run_and_names_a_folder_that_is_not_one(trained, tmp_path, bert_dir, capsys):
    second = tmp_path / "lora"
    config = write_config(tmp_path, bert_dir, TRAIN_ROWS, epochs=1)
    code, _, err = run(capsys, "train", config, "--out", second, "--set", "method.name=lora")
    assert code == 0, err

    code, out, err = run(capsys, "compare", trained, second, "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["run"], r["method"]) for r in rows] == [(str(trained), "prompt-finetune"), (str(second), "lora")]
    for row, directory in zip(rows, (trained, second)):
        recorded = json.loads((directory / "config.json").read_text())
        assert row["size_bytes"] == (directory / "config.json").stat().st_size + (directory / "weights.safetensors").stat().st_size
        assert row["stored_numbers"] == recorded["stored_numbers"]
        assert row["trainable_parameters"] == recorded["training"]["trainable_parameters"]
        assert row["best_epoch"] == recorded["training"]["best_epoch"]
        assert row["dev"]["accuracy"] == recorded["training"]["best_dev"]["accuracy"]
        assert row["eval"]["accuracy"] == json.loads((directory / "eval.json").read_text())["accuracy"]
        assert row["seconds"] == recorded["training"]["seconds"]
    assert rows[1]["stored_numbers"] < rows[0]["stored_numbers"], "LoRA stores less than a fine-tuned model"

    code, out, err = run(capsys, "compare", trained, second)
    assert code == 0, err
    header, *lines = out.splitlines()
    assert header.split()[:3] == ["run", "method", "trained"] and len(lines) == 2
    assert lines[0].startswith(str(trained)) and "prompt-finetune" in lines[0]
    assert lines[1].startswith(str(second)) and " lora " in lines[1]
    assert "KiB" in lines[1] or "MiB" in lines[1]

    stray = tmp_path / "notes"
    stray.mkdir()
    code, out, err = run(capsys, "compare", trained, stray)
    assert code == 2 and len(out.splitlines()) == 2, "the artifacts are still shown"
    assert err == f"prompttune compare: error: {str(stray)!r} is not a task artifact: it has no config.json\n"


def test_a_tie_in_the_training_labels_is_said_so():
    from prompttune.evaluation import majority_baseline
    from prompttune.reports import eval_table

    m = majority_baseline([0, 1, 1], ["neg", "pos"], {"neg": 16, "pos": 16})
    assert m["label"] == "neg" and m["tie"]
    line = eval_table({"accuracy": 0.5, "macro_f1": 0.5, "n": 3, "majority": m}).splitlines()[1]
    assert "(the classes of the training labels are equal: the first label)" in line, line

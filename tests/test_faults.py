"""Nothing lost, nothing silently wrong: what the writing commands do when something is in the way.

- a finished run removes only the checkpoint files it wrote, never the user's (`train`);
- an output directory's files are replaced only with `--overwrite`, an interrupted run is continued
  only with `--resume`, and a resume says what it resumes; stale files of a replaced artifact go;
- a directory is written by one run at a time (an advisory lock the kernel drops with its holder);
- files that belong together are replaced together (a failed write leaves the old ones byte-identical
  and no staging folder), and readers see consistent pairs;
- a resume of another run (changed config) is refused, naming the keys old → new;
- an unwritable directory or a full disk is one line, found before the model loads or trains,
  leaving nothing half-written.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import prompttune.backbones
import prompttune.files
import prompttune.outputs
import prompttune.recipes
import prompttune.search.run
import prompttune.training
from contract import EXAMPLES
from prompttune import TaskSpec, TrainConfig, build_classifier, save_artifact, train
from prompttune.artifacts import read_saved
from prompttune.cli import main
from prompttune.config import load_config
from prompttune.errors import ArtifactError, ConfigError, OutputError
from prompttune.files import STAGING_PREFIX, file_sha256, json_writer, text_writer, write_together
from prompttune.outputs import LOCK, claim_output
from prompttune.parameters import trainable_bytes
from prompttune.recipes import run_training
from prompttune.training import RESUME_TOLERATED

POS = ["this movie was great fun", "a very good film", "fun and good", "great film , very fun", "good fun movie"]
NEG = ["this movie was terrible", "a very bad film", "boring and bad", "awful film , very boring", "bad boring movie"]


def no_space() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def write_run(directory: Path, model_dir: Path) -> Path:
    """A sentiment TSV and a 2-epoch prompt-finetune run config on it, in `directory`; the config's path."""
    data = directory / "train.tsv"
    data.write_text("label\tsentence\n" + "\n".join([f"1\t{s}" for s in POS] + [f"0\t{s}" for s in NEG]) + "\n")
    path = directory / "run.yaml"
    path.write_text(f"""
model: {model_dir}
task: {{train: {data}, eval: {data}, text_fields: [sentence], shots: 2}}
prompt: {{template: "{{sentence}} it was {{mask}} .", verbalizer: {{0: bad, 1: good}}}}
method: {{name: prompt-finetune}}
train: {{epochs: 2, lr: 1.0e-3, batch_size: 4, progress: false}}
""")
    return path


@pytest.fixture
def config_yaml(tmp_path, bert_dir) -> Path:
    return write_run(tmp_path, bert_dir)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, command: str, *needles: str) -> None:
    """Exit status 2 and stderr ending in one error line (after the run's own log lines) naming `needles`."""
    assert code == 2, f"expected exit status 2, got {code}: {err}"
    line = err.splitlines()[-1]
    assert line.startswith(f"prompttune {command}: error: ") and err.count("error:") == 1 and "Traceback" not in err, \
        f"expected one error line, got: {err}"
    for needle in needles:
        assert needle in line, f"the error should name {needle!r}: {line}"


def contents(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` by relative path, with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def leftovers(directory: Path) -> list[str]:
    """Staging folders, probe and lock files left anywhere under `directory`."""
    return [str(p) for p in directory.rglob("*") if p.name.startswith((STAGING_PREFIX, ".prompttune-probe-", LOCK))]


class Interrupted(Exception):
    pass


def interrupt_after_epoch(monkeypatch, epoch: int) -> None:
    """Make training stop right after the checkpoint of `epoch` is written, as a killed run would."""
    save = prompttune.training._save_checkpoint

    def save_then_stop(directory, done, *args):
        save(directory, done, *args)
        if done == epoch:
            raise Interrupted

    monkeypatch.setattr(prompttune.training, "_save_checkpoint", save_then_stop)


def interrupted_run(config_yaml: Path, out: Path, monkeypatch) -> None:
    """Leave in `out` the checkpoint of a 2-epoch run stopped after epoch 1."""
    with monkeypatch.context() as m:
        interrupt_after_epoch(m, 1)
        with pytest.raises(Interrupted):
            run_training(load_config(config_yaml), out, log=lambda _: None)


def fail_config_json_writes(monkeypatch) -> None:
    """Writing an artifact's config.json (the second file of its pair) fails: the disk is full."""
    dump = prompttune.files._dump_json

    def full_for_the_artifact(path: Path, obj) -> None:
        if path.name == "config.json":
            raise no_space()
        dump(path, obj)

    monkeypatch.setattr(prompttune.files, "_dump_json", full_for_the_artifact)


def fail_json_writes_in(monkeypatch, directory: Path) -> None:
    """Every JSON file written into `directory` (the second file of each pair) fails: the disk is full."""
    dump = prompttune.files._dump_json

    def full(path: Path, obj) -> None:
        if directory.resolve() in path.resolve().parents:
            raise no_space()
        dump(path, obj)

    monkeypatch.setattr(prompttune.files, "_dump_json", full)


# --- a finished run removes only what it wrote (issue 10, item 5) ---------------------------------


@pytest.mark.parametrize("checkpoint", [True, False])
def test_a_finished_run_removes_its_checkpoint_files_and_keeps_the_users(checkpoint, config_yaml, tmp_path, capsys):
    out = tmp_path / "task"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "notes.txt").write_text("mine")
    code, _, err = run(capsys, "train", config_yaml, "--out", out, "--set", f"train.checkpoint={str(checkpoint).lower()}")
    assert code == 0, err
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == ["notes.txt"]
    assert (out / "checkpoint" / "notes.txt").read_text() == "mine"
    assert not leftovers(out)


# --- nothing replaced without --overwrite; --resume only resumes (issue 10, item 6) ---------------


def test_train_refuses_to_replace_a_finished_artifact(config_yaml, tmp_path, capsys):
    out = tmp_path / "task"
    assert run(capsys, "train", config_yaml, "--out", out)[0] == 0
    before = contents(out)
    code, _, err = run(capsys, "train", config_yaml, "--out", out, "--set", "train.epochs=1")
    assert_one_line_error(code, err, "train", f"{out} already holds a task artifact (config.json, weights.safetensors, "
                          "eval.json, training.png); pass --overwrite to replace it")
    assert contents(out) == before


def test_overwrite_replaces_the_artifact_and_no_stale_file_survives(config_yaml, tmp_path, capsys):
    out = tmp_path / "task"
    assert run(capsys, "train", config_yaml, "--out", out)[0] == 0
    assert (out / "eval.json").is_file()
    code, _, err = run(capsys, "train", config_yaml, "--out", out, "--overwrite", "--set", "train.epochs=1",
                       "--set", "task.eval=null")
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["training"]["history"][-1]["epoch"] == 1
    assert not (out / "eval.json").exists(), "the replaced artifact's eval.json would describe the new one"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "training.png", "weights.safetensors"]


def test_resume_with_nothing_to_resume_is_an_error(config_yaml, tmp_path, capsys):
    out = tmp_path / "task"
    code, _, err = run(capsys, "train", config_yaml, "--out", out, "--resume")
    assert_one_line_error(code, err, "train", f"nothing to resume: {out / 'checkpoint'} holds no checkpoint")
    assert not out.exists(), "a directory the run created and left empty must be removed"


def test_an_interrupted_run_is_neither_started_over_nor_replaced_silently(config_yaml, tmp_path, capsys, monkeypatch):
    out = tmp_path / "task"
    interrupted_run(config_yaml, out, monkeypatch)
    before = contents(out)
    code, _, err = run(capsys, "train", config_yaml, "--out", out)
    assert_one_line_error(code, err, "train", f"{out} holds the checkpoint of an interrupted run (epoch 1 of 2 done)",
                          "--resume", "--overwrite")
    assert contents(out) == before
    code, _, err = run(capsys, "train", config_yaml, "--out", out, "--overwrite")
    assert code == 0, err
    assert "resuming" not in err and not (out / "checkpoint").exists()


def test_a_resume_says_what_it_resumes_and_ends_like_an_uninterrupted_run(config_yaml, tmp_path, capsys, monkeypatch):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run(capsys, "train", config_yaml, "--out", straight)[0] == 0
    interrupted_run(config_yaml, resumed, monkeypatch)
    code, _, err = run(capsys, "train", config_yaml, "--out", resumed, "--resume")
    assert code == 0, err
    assert f"resuming {resumed / 'checkpoint'}: epoch 1 of 2 done" in err
    a, b = (json.loads((d / "config.json").read_text())["training"] for d in (straight, resumed))
    assert a.pop("seconds") > 0 and b.pop("seconds") > 0, "the training time (of both parts of the resumed run)"
    assert a == b
    # (safetensors writes its metadata in varying order: compare the tensors, not the files' checksums)
    weights = [load_file(str(d / "weights.safetensors")) for d in (straight, resumed)]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.fixture
def adapter_artifact(tmp_path, gpt2_dir) -> Path:
    spec = TaskSpec(method="prompt-tuning", model=str(gpt2_dir), text_fields=["text"], labels=["0", "1"],
                    template="{soft:2} {text} it was {mask}", verbalizer={"0": ["bad"], "1": ["good"]})
    clf, fp = build_classifier(spec)
    return save_artifact(tmp_path / "task", spec, clf, fp)


def test_export_refuses_to_replace_an_adapter(adapter_artifact, tmp_path, capsys):
    out = tmp_path / "peft"
    assert run(capsys, "export", adapter_artifact, "--format", "peft", "--out", out)[0] == 0
    before = contents(out)
    code, _, err = run(capsys, "export", adapter_artifact, "--format", "peft", "--out", out)
    assert_one_line_error(code, err, "export", f"{out} already holds a PEFT adapter (adapter_model.safetensors, "
                          "adapter_config.json, prompttune_task.json); pass --overwrite")
    assert contents(out) == before
    code, _, err = run(capsys, "export", adapter_artifact, "--format", "peft", "--out", out, "--overwrite")
    assert code == 0, err


def fail_if_called(what: str):
    def called(*args, **kwargs):
        raise AssertionError(f"{what} before the output directory was checked")
    return called


def no_model_loads(monkeypatch) -> None:
    """Fail the test if a command loads a model or builds a classifier (the refusals come first)."""
    for module in (prompttune.search.run, prompttune.backbones):
        monkeypatch.setattr(module, "load_backbone", fail_if_called("a model was loaded"))
    monkeypatch.setattr(prompttune.recipes, "build_classifier", fail_if_called("a classifier was built"))


OTHER_OUTPUTS = [  # command, a file it writes, the mark prompttune puts in it, how the refusal names it
    ("fit-lm-head", "head.json", '{"parameters": {}}', "a fitted LM head (head.json)"),
    ("search", "search.json", '{"found": {}}', "a search's config.yaml and search.json (search.json)"),
    ("demo", "zero-shot/config.json", '{"prompttune_version": "0"}', "the task artifacts of an earlier demo (zero-shot/config.json)"),
]


def other_argv(command: str, config_yaml: Path, out: Path, data: Path) -> list:
    return {"fit-lm-head": ["fit-lm-head", "--data", data, "--held-out", "2", "--out", out],
            "search": ["search", "labels", config_yaml, "--out", out],
            "demo": ["demo", "--data", data, "--out", out]}[command]


@pytest.mark.parametrize("command, present, content, what", OTHER_OUTPUTS)
def test_other_writing_commands_refuse_to_replace_their_files_before_loading_a_model(command, present, content, what,
                                                                                      config_yaml, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    (out / present).parent.mkdir(parents=True)
    (out / present).write_text(content)
    no_model_loads(monkeypatch)
    code, _, err = run(capsys, *other_argv(command, config_yaml, out, tmp_path / "train.tsv"))
    assert_one_line_error(code, err, command, f"{out} already holds {what}; pass --overwrite to replace it")
    assert (out / present).read_text() == content


@pytest.mark.parametrize("command, present, content, what", [*OTHER_OUTPUTS, ("train", "config.json", "", ""),
                                                             ("export", "adapter_config.json", "", "")])
def test_files_prompttune_did_not_write_are_refused_even_with_overwrite(command, present, content, what, config_yaml,
                                                                        adapter_artifact, tmp_path, capsys, monkeypatch):
    """E.g. `train --out` pointed at a model's directory: its config.json is the model's, not an artifact's."""
    out = tmp_path / "out"
    (out / present).parent.mkdir(parents=True)
    (out / present).write_text('{"architectures": ["BertForMaskedLM"]}')
    no_model_loads(monkeypatch)
    argv = {"train": ["train", config_yaml, "--out", out],
            "export": ["export", adapter_artifact, "--format", "peft", "--out", out]}.get(command) \
        or other_argv(command, config_yaml, out, tmp_path / "train.tsv")
    code, _, err = run(capsys, *argv, "--overwrite")
    assert_one_line_error(code, err, command, f"{out} holds {Path(present).name if command != 'demo' else present} "
                                              "that prompttune did not write")
    assert (out / present).read_text() == '{"architectures": ["BertForMaskedLM"]}'


# --- one run per output directory (issue 10, item 7) ----------------------------------------------


@pytest.mark.parametrize("command", ["train", "export", "search", "fit-lm-head", "demo"])
def test_a_second_run_into_a_directory_in_use_fails_at_once_naming_the_first(command, config_yaml, adapter_artifact,
                                                                             tmp_path, capsys, monkeypatch):
    out, data = tmp_path / "out", tmp_path / "train.tsv"
    no_model_loads(monkeypatch)
    argv = {"train": ["train", config_yaml, "--out", out],
            "export": ["export", adapter_artifact, "--format", "peft", "--out", out],
            "search": ["search", "labels", config_yaml, "--out", out],
            "fit-lm-head": ["fit-lm-head", "--data", data, "--held-out", "2", "--out", out],
            "demo": ["demo", "--data", data, "--out", out]}[command]
    with claim_output(out):
        code, _, err = run(capsys, *argv, "--overwrite")
    assert_one_line_error(code, err, command, f"{out} is in use by another prompttune run (pid {os.getpid()})")
    assert not out.exists(), "the first run's directory, empty when it ends, is removed"


def test_train_holds_its_directory_for_the_whole_run(config_yaml, tmp_path, monkeypatch):
    out, refused = tmp_path / "task", []
    real_train = prompttune.recipes.train

    def train_while_another_run_tries(*args, **kwargs):
        with pytest.raises(OutputError, match="is in use by another prompttune run") as info:
            with claim_output(out, overwrite=True):
                pass
        refused.append(str(info.value))
        return real_train(*args, **kwargs)

    monkeypatch.setattr(prompttune.recipes, "train", train_while_another_run_tries)
    run_training(load_config(config_yaml), out, log=lambda _: None)
    assert len(refused) == 1 and not (out / LOCK).exists()


HOLDER = """
import sys, time
from prompttune.outputs import claim_output
with claim_output(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_killed_runs_lock_is_released_by_the_kernel(tmp_path):
    out = tmp_path / "out"
    holder = held_by_another_process(out)
    try:
        with pytest.raises(OutputError, match=rf"is in use by another prompttune run \(pid {holder.pid}\)"):
            with claim_output(out):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with claim_output(out) as held:  # the lock file is still there; its lock is not
        assert (held / LOCK).read_text() == f"{os.getpid()}\n"
    assert not (out / LOCK).exists()


def test_deleting_the_pid_file_by_hand_unlocks_nothing(tmp_path):
    """The lock is on the directory itself; `.prompttune.lock` only tells the pid."""
    out = tmp_path / "out"
    with claim_output(out):
        (out / LOCK).unlink()
        with pytest.raises(OutputError, match="is in use by another prompttune run"):
            with claim_output(out, overwrite=True):
                pass


def held_by_another_process(directory: Path) -> subprocess.Popen:
    """A process holding `directory` (HOLDER) until it is killed."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_run_inside_or_around_a_directory_in_use_is_refused(tmp_path):
    """A run into `runs/n/checkpoint` while `runs/n` is being written would clean up the staging
    folders of the run that holds it; a run into `runs/` would hold what another run writes."""
    outer, inner = tmp_path / "runs" / "n", tmp_path / "runs" / "n" / "checkpoint"
    for held, claimed, message in ((outer, inner, rf"{inner} is inside {outer}, which another prompttune run \(pid \d+\)"),
                                   (inner, outer, rf"{outer} is in use by another prompttune run .*in a folder inside it")):
        holder = held_by_another_process(held)
        try:
            with pytest.raises(OutputError, match=message):
                with claim_output(claimed):
                    pass
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait()
    with claim_output(tmp_path / "runs" / "a"), claim_output(tmp_path / "runs" / "b"):
        pass  # siblings do not block each other


def test_an_empty_output_directory_is_refused(tmp_path):
    with pytest.raises(OutputError, match="the output directory is empty text"):
        with claim_output(""):
            pass


# --- files that belong together are replaced together (issue 10, item 8) --------------------------


@pytest.mark.parametrize("failing", [0, 1])
def test_write_together_replaces_all_files_or_none(failing, tmp_path, monkeypatch):
    old = {"a.txt": b"old a", "b.json": b"old b"}
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    dumps = [prompttune.files._dump_text, prompttune.files._dump_json]

    def fail(i):
        def write(path, content):
            if i == failing:
                raise no_space()
            dumps[i](path, content)
        return write

    monkeypatch.setattr(prompttune.files, "_dump_text", fail(0))
    monkeypatch.setattr(prompttune.files, "_dump_json", fail(1))
    with pytest.raises(OutputError, match=f"cannot write {tmp_path / list(old)[failing]}: No space left on device"):
        write_together(tmp_path, {"a.txt": text_writer("new a"), "b.json": json_writer("new b")})
    assert contents(tmp_path) == old and not leftovers(tmp_path)


def test_a_failed_write_into_a_new_directory_leaves_no_directory(tmp_path, monkeypatch):
    fail_json_writes_in(monkeypatch, tmp_path)
    with pytest.raises(OutputError, match="No space left on device"):
        write_together(tmp_path / "new" / "deeper", {"x.json": json_writer({})})
    assert list(tmp_path.iterdir()) == []


def save_a_pair(kind: str, directory: Path, bert_dir: Path, gpt2_dir: Path, config_yaml: Path, seed: int) -> None:
    """Write `kind`'s pair of files into `directory`; another `seed` writes other contents."""
    if kind == "artifact":
        spec = TaskSpec(method="p-tuning", model=str(bert_dir), text_fields=["text"], labels=["0", "1"],
                        template="{soft:2} {text} it was {mask} .", verbalizer={"0": ["bad"], "1": ["good"]},
                        options={"encoder": "lstm"})
        torch.manual_seed(seed)
        clf, fp = build_classifier(spec)
        save_artifact(directory, spec, clf, fp)
    elif kind == "checkpoint":
        spec = TaskSpec(method="prompt-tuning", model=str(bert_dir), text_fields=["text"], labels=["0", "1"],
                        template="{soft:2} {text} it was {mask} .", verbalizer={"0": ["bad"], "1": ["good"]})
        clf, _ = build_classifier(spec)
        train(clf, EXAMPLES, None, TrainConfig(epochs=1, lr=0.1 * (seed + 1), batch_size=4, progress=False),
              checkpoint_dir=directory)
    elif kind == "lm_head":
        from prompttune.lm_head import save_lm_head
        from prompttune.backbones import load_backbone

        model = load_backbone(str(bert_dir)).model
        torch.manual_seed(seed)
        torch.nn.init.normal_(model.cls.predictions.transform.dense.weight)
        save_lm_head(model, directory, {"seed": seed})
    elif kind == "search":
        from prompttune.search.run import run_search

        run_search("labels", config_yaml, directory, overrides=[f"task.seed={seed}"], overwrite=True, log=lambda _: None,
                   per_class=3, assignments=4)
    else:
        spec = TaskSpec(method="prompt-tuning", model=str(gpt2_dir), text_fields=["text"], labels=["0", "1"],
                        template="{soft:2} {text} it was {mask}", verbalizer={"0": ["bad"], "1": ["good"]})
        torch.manual_seed(seed)
        clf, fp = build_classifier(spec)
        artifact = save_artifact(directory.parent / f"task-{seed}", spec, clf, fp)
        from prompttune.export import export_peft

        export_peft(artifact, directory, overwrite=True)


@pytest.mark.parametrize("kind, second", [
    ("artifact", "config.json"), ("checkpoint", "state.json"), ("lm_head", "head.json"), ("search", "search.json"),
    ("export", "adapter_config.json"),
])
def test_a_full_disk_while_replacing_a_pair_leaves_the_old_pair_byte_identical(kind, second, bert_dir, gpt2_dir,
                                                                               config_yaml, tmp_path, monkeypatch):
    out = tmp_path / "out"
    save_a_pair(kind, out, bert_dir, gpt2_dir, config_yaml, seed=0)
    before = contents(out)
    assert second in before
    fail_json_writes_in(monkeypatch, out)
    with pytest.raises(OutputError, match=f"cannot write {out / second}: No space left on device"):
        save_a_pair(kind, out, bert_dir, gpt2_dir, config_yaml, seed=1)
    assert contents(out) == before, f"{kind}: a failed save changed the files it was replacing"
    assert not leftovers(out)
    monkeypatch.undo()
    save_a_pair(kind, out, bert_dir, gpt2_dir, config_yaml, seed=1)
    assert contents(out) != before, f"{kind}: the test proves nothing if the second save writes the same bytes"


def test_a_reader_during_a_save_sees_the_new_pair_not_a_mix(bert_dir, gpt2_dir, config_yaml, tmp_path, monkeypatch):
    """Between the two renames the directory holds the new weights and the old config: a reader there
    reads the config again and gets the new pair (the writer renames the config right after)."""
    out = tmp_path / "out"
    save_a_pair("artifact", out, bert_dir, gpt2_dir, config_yaml, seed=0)
    replace, seen, readers = os.replace, [], []

    def replace_with_a_reader_between(src, dst):
        replace(src, dst)
        if Path(dst).name == "weights.safetensors":
            readers.append(threading.Thread(target=lambda: seen.append(read_saved(out)[0]["weights"]["sha256"])))
            readers[-1].start()
            time.sleep(0.05)  # the reader finds the new weights beside the old config

    monkeypatch.setattr(prompttune.files.os, "replace", replace_with_a_reader_between)
    save_a_pair("artifact", out, bert_dir, gpt2_dir, config_yaml, seed=1)
    readers.pop().join()
    assert seen == [file_sha256(out / "weights.safetensors")]


def test_a_checkpoint_records_its_tensors_checksum_and_a_mismatched_pair_is_refused(bert_dir, gpt2_dir, config_yaml,
                                                                                    tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    save_a_pair("checkpoint", a, bert_dir, gpt2_dir, config_yaml, seed=0)
    save_a_pair("checkpoint", b, bert_dir, gpt2_dir, config_yaml, seed=1)
    state = json.loads((a / "state.json").read_text())
    assert state["tensors_sha256"] == file_sha256(a / "state.safetensors")
    shutil.copy(b / "state.safetensors", a / "state.safetensors")
    spec = TaskSpec(method="prompt-tuning", model=str(bert_dir), text_fields=["text"], labels=["0", "1"],
                    template="{soft:2} {text} it was {mask} .", verbalizer={"0": ["bad"], "1": ["good"]})
    clf, _ = build_classifier(spec)
    with pytest.raises(ArtifactError, match="state.safetensors does not match the checksum in state.json"):
        train(clf, EXAMPLES, None, TrainConfig(epochs=1, lr=0.1, batch_size=4, progress=False), checkpoint_dir=a,
              resume=True)


# --- resume only the same run (issue 10, item 9) --------------------------------------------------


@pytest.mark.parametrize("override, named", [
    ("train.lr=0.002", "train.lr: 0.001 → 0.002"),
    ("train.seed=7", "train.seed: 42 → 7"),
    ("train.epochs=3", "train.epochs: 2 → 3"),
    ("task.shots=1", "task.shots: 2 → 1, data.train: \"4 examples"),
    ("prompt.template={sentence} so it was {mask} .",
     'prompt.template: "{sentence} it was {mask} ." → "{sentence} so it was {mask} ."'),
    ("method.name=p-tuning-v2", 'method.name: "prompt-finetune" → "p-tuning-v2"'),
    ("train.early_stopping_patience=1", "train.early_stopping_patience: (none) → 1"),
])
def test_resuming_with_another_config_is_refused_naming_what_changed(override, named, config_yaml, tmp_path, capsys,
                                                                    monkeypatch):
    out = tmp_path / "task"
    interrupted_run(config_yaml, out, monkeypatch)
    before = contents(out)
    no_model_loads(monkeypatch)
    code, _, err = run(capsys, "train", config_yaml, "--out", out, "--resume", "--set", override)
    assert_one_line_error(code, err, "train", f"cannot resume {out / 'checkpoint'}: it was written by another run ({named}")
    assert contents(out) == before


def test_settings_that_cannot_change_what_is_trained_may_differ_on_resume(config_yaml, tmp_path, capsys, monkeypatch):
    assert RESUME_TOLERATED == ("train.progress", "train.eval_batch_size", "train.checkpoint", "train.report_to",
                                "train.gradient_checkpointing", "device_map", "max_memory", "task.eval",
                                "decoding.max_new_tokens", "decoding.num_beams", "decoding.stop")
    out = tmp_path / "task"
    interrupted_run(config_yaml, out, monkeypatch)
    code, _, err = run(capsys, "train", config_yaml, "--out", out, "--resume", "--set", "train.progress=true",
                       "--set", "train.eval_batch_size=3", "--set", "train.checkpoint=false", "--set", "task.eval=null",
                       "--set", "train.report_to=tensorboard", "--set", "decoding.num_beams=2",
                       "--set", "decoding.stop=[.]", "--set", "decoding.max_new_tokens=8",
                       "--set", "train.gradient_checkpointing=true", "--set", "device_map=auto")
    assert code == 0, err
    assert "resuming" in err and (out / "config.json").is_file() and not (out / "eval.json").exists()
    assert list((out / "logs" / "train").glob("events.out.tfevents.*")), "the resumed part is logged"


def prompt_tuning(bert_dir, template="{soft:2} {text} it was {mask} ."):
    spec = TaskSpec(method="prompt-tuning", model=str(bert_dir), text_fields=["text"], labels=["0", "1"],
                    template=template, verbalizer={"0": ["bad"], "1": ["good"]})
    return build_classifier(spec)[0]


@pytest.mark.parametrize("change, named", [
    ("config", "train.lr: 0.1 → 0.2"),
    ("template", "parameters.soft.vectors: [2, 32] → [3, 32]"),
    ("data", "data.train: \"8 examples, sha256"),
])
def test_library_train_checks_what_it_knows_on_resume(change, named, bert_dir, tmp_path):
    config = TrainConfig(epochs=2, lr=0.1, batch_size=4, progress=False)
    train(prompt_tuning(bert_dir), EXAMPLES, None, config, checkpoint_dir=tmp_path)
    clf = prompt_tuning(bert_dir, "{soft:3} {text} it was {mask} ." if change == "template" else "{soft:2} {text} it was {mask} .")
    examples = EXAMPLES[::-1] if change == "data" else EXAMPLES
    with pytest.raises(ConfigError, match=r"it was written by another run \(.*" + re.escape(named)):
        train(clf, examples, None, dataclasses.replace(config, lr=0.2) if change == "config" else config,
              checkpoint_dir=tmp_path, resume=True)


def test_library_resume_without_a_checkpoint_is_an_error(bert_dir, tmp_path):
    config = TrainConfig(epochs=1, lr=0.1, batch_size=4, progress=False)
    with pytest.raises(ConfigError, match=f"nothing to resume: {tmp_path} holds no checkpoint"):
        train(prompt_tuning(bert_dir), EXAMPLES, None, config, checkpoint_dir=tmp_path, resume=True)


# --- unwritable and full output directories (issue 10, item 10) -----------------------------------


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory anyway; the probe is tested by "
                                              "simulation in test_an_unwritable_directory_is_one_line_before_the_model_loads")
def test_a_read_only_directory_is_refused_before_the_model_loads(config_yaml, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    no_model_loads(monkeypatch)
    try:
        code, _, err = run(capsys, "train", config_yaml, "--out", out)
    finally:
        out.chmod(0o700)
    assert_one_line_error(code, err, "train", f"cannot write in {out}: Permission denied")


def test_an_unwritable_directory_is_one_line_before_the_model_loads(config_yaml, tmp_path, capsys, monkeypatch):
    no_model_loads(monkeypatch)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(prompttune.outputs.tempfile, "mkstemp", read_only)
    code, _, err = run(capsys, "train", config_yaml, "--out", tmp_path / "task")
    monkeypatch.undo()
    assert_one_line_error(code, err, "train", f"cannot write in {tmp_path / 'task'}: Read-only file system")
    assert not (tmp_path / "task").exists()


def test_an_output_path_under_a_file_is_one_line(config_yaml, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    code, _, err = run(capsys, "train", config_yaml, "--out", tmp_path / "file" / "task")
    assert_one_line_error(code, err, "train", f"cannot create {tmp_path / 'file' / 'task'}: Not a directory")


@pytest.mark.parametrize("checkpoint, times", [(True, 9), (False, 1)])
def test_a_full_disk_is_refused_before_training_with_the_bytes_needed_and_free(checkpoint, times, config_yaml, bert_dir,
                                                                               tmp_path, capsys, monkeypatch):
    """The estimate: the artifact (at most the trainable parameters, T bytes) and, when checkpointing,
    two checkpoints of 4 T each (weights, Adam's two moments, the best epoch's copy), old and new."""
    monkeypatch.setattr(prompttune.outputs, "free_bytes", lambda directory: 1000)
    monkeypatch.setattr(prompttune.recipes, "train", lambda *a, **k: pytest.fail("training started"))
    out = tmp_path / "task"
    code, _, err = run(capsys, "train", config_yaml, "--out", out, "--set", f"train.checkpoint={str(checkpoint).lower()}")
    spec = TaskSpec(method="prompt-finetune", model=str(bert_dir), text_fields=["sentence"], labels=["0", "1"],
                    template="{sentence} it was {mask} .", verbalizer={"0": ["bad"], "1": ["good"]})
    needed = times * trainable_bytes(build_classifier(spec)[0])
    assert_one_line_error(code, err, "train", f"{out} has 1,000 bytes free; this run writes up to {needed:,} bytes")
    assert not out.exists(), "the directory this run created must not be left behind"


def test_a_full_disk_while_writing_is_one_line_and_leaves_nothing_half_written(config_yaml, tmp_path, capsys, monkeypatch):
    def full(*args):
        raise no_space()

    monkeypatch.setattr(prompttune.files, "_dump_safetensors", full)
    out = tmp_path / "task"
    code, _, err = run(capsys, "train", config_yaml, "--out", out)
    assert_one_line_error(code, err, "train", f"cannot write {out / 'checkpoint' / 'state.safetensors'}: "
                          "No space left on device")
    assert not out.exists(), "nothing was written: the run's directory must be gone"


def test_safetensors_own_disk_errors_are_one_line_too(config_yaml, tmp_path, capsys, monkeypatch):
    """safetensors reports a full disk as a SafetensorError, not an OSError."""
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(prompttune.files, "save_file", full)
    out = tmp_path / "task"
    code, _, err = run(capsys, "train", config_yaml, "--out", out)
    assert_one_line_error(code, err, "train", f"cannot write {out / 'checkpoint' / 'state.safetensors'}: "
                          "No space left on device")
    assert not out.exists(), "nothing was written: the run's directory must be gone"


def test_a_failed_save_keeps_the_old_artifacts_eval_json(config_yaml, tmp_path, capsys, monkeypatch):
    """eval.json describes the artifact beside it: it goes only once a new artifact is in place."""
    out = tmp_path / "task"
    code, _, err = run(capsys, "train", config_yaml, "--out", out)
    assert code == 0, err
    before = {name: (out / name).read_bytes() for name in ("config.json", "weights.safetensors", "eval.json", "training.png")}
    fail_config_json_writes(monkeypatch)
    code, _, err = run(capsys, "train", config_yaml, "--out", out, "--overwrite", "--set", "train.checkpoint=false")
    assert code == 2, err
    assert {name: (out / name).read_bytes() for name in before} == before, "the old artifact and its eval.json must stay"


def test_a_full_disk_at_the_final_save_keeps_the_checkpoint_to_resume_from(config_yaml, tmp_path, capsys, monkeypatch):
    out = tmp_path / "task"
    with monkeypatch.context() as m:
        fail_config_json_writes(m)
        code, _, err = run(capsys, "train", config_yaml, "--out", out)
    assert_one_line_error(code, err, "train", f"cannot write {out / 'config.json'}: No space left on device")
    assert sorted(contents(out)) == ["checkpoint/state.json", "checkpoint/state.safetensors"] and not leftovers(out)
    code, _, err = run(capsys, "train", config_yaml, "--out", out, "--resume")
    assert code == 0 and "epoch 2 of 2 done" in err, err
    assert sorted(contents(out)) == ["config.json", "eval.json", "training.png", "weights.safetensors"]


def test_written_files_get_the_mode_any_new_file_of_the_user_gets(tmp_path):
    """Saved files follow the umask like the user's own files (safetensors alone writes 0600)."""
    from prompttune.files import json_writer, safetensors_writer, write_together

    old = os.umask(0o022)
    try:
        write_together(tmp_path / "a", {"w.safetensors": safetensors_writer({"x": torch.zeros(2)}), "c.json": json_writer({})})
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (tmp_path / "a").iterdir()}
    assert modes == {"w.safetensors": "0o644", "c.json": "0o644"}, f"expected 0644 under umask 022, got {modes}"


# --- found by the review ----------------------------------------------------------------------


@pytest.mark.parametrize(("edit", "named"), [
    (lambda s: {k: v for k, v in s.items() if k != "epoch"}, "epoch (missing, expected int)"),
    (lambda s: {**s, "result": "x"}, "result (str, expected dict)"),
    (lambda s: {**s, "result": {k: v for k, v in s["result"].items() if k != "steps"}}, "result.steps (missing, expected int)"),
])
def test_a_checkpoint_state_edited_by_hand_is_one_line(edit, named, config_yaml, tmp_path, capsys, monkeypatch):
    out = tmp_path / "task"
    interrupted_run(config_yaml, out, monkeypatch)
    state_path = out / "checkpoint" / "state.json"
    state_path.write_text(json.dumps(edit(json.loads(state_path.read_text()))))
    for extra in (["--resume"], []):
        code, _, err = run(capsys, "train", config_yaml, "--out", out, *extra)
        assert_one_line_error(code, err, "train", f"{state_path} is malformed: {named}; it cannot be resumed: start over")


def test_a_resume_with_other_data_is_refused_before_it_says_it_resumes(config_yaml, tmp_path, capsys, monkeypatch):
    out = tmp_path / "task"
    interrupted_run(config_yaml, out, monkeypatch)
    data = config_yaml.parent / "train.tsv"
    data.write_text(data.read_text().replace("great", "grand"))
    code, _, err = run(capsys, "train", config_yaml, "--out", out, "--resume")
    assert_one_line_error(code, err, "train", "it was written by another run (data.")
    assert "resuming" not in err, f"a refused resume must not first say it resumes: {err}"


def test_staging_folders_a_killed_checkpoint_save_left_are_removed_by_the_next_run(config_yaml, tmp_path, capsys,
                                                                                   monkeypatch):
    out = tmp_path / "task"
    interrupted_run(config_yaml, out, monkeypatch)
    (out / "checkpoint" / f"{STAGING_PREFIX}killed").mkdir()
    code, _, err = run(capsys, "train", config_yaml, "--out", out, "--resume")
    assert code == 0, err
    assert not leftovers(out), leftovers(out)


def test_an_interrupted_train_says_where_its_checkpoint_is_and_how_to_resume(config_yaml, tmp_path, capsys, monkeypatch):
    save = prompttune.training._save_checkpoint

    def save_then_ctrl_c(directory, done, *args):
        save(directory, done, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(prompttune.training, "_save_checkpoint", save_then_ctrl_c)
    out = tmp_path / "my task"  # the command printed must run as printed: quoted, with the run's --set options
    code, _, err = run(capsys, "train", config_yaml, "--out", out, "--set", "train.lr=0.02")
    assert code == 130, err
    assert err.splitlines()[-1] == (f"interrupted; the last finished epoch is kept in {out / 'checkpoint'}: continue with "
                                    f"prompttune train {config_yaml} --out '{out}' --set train.lr=0.02 --resume"), err
    monkeypatch.undo()
    code, _, err = run(capsys, "train", config_yaml, "--out", out, "--set", "train.lr=0.02", "--resume")
    assert code == 0, err

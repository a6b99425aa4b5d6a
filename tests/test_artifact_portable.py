"""A task artifact is self-contained and says how it was made.

- It carries its fitted MLM head (`lm_head.safetensors` + `lm_head.json`), named relative to the
  artifact: moved elsewhere, with the head folder it was trained on deleted, it loads and predicts
  bit-identically, alone, in a task pool and through `export`. A changed head copy is refused by its
  checksum in one line. Artifacts that recorded the head's absolute path still load.
- `config.json` records the training: the train.* settings, the few-shot sample, each data file's
  path and SHA-256, the library versions, the wall time and the per-epoch curve; `read_config`
  refuses a malformed record in one line naming the dotted key.
- It stores only the method options that differ from their defaults; loading gets the rest.
- Its files get the mode any new file of the user gets (0644 under umask 022).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
from pathlib import Path

import peft
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from prompttune import TaskSpec, build_classifier, load_artifact, save_artifact
from prompttune.artifacts import read_config, spec_from_config
from prompttune.backbones import load_backbone
from prompttune.cli import main
from prompttune.config import load_config
from prompttune.errors import ArtifactError, ModelError
from prompttune.evaluation import predict_scores
from prompttune.lm_head import save_lm_head
from prompttune.methods import MethodOptions
from prompttune.recipes import run_training
from prompttune.serving import TaskPool

POS = ["this movie was great fun", "a very good film", "fun and good", "great film , very fun", "good fun movie"]
NEG = ["this movie was terrible", "a very bad film", "boring and bad", "awful film , very boring", "bad boring movie"]
PROBES = [{"sentence": s} for s in ("a good film", "very boring", "great fun movie", "an awful plot")]
HEAD_FILES = ("lm_head.safetensors", "lm_head.json")


def fitted_head(bert_dir: Path, directory: Path) -> Path:
    """A head that stands in for a fitted one: the tiny BERT's own, changed, saved as `fit-lm-head` saves."""
    model = load_backbone(str(bert_dir)).model
    torch.manual_seed(7)
    torch.nn.init.normal_(model.cls.predictions.transform.dense.weight, std=0.5)
    save_lm_head(model, directory, {"stand_in": True})
    return directory


@pytest.fixture(scope="module")
def made(bert_dir, tmp_path_factory) -> dict:
    """A p-tuning task trained by `run_training` on a fitted head, its scores, and then the head
    folder deleted: every test works on an artifact whose original head is gone."""
    root = tmp_path_factory.mktemp("portable")
    head = fitted_head(bert_dir, root / "heads" / "minilm")
    data = root / "data" / "train.tsv"
    data.parent.mkdir()
    data.write_text("label\tsentence\n" + "".join(f"1\t{s}\n" for s in POS) + "".join(f"0\t{s}\n" for s in NEG))
    cfg = load_config(raw={
        "model": str(bert_dir), "lm_head": str(head),
        "task": {"train": str(data), "eval": str(data), "text_fields": ["sentence"], "shots": 2, "seed": 3},
        "prompt": {"template": "{soft:2} {sentence} it was {mask} .", "verbalizer": {"0": "bad", "1": "good"}},
        "method": {"name": "p-tuning", "encoder": "mlp", "prompt_length": 20},  # prompt_length: its default
        "train": {"epochs": 2, "lr": 1e-2, "batch_size": 4, "seed": 5, "weight_decay": 0.01, "warmup_ratio": 0.1,
                  "max_grad_norm": 0.5, "max_length": 48, "progress": False},
    })
    artifact = root / "runs" / "sst2"
    run_training(cfg, artifact, log=lambda _: None)
    clf, _ = load_artifact(artifact)
    reference = predict_scores(clf, PROBES)
    bare_spec = dataclasses.replace(spec_from_config(read_config(artifact), artifact), lm_head=None)
    bare, _ = build_classifier(bare_spec)
    assert not torch.equal(predict_scores(bare, PROBES), reference), "the test proves nothing if the head changes nothing"
    shutil.rmtree(head)
    return {"artifact": artifact, "scores": reference, "cfg": cfg, "data": data, "head": head}


def copy_of(made: dict, tmp_path: Path, name: str = "copy") -> Path:
    return Path(shutil.copytree(made["artifact"], tmp_path / name))


def edit_config(directory: Path, edit) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config, indent=2))


# --- the head travels with the artifact -------------------------------------------------------------


def test_a_moved_artifact_whose_head_folder_is_gone_predicts_identically(made, tmp_path):
    moved = tmp_path / "elsewhere" / "deeper" / "task"
    moved.parent.mkdir(parents=True)
    shutil.move(copy_of(made, tmp_path), moved)
    assert not made["head"].exists()
    config = read_config(moved)
    assert config["lm_head"] == "lm_head.safetensors"
    assert sorted(p.name for p in moved.iterdir()) == sorted(["config.json", "eval.json", *HEAD_FILES, "training.png", "weights.safetensors"])
    assert str(made["head"]) not in (moved / "config.json").read_text(), "config.json still names the head's folder"
    clf, _ = load_artifact(moved)
    assert torch.equal(predict_scores(clf, PROBES), made["scores"])
    assert "lm_head_sha256" in config["backbone"]  # the head the task was made on (checked by the load above)


def test_a_pool_loads_the_moved_task_with_its_head(made, tmp_path):
    moved = copy_of(made, tmp_path)
    pool = TaskPool(device="cpu")  # the backbone (and its head) of the first task added
    pool.add(moved, name="sst2")
    scores = torch.stack(pool.scores_mixed([("sst2", ex) for ex in PROBES]))
    assert torch.allclose(scores, made["scores"], atol=1e-5)
    assert pool.backbone.lm_head == str(moved / "lm_head.safetensors")


def test_an_export_carries_the_head_too(bert_dir, made, tmp_path):
    task = copy_of(made, tmp_path)
    spec = TaskSpec(method="p-tuning-v2", model=str(bert_dir), text_fields=["sentence"], labels=["0", "1"],
                    template="{sentence} it was {mask} .", verbalizer={"0": ["bad"], "1": ["good"]},
                    lm_head=str(task / "lm_head.safetensors"), max_length=48, options={"prompt_length": 3})
    torch.manual_seed(0)
    clf, fp = build_classifier(spec)
    with torch.no_grad():
        clf.deep.prefix.normal_(std=0.5)  # a prefix that changes the outputs
    save_artifact(tmp_path / "deep", spec, clf, fp)
    from prompttune.export import export_peft

    out = export_peft(tmp_path / "deep", tmp_path / "peft")  # PEFT's outputs checked on the base with the head
    task_file = json.loads((out / "prompttune_task.json").read_text())
    assert task_file["lm_head"] == "lm_head.safetensors"
    assert (out / "lm_head.safetensors").read_bytes() == (task / "lm_head.safetensors").read_bytes()


def test_a_changed_head_copy_is_refused_by_its_checksum_in_one_line(made, tmp_path, capsys):
    task = copy_of(made, tmp_path)
    tensors = load_file(str(task / "lm_head.safetensors"))
    tensors["cls.predictions.bias"] = tensors["cls.predictions.bias"] + 1.0
    save_file(tensors, str(task / "lm_head.safetensors"))
    with pytest.raises(ArtifactError, match="lm_head.safetensors does not match the checksum in lm_head.json") as e:
        load_artifact(task)
    assert "\n" not in str(e.value)
    code = main(["predict", str(task), "--text", "a good film"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "does not match the checksum in lm_head.json" in err, err
    # Changed together with its recorded checksum, the head is still not the one the task was made on.
    info = json.loads((task / "lm_head.json").read_text())
    info["weights_sha256"] = hashlib.sha256((task / "lm_head.safetensors").read_bytes()).hexdigest()
    (task / "lm_head.json").write_text(json.dumps(info))
    with pytest.raises(ModelError, match="lm_head_sha256: artifact was made for") as e:
        load_artifact(task)
    assert "\n" not in str(e.value)


def test_an_artifact_copied_without_its_head_names_the_missing_file(made, tmp_path):
    task = copy_of(made, tmp_path)
    (task / "lm_head.safetensors").unlink()
    with pytest.raises(ArtifactError, match=f"lm_head {task / 'lm_head.safetensors'} does not exist"):
        load_artifact(task)


def test_an_old_artifact_that_names_its_head_by_absolute_path_still_loads(made, tmp_path):
    task = copy_of(made, tmp_path)
    head = tmp_path / "old-heads" / "minilm"  # what fit-lm-head wrote, where the old artifact points
    head.mkdir(parents=True)
    (task / "lm_head.safetensors").rename(head / "head.safetensors")
    (task / "lm_head.json").rename(head / "head.json")
    edit_config(task, lambda c: c.update(lm_head=str(head)))
    clf, config = load_artifact(task)
    assert config["lm_head"] == str(head)
    assert torch.equal(predict_scores(clf, PROBES), made["scores"])
    pool = TaskPool(device="cpu")
    pool.add(task, name="old")
    assert torch.allclose(torch.stack(pool.scores_mixed([("old", ex) for ex in PROBES])), made["scores"], atol=1e-5)


def test_resaving_a_loaded_task_copies_its_head_and_a_task_without_one_drops_it(bert_dir, made, tmp_path):
    task = copy_of(made, tmp_path)
    clf, config = load_artifact(task)
    spec = spec_from_config(config, task)
    save_artifact(tmp_path / "again", spec, clf, config["backbone"])
    save_artifact(task, spec, clf, config["backbone"])  # into the folder it reads the head from
    for directory in (tmp_path / "again", task):
        assert (directory / "lm_head.safetensors").read_bytes() == (made["artifact"] / "lm_head.safetensors").read_bytes()
        assert torch.equal(predict_scores(load_artifact(directory)[0], PROBES), made["scores"])
    plain = TaskSpec(method="zero-shot", model=str(bert_dir), text_fields=["sentence"], labels=["0", "1"],
                     template="{sentence} it was {mask} .", verbalizer={"0": ["bad"], "1": ["good"]})
    save_artifact(task, plain, *build_classifier(plain))
    assert not any((task / name).exists() for name in HEAD_FILES), "a replaced task's head copy stayed"
    assert read_config(task)["lm_head"] is None


def test_a_full_disk_while_replacing_a_task_with_a_head_leaves_all_its_files_as_they_were(bert_dir, made, tmp_path,
                                                                                           monkeypatch):
    import prompttune.files
    from prompttune.errors import OutputError

    task = copy_of(made, tmp_path)
    before = {p.name: p.read_bytes() for p in task.iterdir()}
    spec = TaskSpec(method="prompt-tuning", model=str(bert_dir), text_fields=["sentence"], labels=["0", "1"],
                    template="{soft:2} {sentence} it was {mask} .", verbalizer={"0": ["bad"], "1": ["good"]},
                    lm_head=str(made["artifact"] / "lm_head.safetensors"))
    clf, fp = build_classifier(spec)
    dump = prompttune.files._dump_json

    def full_at_the_config(path: Path, obj) -> None:  # the head copy and the weights are staged by then
        if path.name == "config.json":
            raise OSError(28, "No space left on device")
        dump(path, obj)

    monkeypatch.setattr(prompttune.files, "_dump_json", full_at_the_config)
    with pytest.raises(OutputError, match="No space left on device"):
        save_artifact(task, spec, clf, fp)
    assert {p.name: p.read_bytes() for p in task.iterdir()} == before


# --- the training record ------------------------------------------------------------------------------


def test_config_json_records_how_the_task_was_trained(made):
    training = read_config(made["artifact"])["training"]
    cfg, data = made["cfg"], made["data"]
    assert training["train"] == {"epochs": 2, "lr": 1e-2, "batch_size": 4, "max_length": 48, "weight_decay": 0.01,
                                 "warmup_ratio": 0.1, "max_grad_norm": 0.5, "seed": 5,
                                 "early_stopping_patience": None, "mixed_precision": "no"}
    assert training["sample"] == {"shots": 2, "seed": 3}
    sha = hashlib.sha256(data.read_bytes()).hexdigest()
    assert training["data"]["train"]["path"] == training["data"]["eval"]["path"] == str(data.resolve())
    assert training["data"]["train"]["sha256"] == training["data"]["eval"]["sha256"] == sha
    assert training["data"]["dev"]["path"] is None and training["data"]["dev"]["sha256"] is None  # drawn from train
    assert training["data"]["train"]["examples"].startswith("4 examples, sha256 ")  # 2 shots × 2 classes
    assert training["data"]["eval"]["examples"].startswith("10 examples, sha256 ")
    assert training["versions"] == {"prompttune": __import__("prompttune").__version__,
                                    "python": platform.python_version(), "torch": torch.__version__,
                                    "transformers": transformers.__version__, "peft": peft.__version__,
                                    "accelerate": __import__("accelerate").__version__,
                                    "safetensors": __import__("safetensors").__version__}
    assert training["seconds"] > 0
    assert [r["epoch"] for r in training["history"]] == [1, 2] and all("dev_loss" in r for r in training["history"])
    assert training["best_epoch"] in (1, 2) and cfg.train.epochs == 2


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c["training"]["data"]["train"].update(sha256="abc"),
     "key 'training.data.train.sha256' holds \"abc\", expected 64 hex digits or null"),
    (lambda c: c["training"]["train"].update(lr=-1), "key 'training.train' holds"),
    (lambda c: c["training"]["train"].update(lr=-1), "train.lr must be a finite number > 0, got -1"),
    (lambda c: c["training"]["train"].update(epoch=2), "unknown key(s) ['epoch']"),
    (lambda c: c["training"].update(sample={"shots": 0, "seed": 1}), "key 'training.sample' holds"),
    (lambda c: c["training"].update(seconds="long"), "key 'training.seconds' holds \"long\""),
    (lambda c: c["training"].update(versions=["torch"]), "key 'training.versions'"),
    (lambda c: c.update(training=[]), "key 'training' holds [], expected an object"),
    (lambda c: c.update(options={"promt_length": 3}), "key 'options' holds {\"promt_length\": 3}"),
    (lambda c: c.update(lm_head=5), "key 'lm_head' holds 5"),
])
def test_a_malformed_record_is_one_line_naming_the_key(made, tmp_path, edit, message):
    task = copy_of(made, tmp_path)
    edit_config(task, edit)
    with pytest.raises(ArtifactError) as e:
        read_config(task)
    assert message in str(e.value) and str(e.value).startswith(str(task / "config.json")) and "\n" not in str(e.value)


def test_an_artifact_without_the_newer_keys_still_reads(made, tmp_path):
    task = copy_of(made, tmp_path)
    edit_config(task, lambda c: [c["training"].pop(k) for k in ("train", "sample", "data", "versions", "seconds")])
    assert read_config(task)["training"]["history"]


# --- method options -------------------------------------------------------------------------------------


def test_only_options_that_differ_from_the_defaults_are_stored_and_loading_gets_them_all(made):
    config = read_config(made["artifact"])
    assert config["options"] == {"encoder": "mlp"}
    full = {k: v for k, v in dataclasses.asdict(made["cfg"].method).items() if k != "name"}
    assert len(full) == len(MethodOptions.__dataclass_fields__) == 27
    assert spec_from_config(config, made["artifact"]).method_options() == MethodOptions(**full)


def test_a_spec_given_every_option_stores_the_changed_ones(bert_dir, tmp_path):
    options = {**dataclasses.asdict(MethodOptions()), "prompt_length": 2, "reparameterize": False}
    spec = TaskSpec(method="p-tuning-v2", model=str(bert_dir), text_fields=["sentence"], labels=["0", "1"],
                    template="{sentence} it was {mask} .", verbalizer={"0": ["bad"], "1": ["good"]}, max_length=48,
                    options=options)
    save_artifact(tmp_path / "task", spec, *build_classifier(spec))
    config = read_config(tmp_path / "task")
    assert config["options"] == {"prompt_length": 2, "reparameterize": False}
    assert spec_from_config(config, tmp_path / "task").method_options() == MethodOptions(**options)


# --- file modes -----------------------------------------------------------------------------------------


def test_every_file_of_an_artifact_gets_the_users_mode(made, tmp_path):
    clf, config = load_artifact(made["artifact"])
    old = os.umask(0o022)
    try:
        save_artifact(tmp_path / "task", spec_from_config(config, made["artifact"]), clf, config["backbone"])
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (tmp_path / "task").iterdir()}
    assert modes == {name: "0o644" for name in ("config.json", "weights.safetensors", *HEAD_FILES)}, modes

"""Devices and precision: `--device` and `--dtype` on every command that runs a model, the config keys
`model_dtype` and `train.mixed_precision`, the dtype an artifact records and loading it in another,
fingerprints that do not depend on the dtype, and every inference path putting its tensors where the
model is — checked on a pretend second device (`fake_device`), since on a CPU-only machine every
tensor is on the CPU and a tensor left there could not be seen."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fake_device import FAKE, DeviceMismatch, fake_device
from prompttune import devices
from prompttune.artifacts import WEIGHTS, load_artifact, model_dtype, stored_state_dict
from prompttune.backbones import compare_fingerprints, load_backbone
from prompttune.cli import main
from prompttune.devices import model_device, resolve_device, resolve_dtype, to_device
from prompttune.errors import ConfigError, ModelError
from prompttune.evaluation import evaluate, predict_scores
from prompttune.generation import generate
from prompttune.task import TaskSpec, build_classifier

SENTENCES = ["this movie was great fun", "a very bad film", "fun and good", "awful film , very boring",
             "good fun movie", "boring and bad", "a wonderful film", "bad and boring"]
EXAMPLES = [{"sentence": s, "label": str((i + 1) % 2)} for i, s in enumerate(SENTENCES)]
TEMPLATE = "{soft:2} {sentence} it was {mask} ."
VERBALIZER = {"0": ["bad"], "1": ["good"]}
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens on a machine without a GPU")


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"prompttune {command}: error: "), f"expected one error line: {err!r}"
    return lines[0]


@pytest.fixture(scope="module")
def data_tsv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "data.tsv"
    path.write_text("label\tsentence\n" + "".join(f"{ex['label']}\t{ex['sentence']}\n" for ex in EXAMPLES))
    return path


def write_config(directory: Path, model: Path, data: Path, method: str, *, template: str = TEMPLATE, extra: str = "",
                 train: str = "") -> Path:
    path = directory / f"{method.replace('[', '').replace(']', '').replace(', ', '+')}.yaml"
    path.write_text(f"""
model: {model}
{extra}
task: {{train: {data}, eval: {data}, text_fields: [sentence]}}
prompt: {{template: "{template}", verbalizer: {{0: [bad], 1: [good]}}}}
method: {{name: {method}}}
train: {{epochs: 2, lr: 0.05, batch_size: 4, max_length: 24, progress: false, checkpoint: false{train}}}
""")
    return path


def train(capsys, config: Path, out: Path, *flags) -> dict:
    code, _, err = run(capsys, "train", config, "--out", out, "--device", "cpu", *flags)
    assert code == 0, err
    return json.loads((out / "config.json").read_text())


@pytest.fixture(scope="module")
def fp32_artifact(tmp_path_factory, bert_dir, data_tsv) -> Path:
    """Prompt tuning on the tiny BERT, trained in float32."""
    root = tmp_path_factory.mktemp("fp32")
    config = write_config(root, bert_dir, data_tsv, "prompt-tuning")
    assert main(["train", str(config), "--out", str(root / "task"), "--device", "cpu"]) == 0
    return root / "task"


@pytest.fixture(scope="module")
def bf16_artifact(tmp_path_factory, bert_dir, data_tsv) -> Path:
    """Prompt tuning + BitFit on the tiny BERT with `model_dtype: bfloat16`: it trains soft vectors (added: float32)
    and the model's own biases (bfloat16)."""
    root = tmp_path_factory.mktemp("bf16")
    config = write_config(root, bert_dir, data_tsv, "[prompt-tuning, bitfit]", extra="model_dtype: bfloat16")
    assert main(["train", str(config), "--out", str(root / "task"), "--device", "cpu"]) == 0
    return root / "task"


@pytest.fixture
def loaded(monkeypatch) -> list:
    """The classifiers the command line loads (`cli.load_task`), in order."""
    import prompttune.cli as cli

    seen, load_task = [], cli.load_task

    def spy(args):
        clf, config = load_task(args)
        seen.append(clf)
        return clf, config

    monkeypatch.setattr(cli, "load_task", spy)
    return seen


# --- the rules ---------------------------------------------------------------------------------


def test_device_and_dtype_names_resolve_as_documented(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("tpu", "gpu", "cuda:x", ""):
        with pytest.raises(ConfigError, match="--device must be auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    table = {("auto", cpu): torch.float32, ("float32", cpu): torch.float32, ("bfloat16", cpu): torch.bfloat16,
             ("float16", cpu): torch.float16, ("float32", gpu): torch.float32}
    for (name, device), dtype in table.items():
        assert resolve_dtype(name, device) == dtype, f"{name} on {device}"
    with pytest.raises(ConfigError, match=r"model_dtype must be one of \['auto', 'float32', 'bfloat16', 'float16'\], got 'fp8'"):
        resolve_dtype("fp8", cpu, key="model_dtype")
    # On a GPU: auto is the GPU, and bfloat16 where the GPU has it.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == gpu and resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="has 2 CUDA GPU"):
        resolve_device("cuda:2")
    monkeypatch.setenv("LOCAL_RANK", "1")  # a process `accelerate launch` started for the second GPU
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_dtype("auto", gpu) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_dtype("auto", gpu) == torch.float32, "a GPU without bfloat16 (V100, T4) runs float32"


def test_to_device_moves_every_tensor_and_leaves_the_rest():
    batch = {"ids": torch.ones(2, 3, dtype=torch.long), "texts": ["a", "b"], "n": 2}
    with fake_device():
        moved = to_device(batch, FAKE)
        assert moved["ids"].device == FAKE and moved["texts"] == ["a", "b"] and moved["n"] == 2
        assert model_device(torch.nn.Linear(2, 2).to(FAKE)) == FAKE
    assert model_device(torch.nn.Module()) == torch.device("cpu"), "a module without weights reads as the CPU"


COMMANDS = {  # each command that runs a model, with arguments that would get it past argparse
    "train": ["c.yaml", "--out", "o"], "eval": ["a", "--data", "d"], "predict": ["a", "--text", "x"],
    "generate": ["a", "--text", "x"], "serve": ["a"], "fit-lm-head": ["--data", "d", "--out", "o"], "demo": [],
    "search triggers": ["c.yaml", "--out", "o"], "search labels": ["c.yaml", "--out", "o"],
    "search templates": ["c.yaml", "--out", "o", "--generator", "t5"],
}


@NO_GPU
@pytest.mark.parametrize("command", COMMANDS)
def test_a_gpu_that_is_not_there_is_refused_in_one_line_before_anything_is_read(command, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # none of the files named exists
    for device in ("cuda", "cuda:1"):
        code, out, err = run(capsys, *command.split(), *COMMANDS[command], "--device", device)
        assert code == 2, f"{command} --device {device}: exit {code}, {err}"
        assert one_error_line(err, command.split()[0]).endswith(f"--device {device}: this machine has no CUDA GPU")
        assert list(tmp_path.iterdir()) == [], "nothing may be written"


def test_every_command_that_runs_a_model_takes_device_and_dtype():
    from prompttune.cli import EPILOG_TRAIN, build_parser

    assert "model_dtype" in EPILOG_TRAIN and "mixed_precision" in EPILOG_TRAIN, "train --help lists the config keys"

    parser = build_parser()
    for command in COMMANDS:
        args = parser.parse_args([*command.split(), *COMMANDS[command], "--device", "cpu", "--dtype", "bfloat16"])
        assert (args.device, args.dtype) == ("cpu", "bfloat16"), command


# --- config keys and their errors ---------------------------------------------------------------


@pytest.mark.parametrize("setting, message", [
    ("model_dtype=float8", "model_dtype must be one of ['auto', 'float32', 'bfloat16', 'float16'], got 'float8'"),
    ("train.mixed_precision=fp8", "train.mixed_precision must be one of ['no', 'bf16', 'fp16'], got 'fp8'"),
    ("train.mixed_precision=yes", "train.mixed_precision must be one of ['no', 'bf16', 'fp16'], got True"),
    ("train.mixed_precision=fp16", "train.mixed_precision: fp16 needs a GPU (accelerate does not run fp16 on the CPU)"),
    # Combinations that cannot train (a traceback and an artifact of NaNs before):
    ("model_dtype=float16|train.mixed_precision=bf16",
     "train.mixed_precision: bf16 autocasts to bfloat16, over a model loaded in float16 (model_dtype)"),
    ("model_dtype=float16|method.name=[prompt-tuning,bitfit]", "model_dtype: float16: Adam's updates of the"),
    ("model_dtype=float16|method.name=prompt-finetune|prompt.template={sentence} it was {mask} .", "overflow in float16"),
    ("device_map=auto|max_memory={0: 1GiB}", "max_memory: GPU 0: this machine has no CUDA GPU"),
    ("device_map=auto|max_memory={cpu: true}", "config key max_memory: value true was read by YAML as the boolean True"),
])
def test_bad_precision_settings_are_one_line_errors(setting, message, capsys, tmp_path, bert_dir, data_tsv, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    config = write_config(tmp_path, bert_dir, data_tsv, "prompt-tuning")
    sets = [a for item in setting.split("|") for a in ("--set", item)]
    code, _, err = run(capsys, "train", config, "--out", tmp_path / "out", "--device", "cpu", *sets)
    assert code == 2 and message in one_error_line(err, "train"), err
    assert not (tmp_path / "out" / "config.json").exists()


def test_a_diverging_run_stops_in_one_line_and_saves_nothing(capsys, tmp_path, bert_dir, data_tsv, monkeypatch):
    """A NaN loss ends the run before an artifact of NaNs is written (a float16 model trained with Adam,
    too high a learning rate): one line naming the epoch and step."""
    import prompttune.training as training

    real = training.mean_loss
    monkeypatch.setattr(training, "mean_loss", lambda *a: (lambda loss, n: (loss * float("nan"), n))(*real(*a)))
    config = write_config(tmp_path, bert_dir, data_tsv, "prompt-tuning")
    code, _, err = run(capsys, "train", config, "--out", tmp_path / "out", "--device", "cpu")
    line = one_error_line(err.replace(err.split("prompttune train: error:")[0], ""), "train")
    assert code == 2 and "training diverged: the loss is nan at epoch 1, step 1; nothing was saved" in line, err
    assert not (tmp_path / "out" / "weights.safetensors").exists()


def test_fit_lm_head_refuses_float16_in_one_line(capsys, tmp_path, bert_dir, data_tsv):
    code, _, err = run(capsys, "fit-lm-head", "--model", bert_dir, "--data", data_tsv, "--text-field", "sentence",
                       "--held-out", "2", "--out", tmp_path / "head", "--device", "cpu", "--dtype", "float16")
    assert code == 2 and "--dtype float16: fitting the MLM head with Adam overflows" in one_error_line(err, "fit-lm-head")


def test_mixed_precision_no_may_be_written_unquoted(tmp_path, bert_dir, data_tsv):
    from prompttune.config import load_config

    config = write_config(tmp_path, bert_dir, data_tsv, "prompt-tuning", train=", mixed_precision: no")
    assert load_config(config).train.mixed_precision == "no", "YAML reads `no` as false: it means no"
    assert load_config(config, ["train.mixed_precision=bf16"]).train.mixed_precision == "bf16"


def test_a_checkpoint_written_before_the_precision_keys_resumes_as_float32(tmp_path):
    from prompttune.training import check_same_run

    before = {"model": "m", "train": {"lr": 0.1}}  # a run record without model_dtype and train.mixed_precision
    check_same_run(before, {"model": "m", "model_dtype": "float32", "train": {"lr": 0.1, "mixed_precision": "no"}}, tmp_path)
    with pytest.raises(ConfigError, match='model_dtype: "float32" → "bfloat16"'):
        check_same_run(before, {"model": "m", "model_dtype": "bfloat16", "train": {"lr": 0.1}}, tmp_path)


def test_a_malformed_dtype_record_is_refused_in_one_line(fp32_artifact, tmp_path, capsys, data_tsv):
    task = tmp_path / "task"
    shutil.copytree(fp32_artifact, task)
    for bad in ({"model_dtype": "float8", "mixed_precision": "no"}, {"model_dtype": "float32"}, "bfloat16"):
        config = json.loads((task / "config.json").read_text())
        (task / "config.json").write_text(json.dumps({**config, "dtype": bad}))
        code, _, err = run(capsys, "eval", task, "--data", data_tsv)
        assert code == 2 and "key 'dtype' holds" in one_error_line(err, "eval"), err


# --- training ------------------------------------------------------------------------------------


def test_bf16_mixed_precision_trains_on_the_cpu(capsys, tmp_path, bert_dir, data_tsv):
    config = write_config(tmp_path, bert_dir, data_tsv, "prompt-tuning", extra="model_dtype: bfloat16",
                          train=", epochs: 4, lr: 0.1, mixed_precision: bf16")
    saved = train(capsys, config, tmp_path / "out", "--dtype", "float32")  # --dtype replaces model_dtype
    assert saved["dtype"] == {"model_dtype": "float32", "mixed_precision": "bf16"}
    assert saved["training"]["train"]["mixed_precision"] == "bf16"
    losses = [epoch["train_loss"] for epoch in saved["training"]["history"]]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0], f"the loss should fall under bf16 autocast: {losses}"
    # Autocast ends with training: the evaluation after it is the one the saved task gives.
    code, out, err = run(capsys, "eval", tmp_path / "out", "--data", data_tsv, "--json")
    assert code == 0, err
    assert json.loads(out)["loss"] == json.loads((tmp_path / "out" / "eval.json").read_text())["loss"]


def test_a_bf16_model_trains_what_methods_add_in_float32_and_its_own_weights_in_bf16(bf16_artifact, capsys):
    config = json.loads((bf16_artifact / "config.json").read_text())
    assert config["dtype"] == {"model_dtype": "bfloat16", "mixed_precision": "no"}
    weights = load_file(bf16_artifact / WEIGHTS)
    soft = {k: v.dtype for k, v in weights.items() if k.startswith("soft.")}
    biases = {k: v.dtype for k, v in weights.items() if k.endswith(".bias")}
    assert soft and set(soft.values()) == {torch.float32}, f"soft vectors are kept in float32: {soft}"
    assert biases and set(biases.values()) == {torch.bfloat16}, f"the model's own biases train in its dtype: {biases}"
    losses = [epoch["train_loss"] for epoch in config["training"]["history"]]
    assert all(torch.isfinite(torch.tensor(losses))), losses


def test_a_bf16_artifact_round_trips_exactly(bf16_artifact, data_tsv, capsys, loaded):
    clf, config = load_artifact(bf16_artifact)  # by default in the dtype it was trained in
    assert model_dtype(clf) == torch.bfloat16
    saved = load_file(bf16_artifact / WEIGHTS)
    now = stored_state_dict(clf)
    assert sorted(now) == sorted(saved)
    for name, tensor in saved.items():
        assert now[name].dtype == tensor.dtype and torch.equal(now[name], tensor), f"{name} changed in the round trip"
    # The same outputs: eval of the reloaded task equals the evaluation training ran on the task in memory.
    code, out, err = run(capsys, "eval", bf16_artifact, "--data", data_tsv, "--json", "--device", "cpu", "--dtype", "bfloat16")
    assert code == 0, err
    assert "note:" not in err, f"loaded in the dtype it was trained in: nothing to note ({err})"
    trained = json.loads((bf16_artifact / "eval.json").read_text())
    result = json.loads(out)
    assert (result["accuracy"], result["loss"]) == (trained["accuracy"], trained["loss"])
    assert model_dtype(loaded[-1]) == torch.bfloat16 and model_device(loaded[-1]) == torch.device("cpu")


def test_loading_in_another_dtype_is_stated_and_close(bf16_artifact, capsys, loaded):
    texts = [a for s in SENTENCES for a in ("--text", s)]
    code, out, err = run(capsys, "predict", bf16_artifact, *texts, "--json", "--dtype", "bfloat16")
    assert code == 0 and "note:" not in err, err
    as_trained = [json.loads(line)["probabilities"]["1"] for line in out.splitlines()]
    code, out, err = run(capsys, "predict", bf16_artifact, *texts, "--json", "--dtype", "float32", "--device", "cpu")
    assert code == 0, err
    assert f"note: {bf16_artifact} was trained in bfloat16; loaded in float32" in err.splitlines(), err
    assert model_dtype(loaded[-1]) == torch.float32
    in_fp32 = [json.loads(line)["probabilities"]["1"] for line in out.splitlines()]
    torch.testing.assert_close(torch.tensor(in_fp32), torch.tensor(as_trained), rtol=0, atol=0.05)


def test_eval_predict_and_generate_load_the_model_on_the_device_in_the_dtype_given(fp32_artifact, data_tsv, capsys,
                                                                                   loaded, tmp_path, gpt2_dir):
    code, _, err = run(capsys, "eval", fp32_artifact, "--data", data_tsv, "--device", "cpu", "--dtype", "bfloat16")
    assert code == 0, err
    assert f"note: {fp32_artifact} was trained in float32; loaded in bfloat16" in err
    code, _, err = run(capsys, "predict", fp32_artifact, "--text", "good fun", "--device", "cpu", "--dtype", "float16")
    assert code == 0, err
    generation = tmp_path / "generation.yaml"
    generation.write_text(f"""
model: {gpt2_dir}
task: {{train: {data_tsv}, text_fields: [sentence], generation: true}}
prompt: {{template: "{{soft:2}} {{sentence}} : {{mask}}"}}
method: {{name: prompt-tuning}}
train: {{epochs: 1, lr: 0.05, batch_size: 4, max_length: 24, progress: false, checkpoint: false}}
""")
    train(capsys, generation, tmp_path / "gen")
    code, out, err = run(capsys, "generate", tmp_path / "gen", "--text", "good fun", "--max-new-tokens", "3",
                         "--device", "cpu", "--dtype", "bfloat16")
    assert code == 0 and out.strip() != "", err
    got = [(model_device(c), model_dtype(c)) for c in loaded]
    assert got == [(torch.device("cpu"), torch.bfloat16), (torch.device("cpu"), torch.float16),
                   (torch.device("cpu"), torch.bfloat16)], got


def test_search_and_fit_lm_head_load_the_model_in_the_dtype_given(tmp_path, capsys, bert_dir, data_tsv, monkeypatch):
    import prompttune.backbones as backbones

    dtypes, load = [], backbones.load_pretrained

    def spy(*args, dtype=None, **kwargs):
        dtypes.append(dtype)
        return load(*args, dtype=dtype, **kwargs)

    monkeypatch.setattr(backbones, "load_pretrained", spy)
    config = write_config(tmp_path, bert_dir, data_tsv, "zero-shot", template="{sentence} it was {mask} .")
    code, _, err = run(capsys, "search", "labels", config, "--out", tmp_path / "labels", "--per-class", "2",
                       "--assignments", "2", "--set", "task.dev=" + str(data_tsv), "--device", "cpu", "--dtype", "bfloat16")
    assert code == 0, err
    written = (tmp_path / "labels" / "config.yaml").read_text()
    assert "model_dtype" not in written, "the written config keeps its own model_dtype"
    code, _, err = run(capsys, "fit-lm-head", "--model", bert_dir, "--data", data_tsv, "--held-out", "2",
                       "--out", tmp_path / "head", "--device", "cpu", "--dtype", "bfloat16")
    assert code == 0, err
    assert dtypes == [torch.bfloat16, torch.bfloat16], dtypes


# --- fingerprints ------------------------------------------------------------------------------


def test_fingerprints_do_not_depend_on_the_dtype(bert_dir):
    fp32, bf16, fp16 = (load_backbone(str(bert_dir), dtype=d).fingerprint() for d in (torch.float32, torch.bfloat16, torch.float16))
    assert "embedding_sha256" in fp32 and "embedding_sha256" not in bf16, "the exact hash is of float32 values only"
    for key in ("embedding_bf16_sha256", "weights_sample_sha256"):
        assert fp32[key] == bf16[key] and key not in fp16, key
    for key in ("embedding_fp16_sha256", "weights_sample_fp16_sha256"):
        assert fp32[key] == fp16[key] and key not in bf16, key
    for made, given in ((fp32, bf16), (bf16, fp32), (fp32, fp16), (fp16, fp32)):
        compare_fingerprints(made, given)
    with pytest.raises(ModelError, match="none to check it by"):
        compare_fingerprints(bf16, fp16)  # float16 cannot give a bfloat16 rounding, nor the other way round
    with pytest.raises(ModelError, match="lm_head_sha256: artifact was made for 'x', backbone has None"):
        compare_fingerprints({**fp32, "lm_head_sha256": "x"}, bf16)  # a field the backbone lacks still differs
    other = {**fp32, "embedding_bf16_sha256": "0" * 16}
    with pytest.raises(ModelError, match="embedding_bf16_sha256: artifact was made for '0000000000000000'"):
        compare_fingerprints(other, bf16)


def test_a_float32_artifact_loads_on_a_bfloat16_backbone(fp32_artifact):
    from prompttune.serving.pool import TaskPool

    clf, _ = load_artifact(fp32_artifact, dtype=torch.bfloat16)
    assert model_dtype(clf) == torch.bfloat16
    reference, _ = load_artifact(fp32_artifact)
    pool = TaskPool(device="cpu", dtype="bfloat16")
    pool.add(fp32_artifact, name="task")
    assert pool.backbone.model.dtype == torch.bfloat16
    served = torch.stack(pool.scores_mixed([("task", {"sentence": s}) for s in SENTENCES])).softmax(-1)
    alone = predict_scores(reference, [{"sentence": s} for s in SENTENCES]).softmax(-1)
    torch.testing.assert_close(served, alone, rtol=0, atol=0.05)


def test_a_bfloat16_pool_runs_float32_tasks_of_every_kind_of_part_in_one_pass(tmp_path, gpt2_dir):
    """What a method adds stays float32 beside a bfloat16 model, and meets its activations cast: soft
    vectors, prefixes, adapters and LoRA matrices, each task on its own rows of one forward pass."""
    from prompttune.artifacts import save_artifact
    from prompttune.serving.pool import TaskPool

    plain, soft = "{sentence} it was {mask} .", TEMPLATE
    methods = {"prompt-tuning": soft, "p-tuning-v2": plain, "adapter": plain, "lora": plain}
    torch.manual_seed(0)
    for method, template in methods.items():
        spec = TaskSpec(method=method, model=str(gpt2_dir), text_fields=["sentence"], labels=["0", "1"], template=template,
                        verbalizer=VERBALIZER, max_length=24, options={"prompt_length": 2} if method == "p-tuning-v2" else {})
        clf, fp = build_classifier(spec)
        with torch.no_grad():  # away from the identity: an untrained adapter or LoRA update adds nothing
            for p in clf.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn_like(p))
        save_artifact(tmp_path / method, spec, clf, fp)
    pool = TaskPool(device="cpu", dtype="bfloat16")
    for method in methods:
        pool.add(tmp_path / method, name=method)
    added = {n: p.dtype for info in pool.tasks() for n, p in info.classifier.named_parameters()
             if n.startswith(("soft.", "deep.", "adapters.")) or ".lora_" in n}
    assert len({n.split(".")[0] for n in added if ".lora_" not in n}) == 3 and any(".lora_" in n for n in added), sorted(added)
    assert set(added.values()) == {torch.float32}, added
    assert pool.backbone.model.dtype == torch.bfloat16
    items = [(method, {"sentence": s}) for method in methods for s in SENTENCES[:3]]
    served = torch.stack(pool.scores_mixed(items)).softmax(-1)
    alone = torch.cat([predict_scores(load_artifact(tmp_path / method)[0], [{"sentence": s} for s in SENTENCES[:3]])
                       for method in methods]).softmax(-1)
    torch.testing.assert_close(served, alone, rtol=0, atol=0.05)


def test_an_artifact_saved_before_the_rounded_hash_still_loads_and_is_still_checked(fp32_artifact, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(fp32_artifact, old)
    config = json.loads((old / "config.json").read_text())
    del config["dtype"]  # as written then: the exact embedding hash and the bfloat16-rounded weights sample
    for key in ("embedding_bf16_sha256", "embedding_fp16_sha256", "weights_sample_fp16_sha256"):
        del config["backbone"][key]
    (old / "config.json").write_text(json.dumps(config))
    clf, _ = load_artifact(old)  # float32: what such an artifact was trained in
    assert model_dtype(clf) == torch.float32
    load_artifact(old, dtype=torch.bfloat16)  # no exact hash on a bfloat16 load: the weights sample decides
    with pytest.raises(ModelError, match="none to check it by"):
        load_artifact(old, dtype=torch.float16)
    config["backbone"]["embedding_sha256"] = "0" * 16
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="embedding_sha256: artifact was made for '0000000000000000'"):
        load_artifact(old)


def test_text_losses_are_float32_in_a_bf16_model(gpt2_dir, t5_dir):
    for model in (gpt2_dir, t5_dir):
        spec = TaskSpec(method="prompt-tuning", model=str(model), text_fields=["sentence"], labels=[],
                        template="{soft:2} {sentence} : {mask}", generation=True, max_length=24)
        task, _ = build_classifier(spec, dtype=torch.bfloat16)
        loss = task(task.collate([{"sentence": "good fun", "label": "a good film"}]))
        assert model_dtype(task) == torch.bfloat16 and loss.dtype == torch.float32, (model, loss.dtype)


# --- every path puts its tensors where the model is ------------------------------------------


def _specs(bert_dir, gpt2_dir, t5_dir) -> dict[str, TaskSpec]:
    bert, gpt2, t5 = str(bert_dir), str(gpt2_dir), str(t5_dir)
    cot = [{**ex, "reasoning": f"it says {ex['sentence']}"} for ex in EXAMPLES]
    plain = "{sentence} it was {mask} ."

    def spec(method, model, template=plain, **kw):
        kw.setdefault("verbalizer", VERBALIZER)
        kw.setdefault("max_length", 24)
        return TaskSpec(method=method, model=model, text_fields=["sentence"], labels=["0", "1"], template=template, **kw)

    def generation(method, model, template="{sentence} : {mask}", **kw):
        return TaskSpec(method=method, model=model, text_fields=["sentence"], labels=[], template=template,
                        generation=True, max_length=24, **kw)

    return {
        "zero-shot masked": spec("zero-shot", bert),
        "zero-shot masked, multi-token words": spec("zero-shot", bert, verbalizer={"0": ["boringly"], "1": ["wonderful"]}),
        "zero-shot causal": spec("zero-shot", gpt2),
        "zero-shot causal, text after the word": spec("zero-shot", gpt2, template="{sentence} it was {mask} fun ."),
        "zero-shot seq2seq": spec("zero-shot", t5, verbalizer={"0": ["boringly"], "1": ["wonderful"]}),
        "prompt-tuning": spec("prompt-tuning", bert, TEMPLATE),
        "p-tuning-v2 causal": spec("p-tuning-v2", gpt2, options={"prompt_length": 2}),
        "prefix-tuning seq2seq": spec("prefix-tuning", t5, options={"prompt_length": 2}),
        "lora": spec("lora", gpt2),
        "adapter": spec("adapter", bert),
        "finetune (a head)": TaskSpec(method="finetune", model=bert, text_fields=["sentence"], labels=["0", "1"], max_length=24),
        "demonstrations, random": spec("prompt-tuning", bert, TEMPLATE, demonstrations=EXAMPLES, options={"demonstrations": 1}),
        "demonstrations, similar": spec("zero-shot", bert, demonstrations=EXAMPLES,
                                        options={"demonstrations": 1, "demo_selection": "similar", "demo_encoder": bert}),
        "in-context": spec("in-context", gpt2, demonstrations=EXAMPLES[:2], options={"context_examples": 2}),
        "in-context, calibrated": spec("in-context", gpt2, demonstrations=EXAMPLES[:2],
                                       options={"context_examples": 2, "calibrate": True}),
        "chain of thought, few-shot": spec("in-context", gpt2, demonstrations=cot[:2], max_length=40, options={
            "context_examples": 2, "chain_of_thought": "few-shot", "max_reasoning_tokens": 3, "calibrate": True}),
        "chain of thought, zero-shot": spec("in-context", gpt2, demonstrations=[], max_length=40, options={
            "context_examples": 0, "chain_of_thought": "zero-shot", "max_reasoning_tokens": 3}),
        "generation causal": generation("prompt-tuning", gpt2, template="{soft:2} {sentence} : {mask}"),
        "generation seq2seq, prefixes": generation("prefix-tuning", t5, options={"prompt_length": 2}),
    }


SPEC_NAMES = list(_specs("b", "g", "t"))


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_every_inference_path_runs_where_the_model_is(name, bert_dir, gpt2_dir, t5_dir):
    clf, _ = build_classifier(_specs(bert_dir, gpt2_dir, t5_dir)[name], folded=True)
    examples = [{"sentence": s} for s in SENTENCES[:3]]
    with fake_device():
        clf.to(FAKE)
        assert model_device(clf) == FAKE
        if getattr(clf, "generates", False):
            evaluate(clf, [{**ex, "label": "a film"} for ex in examples], batch_size=2, details=True)
        else:
            evaluate(clf, [{**ex, "label": "1"} for ex in examples], batch_size=2, details=True)
        if getattr(clf, "generates", False) or getattr(clf, "kind", None) == "causal" and not hasattr(clf, "explain"):
            assert len(generate(clf, examples, batch_size=2)) == len(examples)
        if hasattr(clf, "explain"):  # what `prompttune generate` prints for an in-context task
            assert len(clf.explain(examples)) == len(examples)


def test_prompt_transfer_compares_with_the_bank_where_the_prompt_is(fp32_artifact, tmp_path, bert_dir):
    from prompttune.prompt_bank import init_from_artifact, most_similar

    bank = tmp_path / "bank"
    shutil.copytree(fp32_artifact, bank / "task")
    spec = TaskSpec(method="prompt-tuning", model=str(bert_dir), text_fields=["sentence"], labels=["0", "1"],
                    template=TEMPLATE, verbalizer=VERBALIZER, max_length=24)
    clf, fp = build_classifier(spec)
    with fake_device():
        clf.to(FAKE)
        found = most_similar(clf, bank, fp)
        assert found is not None and found[0] == bank / "task"
        init_from_artifact(clf, found[0], fp)
        assert clf.soft.vectors.device == FAKE


def test_the_pretend_device_catches_a_batch_left_on_the_cpu(bert_dir):
    """The check above has teeth: the bug it guards against fails there as it fails on a GPU."""
    clf, _ = build_classifier(_specs(bert_dir, bert_dir, bert_dir)["prompt-tuning"], folded=True)
    with fake_device():
        clf.to(FAKE)
        batch = clf.collate([{"sentence": "good fun"}])
        with pytest.raises(DeviceMismatch, match="on the CPU meets tensors on privateuseone:0"):
            clf(batch)
        assert clf(to_device(batch, FAKE)).device == FAKE


@pytest.fixture
def pretend_gpu(monkeypatch):
    """`--device cuda` (and `device="cuda"`) names the pretend device, inside `fake_device()`: in every
    module that resolves device names."""
    import sys

    resolve = devices.resolve_device

    def pretend(name: str) -> torch.device:
        return FAKE if name.startswith("cuda") else resolve(name)

    for module in [m for name, m in sys.modules.items() if name.startswith("prompttune")]:
        if getattr(module, "resolve_device", None) is resolve:
            monkeypatch.setattr(module, "resolve_device", pretend)
    with fake_device():
        yield FAKE


def test_the_command_line_runs_inference_on_the_device_it_is_given(fp32_artifact, data_tsv, capsys, loaded, tmp_path,
                                                                   gpt2_dir, pretend_gpu):
    code, out, err = run(capsys, "eval", fp32_artifact, "--data", data_tsv, "--json", "--device", "cuda")
    assert code == 0, err
    code, out, err = run(capsys, "predict", fp32_artifact, "--data", data_tsv, "--device", "cuda")
    assert code == 0 and len(out.splitlines()) == len(SENTENCES), err
    # An in-context task with calibration and chain of thought: `generate` prints its reasoning and answer.
    in_context = write_config(tmp_path, gpt2_dir, data_tsv, "in-context", template="{sentence} it was {mask} .")
    in_context.write_text(in_context.read_text().replace("method: {name: in-context}", "method: {name: in-context, "
                          "context_examples: 0, calibrate: true, chain_of_thought: zero-shot, max_reasoning_tokens: 3}"))
    code, _, err = run(capsys, "train", in_context, "--out", tmp_path / "icl", "--device", "cuda",
                       "--set", "train.max_length=40")
    assert code == 0, err
    code, out, err = run(capsys, "generate", tmp_path / "icl", "--text", "good fun", "--json", "--device", "cuda")
    assert code == 0 and json.loads(out)["label"] in ("0", "1"), err
    assert [model_device(c) for c in loaded] == [FAKE] * 3


def test_the_task_pool_runs_where_it_is_told(fp32_artifact, pretend_gpu):
    from prompttune.serving.pool import TaskPool

    pool = TaskPool(device="cuda", dtype="float32")
    pool.add(fp32_artifact, name="task")
    assert model_device(pool.backbone.model) == FAKE and model_device(pool.tasks()[0].classifier) == FAKE
    assert len(pool.predict("task", SENTENCES[:3])) == 3


def test_the_searches_and_fit_lm_head_run_where_they_are_told(tmp_path, bert_dir, t5_dir, data_tsv, pretend_gpu):
    from prompttune.lm_head import fit_and_save_lm_head
    from prompttune.search.run import run_search

    config = write_config(tmp_path, bert_dir, data_tsv, "zero-shot", template="{sentence} {trigger:1} it was {mask} .")
    dev = ["task.dev=" + str(data_tsv)]
    run_search("triggers", config, tmp_path / "triggers", overrides=dev, device="cuda", steps=2, candidates=2, batch_size=4,
               log=lambda m: None)
    plain = write_config(tmp_path, bert_dir, data_tsv, "prompt-tuning", template="{sentence} it was {mask} .")
    run_search("labels", plain, tmp_path / "labels", overrides=dev, device="cuda", per_class=2, assignments=2,
               log=lambda m: None)
    run_search("templates", plain, tmp_path / "templates", overrides=dev, device="cuda", generator=str(t5_dir), beams=2,
               keep=1, log=lambda m: None)
    fit_and_save_lm_head(str(bert_dir), SENTENCES * 2, tmp_path / "head", held_out=2, steps=2, progress=False,
                         device="cuda")

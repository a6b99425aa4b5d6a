"""Training under `accelerate launch` with several processes (data parallel): train.batch_size is the
global batch, so two processes train the same weights as one; only the main process writes, once; a
process left with nothing in the last batch does not stall the others; a process that fails ends the
launch instead of leaving the others waiting; and the shipped accelerate configs parse as
`accelerate launch` reads them.

Two CPU processes on one machine are launched with `accelerate launch --multi_gpu --num_processes 2`
and ACCELERATE_USE_CPU=1: `--cpu --num_processes 2` starts a single process in accelerate 1.x (its
CPU launcher spreads processes only through mpirun)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import prompttune
from prompttune import TaskSpec, build_classifier
from prompttune.cli import main
from prompttune.errors import ConfigError
from prompttune.processes import check_launch
from prompttune.training import batch_share, mean_loss
from prompttune.verbalizers import parse_verbalizer

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT = 300
"""Seconds a launch may take before the test fails (a deadlock fails here instead of hanging CI)."""
POS = ["this movie was great fun", "a very good film", "fun and good", "great film , very fun"]
NEG = ["this movie was terrible", "a very bad film", "boring and bad"]


@pytest.fixture(scope="module")
def run_config(tmp_path_factory, bert_dir) -> Path:
    """7 training examples in batches of 3 (shares 2+1, 2+1, then 1+0 on two processes), dev data for the
    best epoch, a soft prompt (every one of its numbers gets a gradient), on a copy of the tiny BERT
    without dropout (dropout masks depend on each process's share, so only a dropout-free pass can
    agree to float tolerance)."""
    folder = tmp_path_factory.mktemp("several")
    model = shutil.copytree(bert_dir, folder / "bert-no-dropout")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "hidden_dropout_prob": 0.0,
                                                   "attention_probs_dropout_prob": 0.0}))
    data = folder / "train.tsv"
    data.write_text("label\tsentence\n" + "".join(f"1\t{s}\n" for s in POS) + "".join(f"0\t{s}\n" for s in NEG))
    path = folder / "run.yaml"
    path.write_text(f"""
model: {model}
task: {{train: {data}, dev: {data}, eval: {data}, text_fields: [sentence]}}
prompt: {{template: "{{soft:4}} {{sentence}} it was {{mask}} .", verbalizer: {{0: bad, 1: good}}}}
method: {{name: prompt-tuning}}
train: {{epochs: 2, lr: 0.1, batch_size: 3, progress: false}}
""")
    return path


def launch(*argv, processes: int = 2) -> subprocess.CompletedProcess:
    """`accelerate launch` of `python -m prompttune ARGV` on `processes` CPU processes, with this test's
    interpreter and prompttune."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(prompttune.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "0", "-m", "prompttune", *map(str, argv)]
    try:
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"accelerate launch did not finish in {LAUNCH_TIMEOUT} s (a deadlock?); stderr:\n{e.stderr}")


@pytest.fixture(scope="module")
def two_process_run(run_config, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("runs") / "two"
    return out, launch("train", run_config, "--out", out)


def test_two_processes_train_the_weights_one_process_trains_with_the_same_global_batch(run_config, two_process_run,
                                                                                      tmp_path, capsys):
    out, done = two_process_run
    assert done.returncode == 0, f"the two-process run failed:\n{done.stderr[-3000:]}"
    assert main(["train", str(run_config), "--out", str(tmp_path / "one")]) == 0, capsys.readouterr().err
    one, two = load_file(tmp_path / "one" / "weights.safetensors"), load_file(out / "weights.safetensors")
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-5), \
            f"{name}: two processes differ from one by {(one[name] - two[name]).abs().max():.2e}"
    history = lambda d: json.loads((d / "config.json").read_text())["training"]["history"]  # noqa: E731
    for a, b in zip(history(tmp_path / "one"), history(out), strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5), "the logged loss is not the global batch's"
        assert a["dev_accuracy"] == b["dev_accuracy"] and a["dev_loss"] == pytest.approx(b["dev_loss"], abs=1e-5)


def test_only_the_main_process_writes_and_reports_once(two_process_run):
    out, done = two_process_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "eval.json", "training.png", "weights.safetensors"], \
        "the output holds more than one artifact's files (a staging folder, a checkpoint, a lock left behind?)"
    assert done.stderr.count("method prompt-tuning:") == 1, f"the run was announced more than once:\n{done.stderr}"
    assert done.stderr.count("eval: ") == 1, "eval ran on more than the main process"
    assert len(done.stdout.splitlines()) == 1 and json.loads(done.stdout)["artifact"] == str(out)
    assert json.loads((out / "eval.json").read_text())["n"] == len(POS) + len(NEG)


def test_qlora_trains_on_two_processes_as_on_one(run_config, tmp_path, capsys):
    """A quantized base is placed on one device as it loads (bitsandbytes' device map): each process
    holds its own, and the two processes train LoRA's weights as one does."""
    pytest.importorskip("bitsandbytes", reason="the quantized base needs bitsandbytes (pip install '.[quantization]')")
    qlora = ["--set", "quantization=nf4", "--set", "method.name=lora", "--set", "prompt.template={sentence} it was {mask} .",
             "--set", "train.lr=0.01"]
    done = launch("train", run_config, "--out", tmp_path / "two", *qlora)
    assert done.returncode == 0, f"QLoRA on two processes failed:\n{done.stderr[-3000:]}"
    assert main(["train", str(run_config), "--out", str(tmp_path / "one"), *qlora]) == 0, capsys.readouterr().err
    one, two = load_file(tmp_path / "one" / "weights.safetensors"), load_file(tmp_path / "two" / "weights.safetensors")
    assert one.keys() == two.keys() and one
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-5), \
            f"{name}: two processes differ from one by {(one[name] - two[name]).abs().max():.2e}"


def test_a_failure_on_the_main_process_ends_the_launch_instead_of_leaving_the_others_waiting(run_config,
                                                                                             two_process_run):
    out, first = two_process_run
    assert first.returncode == 0, first.stderr[-3000:]
    before = (out / "weights.safetensors").read_bytes()
    # Only the main process claims the folder, so only it finds the artifact there; the other one waits
    # for it, and is stopped by the launcher when the main process exits with the error.
    done = launch("train", run_config, "--out", out)
    assert done.returncode != 0
    assert "already holds a task artifact" in done.stderr
    assert (out / "weights.safetensors").read_bytes() == before, "the failed run touched the artifact"


def test_each_process_takes_every_nth_example_and_an_empty_share_weighs_nothing():
    batch = ["a", "b", "c"]
    assert [batch_share(batch, rank, 2) for rank in (0, 1)] == [(["a", "c"], 1), (["b"], 1)]
    assert batch_share(["a"], 1, 2) == (["a"], 0), "a process left without an example must still run, with weight 0"
    assert batch_share(batch, 0, 1) == (batch, 1)


@pytest.mark.parametrize("model, template, generation", [
    ("bert_dir", "{soft:2} {text} it was {mask} .", False),
    ("gpt2_dir", "{soft:2} {text} is {mask}", True),
    ("t5_dir", "{soft:2} {text} is {mask}", True),
])
def test_shares_weighted_by_their_loss_terms_give_the_whole_batch_loss(model, template, generation, request):
    """What makes N processes train as one: DDP averages the processes' gradients, so each share's
    mean loss × its terms × N / the batch's terms must average to the whole batch's mean loss (the
    gradient is linear in it). Here over shares of 3 and 2 examples whose targets differ in length."""
    spec = TaskSpec(method="prompt-tuning", model=str(request.getfixturevalue(model)), text_fields=["text"],
                    labels=[] if generation else ["bad", "good"], template=template, generation=generation,
                    verbalizer=None if generation else parse_verbalizer({"bad": "bad", "good": "good"}).to_config(),
                    max_length=32)
    torch.manual_seed(0)
    task, _ = build_classifier(spec)
    task.eval()
    labels = ["good fun", "bad", "a very good film", "good", "it was bad fun"] if generation else ["good", "bad"] * 3
    examples = [{"text": t, "label": y} for t, y in zip(["a film", "the movie is long", "it", "this film", "a movie"],
                                                          labels)]
    with torch.no_grad():
        whole, whole_terms = mean_loss(task, task(task.collate(examples)), task.collate(examples))
        shares = [batch_share(examples, rank, 2)[0] for rank in (0, 1)]
        parts = [mean_loss(task, task(task.collate(s)), task.collate(s)) for s in shares]
    assert sum(terms for _, terms in parts) == whole_terms
    averaged = sum(loss * terms * 2 / whole_terms for loss, terms in parts) / 2
    assert averaged.item() == pytest.approx(whole.item(), abs=1e-5)


@pytest.mark.parametrize("name, kind", [("ddp_2gpu.yaml", "MULTI_GPU"), ("deepspeed_zero2.yaml", "DEEPSPEED"),
                                        ("fsdp.yaml", "FSDP")])
def test_the_shipped_accelerate_configs_are_accepted_by_accelerate_launch(name, kind, monkeypatch):
    """Parsed and validated as `accelerate launch --config_file` does (unknown keys and bad values fail),
    turned into the launcher's environment, and the DeepSpeed / FSDP plugin built from it; no GPU and no
    DeepSpeed package needed, and nothing launched."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    path = ROOT / "configs" / "accelerate" / name
    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "prompttune", "train", "run.yaml"])
    args, defaults, _ = _validate_launch_command(args)
    assert defaults.distributed_type.name == kind and args.num_processes == 2
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if kind == "DEEPSPEED":
        assert DeepSpeedPlugin().zero_stage == 2
    elif kind == "FSDP":
        assert FullyShardedDataParallelPlugin().fsdp_version == 2


@pytest.mark.parametrize("kind, stage, checkpoint, refused", [
    ("FSDP", None, False, "FSDP shards the parameters"),
    ("DEEPSPEED", 3, False, "ZeRO stage 3 shards the parameters"),
    ("DEEPSPEED", 2, True, "set train.checkpoint: false"),
    ("DEEPSPEED", 2, False, None),
    ("MULTI_GPU", None, True, None),
])
def test_launch_modes_the_loop_cannot_serve_are_refused_in_one_line(kind, stage, checkpoint, refused):
    state = SimpleNamespace(distributed_type=SimpleNamespace(name=kind),
                            deepspeed_plugin=SimpleNamespace(zero_stage=stage) if stage else None)
    if refused is None:
        check_launch(state, checkpoint)
    else:
        with pytest.raises(ConfigError, match=refused):
            check_launch(state, checkpoint)


@pytest.mark.parametrize("launcher, configured, expected", [
    (None, "bf16", "bf16"), ("no", "no", "no"), ("bf16", "no", "bf16"), ("bf16", "bf16", "bf16"), ("fp16", "bf16", None)])
def test_the_launchers_mixed_precision_is_taken_where_the_config_asks_for_none_and_a_clash_refused(
        launcher, configured, expected, monkeypatch):
    """`accelerate launch --mixed_precision X` (or its config file's key) is not silently dropped: a run
    whose train.mixed_precision is no trains in X (and records it); two different precisions are refused."""
    from prompttune.processes import launch_mixed_precision

    monkeypatch.setenv("WORLD_SIZE", "2")
    if launcher is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    if expected is None:
        with pytest.raises(ConfigError, match="accelerate launch asks for mixed precision fp16"):
            launch_mixed_precision(configured)
    else:
        assert launch_mixed_precision(configured) == expected
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: no launcher to listen to
    assert launch_mixed_precision("no") == "no"

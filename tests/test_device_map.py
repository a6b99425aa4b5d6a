"""`device_map` (and `max_memory`): a model placed across devices as it loads (accelerate's big-model
inference through transformers' `from_pretrained(device_map=...)`), trained where the map put it.

The CPU-only checks here: `device_map: auto` loads, trains, saves and evaluates (everything lands on
the CPU); a model dispatched over several map entries is trained without being moved, its batches
on its input device; bad values are one-line errors, and a map that would offload weights to disk
is refused.
"""

from __future__ import annotations

import json

import pytest
import torch

from contract import EXAMPLES
from prompttune import TaskSpec, TrainConfig, build_classifier, load_artifact, train
from prompttune.backbones import input_device, is_dispatched, load_backbone
from prompttune.cli import main
from prompttune.config import load_config
from prompttune.errors import ConfigError, ModelError

RUN = ("prompt: {{template: '{{text}} it was {{mask}} .', verbalizer: {{'0': bad, '1': good}}}}\n"
       "method: {{name: {method}, prompt_length: 3, lora_rank: 4}}\n"
       "train: {{epochs: 2, lr: 0.01, batch_size: 4, max_length: 64, progress: false}}\n")


def write_run(tmp_path, model_dir, method: str, extra: str = "") -> str:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(ex) + "\n" for ex in EXAMPLES))
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {model_dir}\ntask: {{train: {data}, eval: {data}, text_fields: [text]}}\n"
                      + RUN.format(method=method) + extra)
    return str(config)


@pytest.mark.parametrize("method", ["p-tuning-v2", "lora"])
def test_device_map_auto_loads_trains_and_evaluates(method, gpt2_dir, tmp_path):
    config = write_run(tmp_path, gpt2_dir, method, "device_map: auto\nmax_memory: {cpu: 2GiB}\n")
    out = tmp_path / "run"
    assert main(["train", config, "--out", str(out)]) == 0
    assert json.loads((out / "eval.json").read_text())["n"] == len(EXAMPLES)
    loaded, _ = load_artifact(out)  # the artifact holds the task, not the placement
    assert not is_dispatched(loaded.model)


def test_a_dispatched_model_trains_where_the_map_put_it(gpt2_dir):
    """A model spread over several map entries (here all on the CPU: the same code path as several
    GPUs) is not moved by `train`; soft prompts and prefixes live on its input device; the loss falls."""
    from accelerate import dispatch_model

    backbone = load_backbone(str(gpt2_dir))
    layers = {f"transformer.h.{i}": "cpu" for i in range(backbone.model.config.n_layer)}
    device_map = {"transformer.wte": "cpu", "transformer.wpe": "cpu", **layers, "transformer.ln_f": "cpu", "lm_head": "cpu"}
    dispatch_model(backbone.model, device_map=device_map)
    assert is_dispatched(backbone.model) and input_device(backbone.model) == torch.device("cpu")
    spec = TaskSpec(max_length=64, method=["prompt-tuning", "lora"], model=str(gpt2_dir), text_fields=["text"],
                    labels=["0", "1"], template="{soft:2} {text} it was {mask} .",
                    verbalizer={"0": ["bad"], "1": ["good"]}, options={"lora_rank": 4})
    torch.manual_seed(0)
    clf, _ = build_classifier(spec, backbone)
    hooks = {name: getattr(m, "_hf_hook", None) for name, m in clf.model.named_modules()}
    result = train(clf, EXAMPLES, EXAMPLES, TrainConfig(epochs=4, lr=0.05, batch_size=4, progress=False))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"], result.history
    assert {name: getattr(m, "_hf_hook", None) for name, m in clf.model.named_modules()} == hooks, (
        "training changed the model's device-map hooks")


@pytest.mark.parametrize(("raw", "message"), [
    ({"device_map": "gpu"}, r"device_map must be one of \['auto', 'balanced', 'balanced_low_0', 'sequential'\] or null, got 'gpu'"),
    ({"max_memory": {"cpu": "2GiB"}}, "max_memory caps what device_map places on each device: set device_map"),
    ({"device_map": "auto", "max_memory": {"cpu": "plenty"}}, "max_memory.cpu: 'plenty' is not a size"),
    ({"device_map": "auto", "max_memory": {"disk": "2GiB"}}, "max_memory: 'disk' is not a device"),
])
def test_bad_placement_is_a_one_line_config_error(raw, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config(raw={"method": {"name": "finetune"}, **raw})
    assert "\n" not in str(error.value)


def test_max_memory_takes_gpu_indices_from_set():
    cfg = load_config(raw={"method": {"name": "finetune"}, "device_map": "auto"}, overrides=["max_memory.0=20GiB",
                                                                                             "max_memory.cpu=2GiB"])
    assert cfg.max_memory == {0: "20GiB", "cpu": "2GiB"}


def test_a_map_that_offloads_weights_is_refused(gpt2_dir, tmp_path, capsys):
    with pytest.raises(ModelError, match="device_map placed .* weights .* off the devices"):
        load_backbone(str(gpt2_dir), device_map="auto", max_memory={"cpu": "20KiB"})
    config = write_run(tmp_path, gpt2_dir, "lora", "device_map: auto\nmax_memory: {cpu: 20KiB}\n")
    assert main(["train", config, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prompttune train: error: device_map placed"), err

"""A quantized frozen base (QLoRA's setting): `quantization: nf4 | fp4 | int8` through bitsandbytes.

On tiny GPT-2 and BERT, on the CPU: LoRA and prompt methods train on a 4-bit base (the loss falls),
the base's quantized bytes are bit-identical after training (evaluations between epochs included),
the trained parameters are full precision, the artifact holds exactly them (no base weight), it
reloads on the quantized base to the same scores and on the unquantized base with a one-line note.
A classification head stays in full precision and trains. Bad values, a missing backend and methods
that would train quantized weights are one-line errors.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from contract import EXAMPLES, eval_loss, scores
from prompttune import TaskSpec, TrainConfig, build_classifier, load_artifact, load_backbone, save_artifact, train
from prompttune import quantization
from prompttune.config import load_config
from prompttune.errors import ArtifactError, ConfigError

bnb = pytest.importorskip("bitsandbytes", reason="quantization tests need bitsandbytes: pip install 'prompttune[quantization]'")

TEMPLATE = "{text} it was {mask} ."
VERBALIZER = {"0": ["bad", "wonderful"], "1": ["good"]}
TRAIN = TrainConfig(epochs=4, lr=1e-2, batch_size=4, progress=False, max_length=64)
# (method, options, quantization): the variants trained once each (module scope) and checked below.
VARIANTS = {
    "lora": ("lora", {}, "nf4"),
    "prompt-tuning": ("prompt-tuning", {}, "nf4"),
    "p-tuning-v2": ("p-tuning-v2", {"prompt_length": 4}, "nf4"),
    "lora:int8": ("lora", {}, "int8"),
    "adapter:fp4": ("adapter", {}, "fp4"),
}


def spec_for(method: str, model_dir, **options) -> TaskSpec:
    head = options.get("head", False)
    template = None if head else ("{soft:4} " + TEMPLATE if method in ("prompt-tuning", "p-tuning") else TEMPLATE)
    return TaskSpec(method=method, model=str(model_dir), text_fields=["text"], labels=["0", "1"], template=template,
                    verbalizer=None if head else VERBALIZER, max_length=64, options=options)


def base_state(clf) -> dict[str, torch.Tensor]:
    """Every tensor of the backbone's state that is not trained (quantized bytes, their scales, the rest), copied."""
    trained = {n.removeprefix("model.") for n, p in clf.named_parameters() if p.requires_grad}
    return {n: t.detach().clone() for n, t in clf.model.state_dict().items() if n not in trained}


def quantized_layers(model) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]


@pytest.fixture(scope="module")
def trained(gpt2_dir, tmp_path_factory):
    """key → (spec, classifier, fingerprint, base state before training, loss before, loss after, artifact dir)."""
    cache = {}

    def get(key: str):
        if key not in cache:
            method, options, q = VARIANTS[key]
            spec = spec_for(method, gpt2_dir, **options)
            torch.manual_seed(0)
            clf, fp = build_classifier(spec, quantization=q)
            before, loss_before = base_state(clf), eval_loss(clf)
            train(clf, EXAMPLES, EXAMPLES, TRAIN)  # a dev evaluation (no-grad, eval mode) after every epoch
            out = tmp_path_factory.mktemp(key.replace(":", "_"))
            save_artifact(out, spec, clf, fp)
            cache[key] = (spec, clf, fp, before, loss_before, eval_loss(clf), out)
        return cache[key]

    return get


# --- training on a quantized base ---------------------------------------------------------


@pytest.mark.parametrize("key", list(VARIANTS))
def test_the_base_is_quantized_and_training_lowers_the_loss(key, trained):
    spec, clf, _, _, loss_before, loss_after, _ = trained(key)
    layers = quantized_layers(clf.model)
    assert layers, f"{key}: no bitsandbytes layer in the model: the base was not quantized"
    bits = torch.uint8 if VARIANTS[key][2] != "int8" else torch.int8
    assert all(m.weight.dtype == bits for m in layers), f"{key}: quantized weights should be stored as {bits}"
    assert quantization.quantization_of(clf.model) == VARIANTS[key][2]
    assert loss_after < loss_before - 0.05, f"{key} on a quantized base: loss {loss_before:.3f} → {loss_after:.3f} did not fall"


@pytest.mark.parametrize("key", list(VARIANTS))
def test_the_quantized_base_is_bit_identical_after_training_and_evaluation(key, trained):
    _, clf, _, before, _, _, _ = trained(key)
    after = base_state(clf)
    assert after.keys() == before.keys(), f"{key}: the base's state changed its keys: {sorted(after.keys() ^ before.keys())[:5]}"
    changed = [n for n in before if before[n].dtype != after[n].dtype or not torch.equal(before[n], after[n])]
    assert not changed, f"{key}: training or evaluation changed base tensors (quantized bytes or scales): {changed[:5]}"


@pytest.mark.parametrize("key", list(VARIANTS))
def test_the_trained_parameters_are_full_precision_and_the_artifact_holds_only_them(key, trained):
    _, clf, _, _, _, _, out = trained(key)
    trainable = {n: p for n, p in clf.named_parameters() if p.requires_grad}
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values()), \
        f"{key}: trained parameters should be float32: { {n: p.dtype for n, p in trainable.items()} }"
    assert not any(quantization.is_quantized_parameter(p) for p in trainable.values())
    stored = load_file(str(out / "weights.safetensors"))
    base_names = {f"model.{n}" for n, _ in clf.model.named_parameters() if ".lora_" not in n} | \
                 {f"model.{n}" for n in clf.model.state_dict() if ".lora_" not in n}
    assert not set(stored) & base_names, f"{key}: the artifact holds base weights: {sorted(set(stored) & base_names)[:5]}"
    assert all(t.dtype == torch.float32 for t in stored.values()), f"{key}: stored tensors should be float32"
    base_bytes = sum(t.numel() * t.element_size() for t in clf.model.state_dict().values())
    stored_bytes = sum(t.numel() * t.element_size() for t in stored.values())
    assert stored_bytes < base_bytes / 4, f"{key}: the artifact stores {stored_bytes} bytes of a {base_bytes}-byte base"
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == VARIANTS[key][2], "config.json should record the base's quantization"


def test_the_fingerprint_of_a_quantized_base_leaves_out_the_weights_sample_and_keeps_the_embeddings(gpt2_dir, trained):
    _, clf, fp, _, _, _, _ = trained("lora")
    plain = load_backbone(str(gpt2_dir))
    assert type(clf.model.get_input_embeddings()) is torch.nn.Embedding, "bitsandbytes should leave the embeddings as they are"
    assert "weights_sample_sha256" not in fp, "a quantized base's packed weights are not the checkpoint's values"
    assert fp["embedding_sha256"] == plain.fingerprint()["embedding_sha256"], "the embeddings are not quantized"


# --- reloading ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(VARIANTS))
def test_an_artifact_reloads_on_the_quantized_base_to_the_same_scores(key, trained, capsys):
    _, clf, _, _, _, _, out = trained(key)
    reloaded, config = load_artifact(out)
    assert quantization.quantization_of(reloaded.model) == VARIANTS[key][2], "a task reloads on the base it trained on"
    assert torch.allclose(scores(reloaded), scores(clf), atol=1e-6), f"{key}: reloaded scores differ"
    assert "note:" not in capsys.readouterr().err, "the same quantization needs no note"


def test_an_artifact_loads_on_the_unquantized_base_with_a_one_line_note(gpt2_dir, trained, capsys):
    spec, clf, _, _, _, _, out = trained("lora")
    capsys.readouterr()
    for load in (lambda: load_artifact(out, quantization="none"), lambda: load_artifact(out, load_backbone(str(gpt2_dir)))):
        plain, _ = load()
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "nf4-quantized base" in err[0] and "unquantized base" in err[0], err
        assert quantization.quantization_of(plain.model) == "none" and not quantized_layers(plain.model)
        lora = {n: p for n, p in plain.named_parameters() if ".lora_" in n}
        assert lora and all(torch.equal(p, dict(clf.named_parameters())[n]) for n, p in lora.items())
        assert torch.isfinite(scores(plain)).all()


def test_a_head_and_pooler_stay_full_precision_and_train(bert_dir):
    spec = spec_for("lora", bert_dir, head=True)
    torch.manual_seed(0)
    clf, _ = build_classifier(spec, quantization="nf4")
    for name in ("classifier", "bert.pooler.dense"):
        module = clf.model.get_submodule(name)
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        assert type(base) is torch.nn.Linear and base.weight.dtype == torch.float32, f"{name} should stay full precision"
        assert base.weight.requires_grad, f"{name} is new (the checkpoint lacks it) and should train"
    assert quantized_layers(clf.model), "the encoder's layers should be quantized"
    loss_before = eval_loss(clf)
    train(clf, EXAMPLES, None, TRAIN)
    assert eval_loss(clf) < loss_before - 0.05


def test_a_run_config_trains_on_a_quantized_base_and_records_it(gpt2_dir, tmp_path):
    from prompttune.recipes import run_training

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(ex) + "\n" for ex in EXAMPLES))
    cfg = load_config(raw={"model": str(gpt2_dir), "quantization": "nf4",
                           "task": {"train": str(data), "text_fields": ["text"]},
                           "prompt": {"template": TEMPLATE, "verbalizer": VERBALIZER},
                           "method": {"name": "lora"}, "train": {"epochs": 1, "batch_size": 4, "max_length": 64,
                                                                 "progress": False}})
    run_training(cfg, tmp_path / "run", log=lambda _: None)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["quantization"] == "nf4"


def test_a_pool_serves_tasks_on_a_quantized_backbone(trained):
    from prompttune.serving import TaskPool

    _, clf, _, _, _, _, out = trained("lora")
    for pool in (TaskPool(device="cpu", dtype="float32", quantization="nf4"), TaskPool(device="cpu", dtype="float32")):
        pool.add(out, "sentiment")  # the second pool takes the quantization the task records
        assert quantization.quantization_of(pool.backbone.model) == "nf4"
        got = torch.tensor([[p.probabilities[label] for label in ("0", "1")] for p in pool.predict("sentiment", EXAMPLES)])
        assert torch.allclose(got, scores(clf).softmax(-1), atol=1e-5)


# --- what is refused ------------------------------------------------------------------------


BASE_CONFIG = {"model": "tiny", "task": {"text_fields": ["text"]}, "prompt": {"template": TEMPLATE, "verbalizer": VERBALIZER}, "method": {"name": "lora"}}


@pytest.mark.parametrize("value", ["nf3", "4bit", True])
def test_a_bad_quantization_value_is_one_line_naming_the_key(value):
    with pytest.raises(ConfigError) as e:
        load_config(raw={**BASE_CONFIG, "quantization": value})
    assert "quantization" in str(e.value) and "\n" not in str(e.value)


def test_a_missing_backend_is_one_line_naming_the_install(monkeypatch, gpt2_dir):
    monkeypatch.setattr(quantization, "backend_installed", lambda: False)
    for attempt in (lambda: load_config(raw={**BASE_CONFIG, "quantization": "nf4"}),
                    lambda: load_backbone(str(gpt2_dir), quantization="nf4")):
        with pytest.raises(ConfigError, match=r"quantization: nf4 needs the bitsandbytes package: pip install") as e:
            attempt()
        assert "\n" not in str(e.value)
    assert load_config(raw={**BASE_CONFIG, "quantization": "none"}).quantization == "none", "none needs no backend"


@pytest.mark.parametrize(("method", "head"), [("prompt-finetune", False), ("finetune", True), (["p-tuning", "prompt-finetune"], False)])
def test_methods_that_train_the_base_weights_are_refused_in_one_line(method, head, gpt2_dir):
    raw = {**BASE_CONFIG, "quantization": "nf4", "method": {"name": method}}
    if head:
        raw = {"model": "tiny", "quantization": "nf4", "method": {"name": method}}
    with pytest.raises(ConfigError, match="trains every weight of the base model, but quantization: nf4 stores them in 4 bits") as e:
        load_config(raw=raw)
    assert "\n" not in str(e.value)
    name = method if isinstance(method, str) else method[1]
    with pytest.raises(ConfigError, match="cannot train"):
        build_classifier(spec_for(name, gpt2_dir, head=head), quantization="int8")


def test_a_hand_edited_quantization_in_config_json_is_refused(trained, tmp_path):
    import shutil

    _, _, _, _, _, _, out = trained("lora")
    copy = tmp_path / "task"
    shutil.copytree(out, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "quantization": "nf2"}))
    with pytest.raises(ArtifactError, match="key 'quantization' holds \"nf2\""):
        load_artifact(copy)


@pytest.mark.parametrize("method", ["lora", "p-tuning-v2"])
def test_a_quantized_base_trains_with_gradient_checkpointing(method, gpt2_dir):
    import dataclasses

    torch.manual_seed(0)
    clf, _ = build_classifier(spec_for(method, gpt2_dir, **({"prompt_length": 4} if method != "lora" else {})),
                              quantization="nf4")
    before, loss_before = base_state(clf), eval_loss(clf)
    train(clf, EXAMPLES, None, dataclasses.replace(TRAIN, gradient_checkpointing=True))
    assert eval_loss(clf) < loss_before - 0.05, f"{method} with gradient checkpointing on a 4-bit base did not learn"
    assert all(torch.equal(before[n], t) for n, t in base_state(clf).items()), "the quantized base changed"


# --- the command line and export on a quantized task ----------------------------------------


def test_a_qlora_task_exports_to_peft_checked_on_its_quantized_base(trained, tmp_path):
    """PEFT users load a QLoRA adapter on the 4-bit base it was trained on: the export's check runs there
    (on an unquantized base the outputs differ by the quantization error, and the export was refused)."""
    from prompttune.export import ADAPTER_CONFIG, export_peft

    _, _, _, _, _, _, out = trained("lora")
    adapter = export_peft(out, tmp_path / "peft")
    assert json.loads((adapter / ADAPTER_CONFIG).read_text())["peft_type"] == "LORA"


def test_eval_takes_the_trained_dtype_and_quantization_unless_given_and_says_when_it_differs(trained, tmp_path, capsys):
    from prompttune.cli import main

    _, _, _, _, _, _, out = trained("lora")
    data = tmp_path / "data.tsv"
    data.write_text("label\ttext\n" + "".join(f"{ex['label']}\t{ex['text']}\n" for ex in EXAMPLES))
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(data), "--json", "--device", "cpu"]) == 0
    same = capsys.readouterr()
    assert "note:" not in same.err, f"loaded as trained, yet: {same.err}"
    assert main(["eval", str(out), "--data", str(data), "--json", "--device", "cpu", "--quantization", "none",
                 "--dtype", "bfloat16"]) == 0
    other = capsys.readouterr()
    notes = [line for line in other.err.splitlines() if line.startswith("note:")]
    assert len(notes) == 2 and any("unquantized base" in n for n in notes) and any("bfloat16" in n for n in notes), notes
    assert json.loads(other.out)["n"] == json.loads(same.out)["n"] == len(EXAMPLES)

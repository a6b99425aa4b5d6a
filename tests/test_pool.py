"""The task pool (serving.TaskPool): what a task costs, loading and unloading while serving, refusals.

Memory is checked by identity, not timing: every tensor the pool's tasks hold is either one of the
backbone's own or one the task's artifact stores (plus an in-context task's demonstration
keys/values); a head task's classification model is the backbone's modules under its own head.
"""

from __future__ import annotations

import shutil
import threading

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForMaskedLM

from prompttune import TaskSpec, build_classifier, load_artifact, save_artifact
from prompttune.errors import ConfigError, ModelError
from prompttune.generation import generate
from prompttune.methods.lora import LoraPart
from prompttune.model_parts import kind_state
from prompttune.serving import TaskPool
from test_mixed_batch import EXAMPLES, OWN_COPY, loaded_pool, mismatches, tasks  # noqa: F401 (fixture)


def lora_names(pool: TaskPool) -> set[str]:
    """The adapter names the backbone's LoRA layers hold."""
    return {name for layer in kind_state(pool.backbone.model, LoraPart) or [] for name in layer.lora_A}


def tensors(module: torch.nn.Module) -> dict[int, torch.Tensor]:
    return {t.data_ptr(): t for t in (*module.parameters(), *module.buffers())}


# --- memory ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["bert", "gpt2"])
def test_a_shared_task_adds_what_its_artifact_stores_and_no_model_copy(model, tasks):
    built = tasks(model)
    pool = TaskPool(built["zero-shot"].spec.model, device="cpu")
    backbone = tensors(pool.backbone.model)
    for task in built.values():
        pool.add(task.path, task.name)
    shared = [info for info in pool.tasks() if info.own_model_bytes == 0]
    assert {info.name for info in pool.tasks()} - {info.name for info in shared} == OWN_COPY
    held = {ptr: t for info in shared for ptr, t in tensors(info.classifier).items() if ptr not in backbone}
    added_params = sum(t.numel() for t in held.values() if isinstance(t, torch.nn.Parameter))
    assert added_params == sum(info.stored_numbers for info in shared), "a shared task holds more than its artifact"
    kept = sum(t.numel() * t.element_size() for t in held.values())
    assert kept == sum(info.added_bytes for info in shared)
    for info in shared:
        if info.method == "in-context":  # its demonstrations' keys/values, computed once, stored nowhere
            assert info.stored_numbers == 0 and (info.added_bytes > 0) == bool(info.classifier.context.ids)
        else:
            assert info.added_bytes == 4 * info.stored_numbers, info.name  # fp32
    for info in pool.tasks():
        if info.name in OWN_COPY:
            assert info.own_model_bytes >= sum(t.numel() * 4 for t in backbone.values() if t.is_floating_point()) // 2


def test_a_head_task_is_the_backbones_modules_under_its_own_head(tasks):
    built = tasks("bert")
    pool = loaded_pool({k: built[k] for k in ("lora", "p-tuning-v2-head", "lora-head", "adapter-head")})
    backbone = pool.backbone.model
    for name in ("p-tuning-v2-head", "lora-head", "adapter-head"):
        head = pool._task(name).classifier.model
        assert head.bert.embeddings is backbone.bert.embeddings and head.bert.encoder is backbone.bert.encoder, name
        assert not hasattr(backbone.bert, "pooler") or backbone.bert.pooler is None
        pooler = {p.data_ptr() for p in head.bert.pooler.parameters()}
        assert pooler and pooler.isdisjoint(p.data_ptr() for p in backbone.parameters())
        with safe_open(str(built[name].path / "weights.safetensors"), framework="pt") as f:
            assert "model.bert.pooler.dense.weight" in f.keys(), "the pooler is part of the trained head and its artifact"


# --- loading and unloading --------------------------------------------------------------------------


def test_tasks_load_and_unload_while_another_thread_predicts(tasks):
    built = tasks("bert")
    steady = ("prompt-tuning", "p-tuning-v2", "lora", "adapter-head")
    coming = ("lora-other-targets", "p-tuning+lora", "prefix-tuning")
    pool = loaded_pool({k: built[k] for k in steady}, max_batch_size=5)
    items = [(name, i) for i in range(len(EXAMPLES)) for name in steady]
    errors, done = [], threading.Event()

    def predict():
        try:
            while not done.is_set():
                errors.extend(mismatches(pool, built, items))
        except Exception as e:  # noqa: BLE001 - any crash is the finding
            errors.append(repr(e))

    worker = threading.Thread(target=predict)
    worker.start()
    try:
        for _ in range(3):
            for name in coming:
                pool.add(built[name].path, name)
            errors.extend(mismatches(pool, built, [(name, i) for i in range(3) for name in (*coming, *steady)]))
            for name in coming:
                pool.remove(name)
    finally:
        done.set()
        worker.join()
    assert not errors, errors[:5]
    assert lora_names(pool) == {pool._task("lora").classifier.lora.adapter}, "a removed task left its LoRA adapter"


def test_removing_a_task_frees_what_it_held_and_it_can_be_added_again(tasks):
    built = tasks("gpt2")
    pool = loaded_pool({k: built[k] for k in ("lora", "lora-other-targets", "p-tuning+lora", "in-context")})
    assert lora_names(pool) == {"default", "task1", "task2"}
    pool.remove("lora")
    pool.remove("p-tuning+lora")
    assert lora_names(pool) == {"task1"}
    with pytest.raises(KeyError, match="no task named 'lora'"):
        pool.scores_mixed([("lora", EXAMPLES[0])])
    pool.add(built["p-tuning+lora"].path, "p-tuning+lora")  # takes the freed name
    pool.add(built["lora"].path, "lora")
    assert lora_names(pool) == {"default", "task1", "task2"}
    names = ("lora", "lora-other-targets", "p-tuning+lora", "in-context")
    assert not mismatches(pool, built, [(name, i) for i in range(4) for name in names])
    with pytest.raises(ConfigError, match="already loaded"):
        pool.add(built["lora"].path, "lora")


def test_a_task_for_another_backbone_is_refused_and_the_pool_keeps_serving(bert_dir, tasks, tmp_path):
    other = tmp_path / "other-bert"
    shutil.copytree(bert_dir, other)
    model = AutoModelForMaskedLM.from_pretrained(other)
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(0.01)
    model.save_pretrained(other)
    spec = TaskSpec(method=["p-tuning", "lora"], model=str(other), text_fields=["text"], labels=["0", "1"],
                    template="{soft:2} {text} it was {mask} .", verbalizer={"0": ["bad"], "1": ["good"]},
                    options={"encoder": "mlp", "lora_rank": 2})
    clf, fp = build_classifier(spec)
    save_artifact(tmp_path / "foreign", spec, clf, fp)

    built = tasks("bert")
    pool = loaded_pool({k: built[k] for k in ("lora", "prompt-tuning")})
    before = lora_names(pool)
    with pytest.raises(ModelError, match="embedding_sha256"):
        pool.add(tmp_path / "foreign", "foreign")
    assert [info.name for info in pool.tasks()] == ["lora", "prompt-tuning"]
    assert lora_names(pool) == before, "the refused task left its LoRA adapter on the shared backbone"
    assert not mismatches(pool, built, [(name, i) for i in range(len(EXAMPLES)) for name in ("lora", "prompt-tuning")])


@pytest.mark.parametrize("method, options", [("finetune", {}), ("p-tuning-v2", {"head": True, "prompt_length": 2}),
                                             ("prompt-finetune", {})])
def test_a_task_of_another_checkpoint_is_refused_even_on_its_own_model_copy(method, options, bert_dir, gpt2_dir, tmp_path):
    """Tasks with their own model copy, or a classification model, run on weights of their own: they are
    still refused on a pool of another checkpoint (they would read its tokenizer's ids)."""
    template = None if method != "prompt-finetune" else "{text} it was {mask} ."
    spec = TaskSpec(max_length=64, method=method, model=str(bert_dir), text_fields=["text"], labels=["0", "1"],
                    template=template, verbalizer={"0": ["bad"], "1": ["good"]} if template else None, options=options)
    clf, fp = build_classifier(spec)
    save_artifact(tmp_path / "bert-task", spec, clf, fp)
    pool = TaskPool(str(gpt2_dir), device="cpu")
    with pytest.raises(ModelError, match="model_type: artifact was made for 'bert', backbone has 'gpt2'"):
        pool.add(tmp_path / "bert-task", "bert-task")
    assert pool.tasks() == []


# --- the rest of the API ------------------------------------------------------------------------------


def test_an_input_may_be_a_string_as_on_the_command_line_and_names_are_checked(tasks):
    built = tasks("bert")
    pool = loaded_pool({k: built[k] for k in ("prompt-tuning",)})
    as_text = pool.predict("prompt-tuning", [EXAMPLES[0]["text"], '{"text": "%s"}' % EXAMPLES[1]["text"]])
    as_dicts = pool.predict("prompt-tuning", [{"text": EXAMPLES[0]["text"]}, {"text": EXAMPLES[1]["text"]}])
    assert as_text == as_dicts
    with pytest.raises(ConfigError, match="'has space' cannot be a task name"):
        pool.add(built["prompt-tuning"].path, "has space")


def test_generation_tasks_generate_on_the_shared_backbone_and_are_not_classified(gpt2_dir, tasks, tmp_path):
    spec = TaskSpec(max_length=64, method="p-tuning-v2", model=str(gpt2_dir), text_fields=["text"], labels=[],
                    template="{text} summary : {mask}", generation=True, options={"prompt_length": 3})
    torch.manual_seed(0)
    clf, fp = build_classifier(spec)
    with torch.no_grad():
        clf.deep.prefix.normal_(0, 1)
    save_artifact(tmp_path / "writer", spec, clf, fp)
    built = tasks("gpt2")
    pool = loaded_pool({k: built[k] for k in ("lora", "prompt-tuning")})
    pool.add(tmp_path / "writer", "writer")
    alone, _ = load_artifact(tmp_path / "writer")
    assert pool.generate("writer", EXAMPLES[:3], max_new_tokens=5) == generate(alone, EXAMPLES[:3], max_new_tokens=5)
    with pytest.raises(ConfigError, match="generates text"):
        pool.predict_mixed([("lora", EXAMPLES[0]), ("writer", EXAMPLES[0])])
    assert not mismatches(pool, built, [(name, i) for i in range(3) for name in ("lora", "prompt-tuning")])


def test_predictions_carry_labels_and_probabilities_and_task_info_is_plain_data(tasks):
    built = tasks("bert")
    pool = loaded_pool({k: built[k] for k in ("adapter", "finetune")})
    out = pool.predict_mixed([("adapter", EXAMPLES[0]), ("finetune", EXAMPLES[1])])
    for prediction in out:
        assert set(prediction.probabilities) == {"0", "1"} and abs(sum(prediction.probabilities.values()) - 1) < 1e-6
        assert prediction.label == max(prediction.probabilities, key=prediction.probabilities.get)
    info = {i.name: i.public() for i in pool.tasks()}
    assert "classifier" not in info["adapter"] and info["adapter"]["own_model_bytes"] == 0
    assert info["finetune"]["own_model_bytes"] > 0 and info["finetune"]["added_bytes"] == 0
    with pytest.raises(ConfigError, match="max_batch_size"):
        TaskPool(device="cpu", max_batch_size=0)

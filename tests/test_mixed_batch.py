"""Many tasks, one frozen backbone, one forward pass (serving.mixed_batch, model_parts).

The property: a row of a mixed batch gets exactly what its task loaded on its own computes
(`load_artifact(path)` on a backbone of its own + `predict_scores`), to 1e-5 in fp32, for every pair
of tasks (two tasks of one method too, with different template, prefix and soft-token lengths), on
tiny BERT and GPT-2 in one shared pass and on T5 (grouped per task). Every task has random non-zero
trained numbers, and tasks that read one template differ from each other and from zero-shot, so a
row bound to the wrong task's part would show.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from prompttune import TaskSpec, build_classifier, load_artifact, save_artifact
from prompttune.evaluation import predict_scores
from prompttune.model_parts import bind_parts, kind_state
from prompttune.serving import TaskPool

TEXTS = ["great fun", "a terrible , boring movie .", "very good", "bad and awful film", "it was great",
         "boring , boring , boring and not fun at all , the worst movie"]
EXAMPLES = [{"text": t} for t in TEXTS]
DEMOS = [{"text": "it was great", "label": "1"}, {"text": "a bad film", "label": "0"},
         {"text": "good fun", "label": "1"}, {"text": "so boring", "label": "0"}]

T1, V1 = "{text} it was {mask} .", {"0": ["bad"], "1": ["good"]}
T2, V2 = "the review : {text} . in short , it was {mask} .", {"0": ["bad", "boringly"], "1": ["good", "wonderful"]}
T_FAST = "review : {text} sentiment : {mask}"  # causal fast path: nothing after the mask, one-token words
SECOND_LORA_TARGETS = {"bert": ["query", "key"], "gpt2": ["c_attn", "c_fc"], "t5": ["q", "k"]}

# name: (method, template, verbalizer, options). None templates are head tasks.
TASKS = {
    "zero-shot": ("zero-shot", T1, V1, {}),
    "zero-shot-long": ("zero-shot", T2, V2, {}),
    "prompt-tuning": ("prompt-tuning", "{soft:3} " + T1, V1, {}),
    "prompt-tuning-5": ("prompt-tuning", "{text} {soft:5} {mask} .", V2, {}),
    "p-tuning": ("p-tuning", "{soft:3} " + T1, V1, {"encoder": "mlp"}),
    "prefix-tuning": ("prefix-tuning", T1, V1, {"prompt_length": 2, "reparam_hidden": 16}),
    "p-tuning-v2": ("p-tuning-v2", T2, V2, {"prompt_length": 5}),
    "p-tuning-v2-3": ("p-tuning-v2", T1, V1, {"prompt_length": 3}),
    "lora": ("lora", T1, V1, {"lora_rank": 2}),
    "lora-other-targets": ("lora", T2, V2, {"lora_rank": 4}),
    "lora-merged": ("lora", T1, V1, {"lora_rank": 2, "merge": True}),
    "adapter": ("adapter", T1, V1, {}),
    "adapter-pfeiffer": ("adapter", T2, V2, {"adapter_kind": "pfeiffer", "reduction_factor": 4}),
    "p-tuning+lora": (["p-tuning", "lora"], "{soft:2} " + T1, V1, {"encoder": "mlp", "lora_rank": 2}),
    "p-tuning-v2+adapter": (["p-tuning-v2", "adapter"], T1, V1, {"prompt_length": 4}),
    "p-tuning-v2-head": ("p-tuning-v2", None, None, {"head": True, "prompt_length": 3}),
    "lora-head": ("lora", None, None, {"head": True, "lora_rank": 2}),
    "adapter-head": ("adapter", None, None, {"head": True}),
    "bitfit": ("bitfit", T1, V1, {}),
    "prompt-finetune": ("prompt-finetune", T1, V1, {}),
    "finetune": ("finetune", None, None, {}),
}
CAUSAL_ONLY = {
    "prefix-fast": ("prefix-tuning", T_FAST, V1, {"prompt_length": 3}),
    "in-context": ("in-context", T_FAST, V1, {"context_examples": 4, "instruction": "classify the review", "calibrate": True}),
    "in-context-2": ("in-context", T1, V2, {"context_examples": 2}),
    "in-context-cot": ("in-context", T_FAST, V1, {"context_examples": 0, "chain_of_thought": "zero-shot",
                                                  "max_reasoning_tokens": 3}),
}
NOT_ON_T5 = {"bitfit", "p-tuning-v2-head", "lora-head", "adapter-head", "finetune"}  # no biases; no head model here
OWN_COPY = {"bitfit", "prompt-finetune", "finetune"}  # they change the backbone's own weights
MERGED = {"lora-merged"}  # served unmerged in a pool: equal to the merged task to float tolerance (1e-4)


def tasks_for(model: str) -> dict:
    tasks = {**TASKS, **(CAUSAL_ONLY if model == "gpt2" else {})}
    if model == "t5":
        tasks = {k: v for k, v in tasks.items() if k not in NOT_ON_T5}
    return tasks


@dataclass
class Task:
    name: str
    path: Path
    spec: TaskSpec
    reference: torch.Tensor  # (len(EXAMPLES), classes): the task loaded alone


def make_task(name: str, entry: tuple, model: str, model_dir: Path, out: Path, seed: int) -> Task:
    """Build the task, give every number it trains random non-zero values, save it, and score it loaded alone."""
    method, template, verbalizer, options = entry
    if name == "lora-other-targets":
        options = {**options, "target_modules": SECOND_LORA_TARGETS[model]}
    spec = TaskSpec(method=method, model=str(model_dir), text_fields=["text"], labels=["0", "1"], template=template,
                    verbalizer=verbalizer, options=options, max_length=32,
                    demonstrations=DEMOS[: options.get("context_examples", 0)] if method == "in-context" else None)
    torch.manual_seed(seed)
    clf, fp = build_classifier(spec, head_seed=seed)
    with torch.no_grad():
        for p in clf.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    save_artifact(out / name, spec, clf, fp)
    alone, _ = load_artifact(out / name)
    return Task(name, out / name, spec, predict_scores(alone, EXAMPLES))


_BUILT: dict[str, dict[str, Task]] = {}


@pytest.fixture
def tasks(request, tmp_path_factory):
    """tasks(model) -> {name: Task} for "bert", "gpt2" or "t5": built and saved once per session."""

    def get(model: str) -> dict[str, Task]:
        if model not in _BUILT:
            model_dir = request.getfixturevalue(f"{model}_dir")
            out = tmp_path_factory.mktemp(f"tasks_{model}")
            _BUILT[model] = {name: make_task(name, entry, model, model_dir, out, seed)
                             for seed, (name, entry) in enumerate(tasks_for(model).items())}
        return _BUILT[model]

    return get


def loaded_pool(tasks: dict[str, Task], **kwargs) -> TaskPool:
    pool = TaskPool(device="cpu", **kwargs)
    for task in tasks.values():
        pool.add(task.path, task.name)
    return pool


def tolerance(*names: str) -> float:
    return 1e-4 if MERGED & set(names) else 1e-5


def mismatches(pool: TaskPool, tasks: dict[str, Task], items: list[tuple[str, int]]) -> list[str]:
    """Where the pool's scores for (task, example index) items differ from the task loaded alone."""
    got = pool.scores_mixed([(name, EXAMPLES[i]) for name, i in items])
    bad = []
    for (name, i), scores in zip(items, got):
        diff = float((scores - tasks[name].reference[i]).abs().max())
        if diff > tolerance(name):
            bad.append(f"{name} example {i}: off by {diff:.2e}")
    return bad


# --- the tasks prove something --------------------------------------------------------------


@pytest.mark.parametrize("model", ["bert", "gpt2", "t5"])
def test_tasks_reading_one_template_differ_from_each_other_and_from_zero_shot(model, tasks):
    built = tasks(model)
    by_prompt: dict[str, list[Task]] = {}
    for task in built.values():
        by_prompt.setdefault(f"{task.spec.template} {task.spec.verbalizer}", []).append(task)
    assert len(by_prompt[f"{T1} {V1}"]) >= 5, "the check needs many tasks on one template"
    same = [f"{a.name} = {b.name}" for group in by_prompt.values() for a, b in itertools.combinations(group, 2)
            if torch.allclose(a.reference, b.reference, atol=1e-3)]
    assert not same, f"tasks whose numbers change nothing (a wrong binding could not show): {same}"


# --- exactness --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["bert", "gpt2", "t5"])
def test_every_pair_of_tasks_in_one_batch_scores_as_each_task_alone(model, tasks):
    built = tasks(model)
    pool = loaded_pool(built)
    bad = []
    for a, b in itertools.combinations(built, 2):
        items = [(name, i) for i in range(3) for name in (a, b)]  # rows interleaved
        bad += [f"[{a} + {b}] {m}" for m in mismatches(pool, built, items)]
    assert not bad, f"{len(bad)} mismatches, e.g. {bad[:8]}"


@pytest.mark.parametrize("model", ["bert", "gpt2"])
@pytest.mark.parametrize("max_batch_size", [64, 7])
def test_all_tasks_interleaved_score_as_each_alone_in_one_pass_or_in_chunks(model, max_batch_size, tasks):
    built = tasks(model)
    pool = loaded_pool(built, max_batch_size=max_batch_size)
    items = [(name, i) for i in range(len(EXAMPLES)) for name in built]
    assert not mismatches(pool, built, items)


@pytest.mark.parametrize("model", ["bert", "gpt2"])
def test_rows_of_one_length_score_as_each_task_alone_without_a_padding_mask(model, tasks):
    """Same template, same text: no padding, so the model passes no mask and per-row prefixes make their own."""
    built = tasks(model)
    names = [name for name, task in built.items() if task.spec.template == T1 and name not in MERGED]
    assert {"prefix-tuning", "p-tuning-v2-3", "zero-shot"} <= set(names)
    pool = loaded_pool({name: built[name] for name in names})
    assert not mismatches(pool, built, [(name, 0) for name in names])


@pytest.mark.parametrize("model", ["bert", "gpt2"])
def test_a_mixed_batch_runs_the_shared_backbone_once(model, tasks):
    built = {k: v for k, v in tasks(model).items() if k != "in-context-cot"}  # it generates its reasoning first
    pool = loaded_pool(built, max_batch_size=1024)
    items = [(name, ex) for ex in EXAMPLES for name in built]
    pool.scores_mixed(items)  # a calibrated in-context task scores its content-free inputs once, the first time
    calls = []
    hook = pool.backbone.model.base_model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        pool.scores_mixed(items)
    finally:
        hook.remove()
    assert len(calls) == 1, f"the shared backbone ran {len(calls)} times for one mixed batch"


def test_one_task_binds_the_fast_path_and_a_mixed_batch_per_row(tasks):
    """One task (every training step) binds its parts for every row as before; several bind per row."""
    from prompttune.deep_prompts import _PREFIX, KeyValuePrefix
    from prompttune.methods.lora import _ROWS, LoraPart
    from prompttune.soft_prompts import SoftPrompt

    built = tasks("bert")
    pool = loaded_pool({k: built[k] for k in ("p-tuning+lora", "p-tuning-v2+adapter", "lora")})
    model = pool.backbone.model
    one, other = (pool._task(name).classifier for name in ("p-tuning+lora", "p-tuning-v2+adapter"))
    bind_parts(model, [(one.parts(), None)])
    assert kind_state(model, SoftPrompt)["rows"] is None
    assert all(layer.__dict__[_ROWS] in (None, one.lora.adapter) for layer in kind_state(model, LoraPart))
    bind_parts(model, [(one.parts(), torch.tensor([0, 2])), (other.parts(), torch.tensor([1]))])
    assert kind_state(model, SoftPrompt)["rows"] is not None
    site = kind_state(model, KeyValuePrefix).sites[0].module
    assert site.__dict__[_PREFIX][0].rows is not None, "per-row prefixes carry each row's group"
    names = {tuple(layer.__dict__[_ROWS]) for layer in kind_state(model, LoraPart)}
    assert names == {(one.lora.adapter, "__base__", one.lora.adapter)}


def test_lora_layers_carry_a_hook_only_while_rows_are_named(tasks):
    """The fast path (one task, every training step) runs peft's LoRA layers with no hook of ours at all."""
    from prompttune.methods.lora import LoraPart

    built = tasks("bert")
    pool = loaded_pool({k: built[k] for k in ("p-tuning+lora", "lora")})
    model = pool.backbone.model
    one, other = (pool._task(name).classifier for name in ("p-tuning+lora", "lora"))
    layers = kind_state(model, LoraPart)

    def hooks_match_rows() -> bool:  # a hook exactly where rows are named
        return all(len(layer._forward_pre_hooks) == (layer.__dict__["_prompttune_lora_rows"] is not None)
                   for layer in layers)

    fast = []
    for task in (one, other):  # the task whose adapter peft has active runs peft's own forward everywhere
        bind_parts(model, [(task.parts(), None)])
        assert hooks_match_rows()
        fast.append(all(not layer._forward_pre_hooks for layer in layers))
    assert any(fast), "no task took the fast path: every LoRA layer kept a hook"
    bind_parts(model, [(one.parts(), torch.tensor([0, 2])), (other.parts(), torch.tensor([1]))])
    assert {len(layer._forward_pre_hooks) for layer in layers} == {1}, "a mixed batch names rows through one hook per layer"
    bind_parts(model, [(one.parts(), torch.tensor([0])), (other.parts(), torch.tensor([1]))])
    assert {len(layer._forward_pre_hooks) for layer in layers} == {1}, "binding rows again added a second hook"
    bind_parts(model, [((one, other)[fast.index(True)].parts(), None)])
    assert all(not layer._forward_pre_hooks for layer in layers), "the hook stayed after the mixed batch"

"""A reload reproduces the trained task, always.

Loading creates every weight the checkpoint lacks (a new classification head; BERT's pooler when
the checkpoint is a masked LM). Such a weight is either trained, and then saved with the task, or
the task is refused with the weights named; and what a load creates comes from a fixed seed, not
from the caller's random state. So two independent loads of a saved task score bit-identically,
and exactly as the trained classifier did.

The reported case: LoRA with a head on a masked-LM BERT and `target_modules: [query, key, value,
dense]`. `dense` also matches `bert.pooler.dense`, which the checkpoint lacks. It is fixed, not
refused: the pooler is part of the new head like `classifier` (RoBERTa's head even has its own
`classifier.dense`, which `dense` matches too), so it trains in full beside its LoRA update and is
saved. peft wraps it (`pooler.dense.base_layer.weight`), so the head is found by tensor, not by name.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import test_methods
import test_weight_methods
from contract import scores, trained_fixture
from prompttune import TaskSpec, TrainConfig, build_classifier, load_artifact, save_artifact
from prompttune.backbones import fresh_parameters, load_head_model
from prompttune.errors import ArtifactError, ConfigError

MODELS = ["bert_dir", "gpt2_dir"]
LORA_ON_THE_HEAD = {  # target_modules that also match a module the checkpoint lacks
    "bert_dir": ["query", "key", "value", "dense"],  # bert.pooler.dense
    "gpt2_dir": ["score"],  # GPT-2's new classification head (c_attn beside it would mix Conv1D and Linear)
}
# A case key is "suite/variant": the contract suites' own specs, plus the reported LoRA case.
CASES = [f"methods/{m}" for m in test_methods.METHODS] + [f"weights/{v}" for v in test_weight_methods.VARIANTS] + ["lora-on-the-head"]


def task_spec(case: str, model_dir) -> TaskSpec:
    suite, _, variant = case.partition("/")
    if suite == "methods":
        return test_methods.task_spec(variant, model_dir)
    if suite == "weights":
        return test_weight_methods.task_spec(variant, model_dir)
    targets = LORA_ON_THE_HEAD["gpt2_dir" if "gpt2" in str(model_dir) else "bert_dir"]
    return TaskSpec(method="lora", model=str(model_dir), text_fields=["text"], labels=["0", "1"],
                    options={"lora_rank": 4, "head": True, "target_modules": targets})


def train_config(case: str) -> TrainConfig:
    suite, _, variant = case.partition("/")
    if suite == "methods":
        return test_methods.train_config(variant)
    return test_weight_methods.TRAIN


trained = trained_fixture(task_spec, train_config)


def load_twice(directory) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of two independent loads, each made from a different random state."""
    torch.manual_seed(1)
    first, _ = load_artifact(directory)
    torch.manual_seed(2)
    second, _ = load_artifact(directory)
    return scores(first), scores(second)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("case", CASES)
def test_two_loads_score_bit_identically_and_as_the_trained_task(case, model, trained, tmp_path):
    t = trained(case, model)
    save_artifact(tmp_path, t.spec, t.classifier, t.fingerprint)
    expected = scores(t.classifier)
    first, second = load_twice(tmp_path)
    assert torch.equal(first, second), f"{case} on {model}: two loads differ by {float((first - second).abs().max()):.3g}"
    assert torch.equal(first, expected), f"{case} on {model}: a load differs from the trained task by {float((first - expected).abs().max()):.3g}"


@pytest.mark.parametrize("model", MODELS)
def test_lora_on_a_module_the_checkpoint_lacks_trains_and_saves_it(model, trained, tmp_path):
    t = trained("lora-on-the-head", model)
    fresh = {id(p) for p in fresh_parameters(t.classifier.model)}
    wrapped = {n for n, p in t.classifier.named_parameters() if id(p) in fresh and ".base_layer." in n}
    assert wrapped, f"the case should have LoRA wrap a weight the checkpoint lacks; fresh: {len(fresh)}"
    save_artifact(tmp_path, t.spec, t.classifier, t.fingerprint)
    saved = set(load_file(str(tmp_path / "weights.safetensors")))
    assert wrapped <= saved, f"weights created at load but not saved: {sorted(wrapped - saved)}"
    assert not any(torch.equal(t.before[n], p) for n, p in t.classifier.named_parameters() if n in wrapped), \
        "the wrapped head weights did not train"


@pytest.mark.parametrize("model", MODELS)
def test_loading_a_head_model_is_deterministic_and_leaves_the_callers_random_state(model, request):
    path = str(request.getfixturevalue(model))
    torch.manual_seed(5)
    state = torch.get_rng_state()
    first = load_head_model(path, 2)
    assert torch.equal(torch.get_rng_state(), state), "loading drew from the caller's random numbers"
    torch.manual_seed(6)
    second = load_head_model(path, 2)
    a, b = dict(first.named_parameters()), dict(second.named_parameters())
    fresh = {n for n, p in a.items() if any(p is q for q in fresh_parameters(first))}
    assert fresh, "the head model should have weights its checkpoint lacks"
    assert all(torch.equal(a[n], b[n]) for n in fresh), "weights created at load differ between loads"


@pytest.fixture(scope="module")
def bert_lacking_a_weight(bert_dir, tmp_path_factory):
    """The tiny BERT with one encoder weight missing from its checkpoint."""
    import shutil

    out = tmp_path_factory.mktemp("bert_lacking")
    shutil.copytree(bert_dir, out, dirs_exist_ok=True)
    weights = load_file(str(out / "model.safetensors"))
    del weights["bert.encoder.layer.0.output.dense.weight"]
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.mark.parametrize("method", ["zero-shot", "prompt-tuning", "lora", "adapter"])
def test_a_method_that_leaves_a_missing_weight_frozen_is_refused_naming_it(method, bert_lacking_a_weight):
    spec = test_methods.task_spec(method, bert_lacking_a_weight)
    with pytest.raises(ConfigError, match=r"layer\.0\.output\.dense\..*weight.*the checkpoint of .* lacks them"):
        build_classifier(spec)


def test_a_method_that_trains_the_missing_weight_reloads_exactly(bert_lacking_a_weight, tmp_path):
    spec = test_methods.task_spec("prompt-finetune", bert_lacking_a_weight)
    clf, fp = build_classifier(spec)
    save_artifact(tmp_path, spec, clf, fp)
    first, second = load_twice(tmp_path)
    assert torch.equal(first, second) and torch.equal(first, scores(clf))


def test_an_artifact_of_a_refused_task_is_refused_at_load(bert_lacking_a_weight, bert_dir, tmp_path):
    spec = test_methods.task_spec("zero-shot", bert_dir)
    clf, fp = build_classifier(spec)
    save_artifact(tmp_path, spec, clf, fp)
    config = (tmp_path / "config.json").read_text().replace(str(bert_dir), str(bert_lacking_a_weight))
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(ArtifactError, match="lacks them"):
        load_artifact(tmp_path)


def test_a_new_head_starts_from_the_seed_it_is_given_whatever_the_callers_random_state(bert_dir):
    """`train.seed` varies a new head across seeded runs (recipes pass it as `head_seed`); the same
    seed gives the same head whatever the global random state was."""
    spec = task_spec("lora-on-the-head", bert_dir)

    def head(seed: int, state: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(state)
        clf, _ = build_classifier(spec, head_seed=seed)
        return {n: p.detach().clone() for n, p in clf.named_parameters() if "classifier" in n and "lora_" not in n}

    a, b, c = head(1, 0), head(1, 99), head(2, 0)
    assert a and all(torch.equal(a[n], b[n]) for n in a), "the same head_seed must give the same head"
    assert any(not torch.equal(a[n], c[n]) for n in a), "another head_seed must give another head"

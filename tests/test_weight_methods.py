"""adapter (Houlsby et al. 2019) and bitfit (Ben Zaken et al. 2022) on tiny BERT, GPT-2 and T5.

The same contract as tests/test_methods.py (training lowers the loss, only the method's
parameters change, artifacts round-trip and hold only what trained), plus what is particular to
these methods: an untrained adapter is the identity (the task scores exactly like zero-shot),
Houlsby puts twice as many adapters as Pfeiffer, the reduction factor sets the bottleneck width,
and BitFit refuses a model without biases (T5).
"""

from __future__ import annotations

import inspect

import pytest
import torch
from safetensors.torch import load_file

from contract import EXAMPLES, scores, trained_fixture
from prompttune import TaskSpec, TrainConfig, build_classifier, load_artifact, load_backbone, save_artifact
from prompttune import models as prompttune_models
from prompttune.adapters import Adapter, AdapterSet, clear
from prompttune.errors import ConfigError, ModelError

TEMPLATE = "{text} it was {mask} ."
# A variant key is "method" or "method:variant"; VARIANTS gives its options.
VARIANTS = {
    "adapter": {},
    "adapter:pfeiffer": {"adapter_kind": "pfeiffer", "reduction_factor": 4},
    "adapter:head": {"head": True},
    "bitfit": {},
    "bitfit:head": {"head": True},
}
TRAIN = TrainConfig(epochs=6, lr=1e-2, batch_size=4, progress=False)
# (variant, model) pairs that train; BitFit has nothing to train on T5.
TRAINED = [("adapter", m) for m in ("bert_dir", "gpt2_dir", "t5_dir")] + [
    ("adapter:pfeiffer", "bert_dir"), ("adapter:head", "bert_dir"),
    ("bitfit", "bert_dir"), ("bitfit", "gpt2_dir"), ("bitfit:head", "bert_dir"),
]


def task_spec(variant: str, model_dir, **options) -> TaskSpec:
    options = {**VARIANTS.get(variant, {}), **options}
    head = options.get("head", False)
    return TaskSpec(method=variant.split(":")[0], model=str(model_dir), text_fields=["text"], labels=["0", "1"],
                    template=None if head else TEMPLATE,
                    verbalizer=None if head else {"0": ["bad", "wonderful"], "1": ["good"]}, options=options)


def is_bias(name: str) -> bool:
    return name.rsplit(".", 1)[-1] == "bias"


trained = trained_fixture(task_spec, lambda variant: TRAIN)


def head_names(clf) -> set[str]:
    head = {id(p) for p in clf.head_parameters()}
    return {n for n, p in clf.named_parameters() if id(p) in head}


# --- training -----------------------------------------------------------------------------


@pytest.mark.parametrize(("variant", "model"), TRAINED)
def test_training_lowers_the_loss(variant, model, trained):
    t = trained(variant, model)
    assert t.loss_after < t.loss_before - 0.01, (
        f"{variant} on {model}: eval loss on the training examples went from {t.loss_before:.4f} to {t.loss_after:.4f}"
    )


@pytest.mark.parametrize(("variant", "model"), TRAINED)
def test_only_the_methods_parameters_train_and_change(variant, model, trained):
    t = trained(variant, model)
    head = head_names(t.classifier)
    if variant.startswith("adapter"):
        own = {n for n in t.trainable if n.startswith("adapters.")}
        assert own, f"{variant} on {model} marked no adapter parameter trainable: {sorted(t.trainable)[:5]}"
    else:
        own = {n for n in t.trainable if n.startswith("model.") and is_bias(n) and n not in head}
        assert own, f"{variant} on {model} marked no bias trainable: {sorted(t.trainable)[:5]}"
        biases = {n for n, _ in t.classifier.named_parameters() if is_bias(n) and n not in head}
        assert own == biases, f"bitfit left biases frozen: {sorted(biases - own)[:5]}"
    if variant.endswith(":head"):
        assert head and head <= t.trainable, f"{variant}: the classification head {sorted(head)} does not train"
    assert t.trainable == own | head, f"{variant} on {model} also trains {sorted(t.trainable - own - head)[:5]}"
    after = dict(t.classifier.named_parameters())
    frozen_changed = [n for n in t.before if n not in t.trainable and not torch.equal(t.before[n], after[n])]
    assert not frozen_changed, f"{variant} on {model} changed frozen parameters: {frozen_changed[:5]}"
    unchanged = [n for n in own if torch.equal(t.before[n], after[n])]
    assert len(unchanged) < len(own), f"{variant} on {model}: training changed none of its {len(own)} parameters"


@pytest.mark.parametrize("model", ["bert_dir", "gpt2_dir", "t5_dir"])
def test_only_the_adapters_receive_gradients(model, request):
    clf, _ = build_classifier(task_spec("adapter", request.getfixturevalue(model)))
    batch = clf.collate(EXAMPLES)
    torch.nn.functional.cross_entropy(clf(batch), batch["labels"]).backward()
    with_grad = {n for n, p in clf.named_parameters() if p.grad is not None}
    assert with_grad and all(n.startswith("adapters.") for n in with_grad), (
        f"gradients reached {sorted(n for n in with_grad if not n.startswith('adapters.'))[:5]}")
    up = {n for n in with_grad if ".up." in n}
    assert up, "no gradient reached the up-projections: the adapters are not on the model's forward path"


# --- identity at init, placement, width -----------------------------------------------------


@pytest.mark.parametrize("model", ["bert_dir", "gpt2_dir", "t5_dir"])
@pytest.mark.parametrize("variant", ["adapter", "adapter:pfeiffer"])
def test_an_untrained_adapter_task_scores_exactly_like_zero_shot(variant, model, request):
    model_dir = request.getfixturevalue(model)
    adapted, _ = build_classifier(task_spec(variant, model_dir))
    bare, _ = build_classifier(task_spec("zero-shot", model_dir))
    expected = scores(bare)
    assert torch.equal(scores(adapted), expected), f"{variant} on {model}: new adapters are not the identity"
    with torch.no_grad():  # the test proves something only if the adapters are on the forward path
        for adapter in adapted.adapters.values():
            adapter.up.bias.fill_(0.5)
    assert not torch.equal(scores(adapted), expected), f"{variant} on {model}: changing the adapters changes nothing"


# (model, layers with adapters): BERT/GPT-2 have 2 layers; T5 has 2 encoder + 2 decoder blocks.
LAYERS = [("bert_dir", 2), ("gpt2_dir", 2), ("t5_dir", 4)]


@pytest.mark.parametrize(("model", "layers"), LAYERS)
def test_houlsby_puts_two_adapters_per_layer_and_pfeiffer_one(model, layers, request):
    model_dir = request.getfixturevalue(model)
    houlsby, _ = build_classifier(task_spec("adapter", model_dir, adapter_kind="houlsby"))
    pfeiffer, _ = build_classifier(task_spec("adapter", model_dir, adapter_kind="pfeiffer"))
    assert len(houlsby.adapters) == 2 * layers, f"houlsby on {model}: {sorted(houlsby.adapters)}"
    assert len(pfeiffer.adapters) == layers, f"pfeiffer on {model}: {sorted(pfeiffer.adapters)}"
    assert set(pfeiffer.adapters) < set(houlsby.adapters), "pfeiffer's adapters should be houlsby's feed-forward ones"
    assert all(isinstance(a, Adapter) for a in houlsby.adapters.values())


EXPECTED_SITES = {  # one layer's adapter keys (the wrapped modules' paths, dots replaced)
    "bert_dir": ["bert__encoder__layer__0__attention__output__dense", "bert__encoder__layer__0__output__dense"],
    "gpt2_dir": ["transformer__h__0__attn__c_proj", "transformer__h__0__mlp__c_proj"],
    "t5_dir": ["encoder__block__0__layer__0__SelfAttention__o", "encoder__block__0__layer__1__DenseReluDense__wo",
               "decoder__block__0__layer__0__SelfAttention__o", "decoder__block__0__layer__2__DenseReluDense__wo"],
}


@pytest.mark.parametrize("model", ["bert_dir", "gpt2_dir", "t5_dir"])
def test_adapters_sit_after_the_attention_and_feed_forward_output_projections(model, request):
    clf, _ = build_classifier(task_spec("adapter", request.getfixturevalue(model)))
    keys = set(clf.adapters)
    missing = [k for k in EXPECTED_SITES[model] if k not in keys]
    assert not missing, f"{model}: no adapter after {missing}; adapters: {sorted(keys)}"
    assert not any("EncDecAttention" in k for k in keys), "T5 cross-attention should have no adapter"


@pytest.mark.parametrize("model", ["bert_dir", "t5_dir"])
def test_the_reduction_factor_sets_the_bottleneck_width(model, request):
    model_dir = request.getfixturevalue(model)
    for r, width in ((16, 2), (4, 8), (1, 32)):  # the tiny models' hidden size is 32
        clf, _ = build_classifier(task_spec("adapter", model_dir, reduction_factor=r))
        widths = {a.down.out_features for a in clf.adapters.values()}
        assert widths == {width}, f"reduction_factor {r} on {model}: bottleneck widths {widths}, expected {width}"
        assert {a.up.out_features for a in clf.adapters.values()} == {32}


@pytest.mark.parametrize("options", [{"adapter_kind": "parallel"}, {"reduction_factor": 0}])
def test_bad_adapter_options_are_refused(options, bert_dir):
    with pytest.raises(ConfigError, match="adapter_kind|reduction_factor"):
        build_classifier(task_spec("adapter", bert_dir, **options))


# --- artifacts ----------------------------------------------------------------------------


@pytest.mark.parametrize(("variant", "model"), TRAINED)
def test_an_artifact_reloads_to_identical_scores_and_holds_only_the_method_tensors(variant, model, trained, tmp_path):
    t = trained(variant, model)
    save_artifact(tmp_path, t.spec, t.classifier, t.fingerprint)
    expected = scores(t.classifier)
    reloaded, _ = load_artifact(tmp_path)
    assert torch.equal(scores(reloaded), expected), f"{variant} on {model}: reloaded scores differ"
    torch.manual_seed(1)  # a fresh random head, if any
    fresh, _ = build_classifier(t.spec)
    assert not torch.equal(scores(fresh), expected), "training did not change the scores; the test proves nothing"

    keys = set(load_file(str(tmp_path / "weights.safetensors")))
    head = head_names(t.classifier)
    if variant.startswith("adapter"):
        other = {k for k in keys if not k.startswith("adapters.") and k not in head}
    else:
        other = {k for k in keys if not is_bias(k) and k not in head}
    assert not other, f"{variant} on {model} saved tensors that are not its own: {sorted(other)[:5]}"
    assert keys == t.trainable, f"the artifact should hold exactly the trained tensors: {sorted(keys ^ t.trainable)[:5]}"


# --- BitFit needs biases ------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["bitfit", "bitfit:head"])
def test_bitfit_on_t5_is_refused_clearly(variant, t5_dir):
    with pytest.raises(ModelError, match="BitFit has nothing to train on this model"):
        build_classifier(task_spec(variant, t5_dir))


# --- a shared backbone --------------------------------------------------------------------


def test_adapters_unbind_to_the_bare_model(bert_dir):
    clf, _ = build_classifier(task_spec("adapter", bert_dir))
    with torch.no_grad():
        for adapter in clf.adapters.values():
            adapter.up.bias.fill_(0.5)
    batch = clf.collate(EXAMPLES)
    with torch.no_grad():
        adapted = clf.scorer(clf.model, batch)
        clear(clf.model)
        bare = clf.scorer(clf.model, batch)
        clf.adapters.bind()
        again = clf.scorer(clf.model, batch)
    assert not torch.equal(adapted, bare), "clear() left the adapters on the model"
    assert torch.equal(adapted, again), "bind() did not put the adapters back"


def test_tasks_sharing_a_backbone_each_see_their_own_adapters(bert_dir):
    if "adapters" not in inspect.getsource(prompttune_models.bind_prompts):
        pytest.skip("models.bind_prompts does not bind adapters yet (see prompttune.adapters: AdapterSet.bind / clear)")
    backbone = load_backbone(str(bert_dir))
    a, _ = build_classifier(task_spec("adapter", bert_dir), backbone)
    b, _ = build_classifier(task_spec("adapter", bert_dir, adapter_kind="pfeiffer"), backbone)
    bare, _ = build_classifier(task_spec("zero-shot", bert_dir), backbone)
    expected_bare = scores(bare)
    with torch.no_grad():
        for adapter in a.adapters.values():
            adapter.up.bias.fill_(0.5)
        for adapter in b.adapters.values():
            adapter.up.bias.fill_(-0.5)
    alone_a, alone_b = scores(a), scores(b)
    assert torch.equal(scores(bare), expected_bare), "a task without adapters saw another task's adapters"
    assert torch.equal(scores(a), alone_a) and torch.equal(scores(b), alone_b), "tasks on one backbone mixed adapters"
    assert not torch.equal(alone_a, alone_b) and not torch.equal(alone_a, expected_bare)


def test_an_adapter_set_is_built_identically_each_time(bert_dir):
    """Artifacts reload by name: the same model must give the same adapter names and shapes."""
    backbone = load_backbone(str(bert_dir))
    first = {n: p.shape for n, p in AdapterSet(backbone.model, "houlsby", 8).named_parameters()}
    second = {n: p.shape for n, p in AdapterSet(backbone.model, "houlsby", 8).named_parameters()}
    assert first == second and len(first) == 4 * 4, sorted(first)

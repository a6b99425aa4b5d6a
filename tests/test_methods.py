"""The contract every registered method keeps, checked on every tiny model kind.

- training lowers the loss; only the parameters the method marks trainable change;
- zero-shot trains nothing: no parameter requires grad and the backbone is bit-identical after;
- save → load reproduces the class scores exactly; a zero-shot artifact holds no tensors;
- an artifact refuses a backbone other than the one it was made for, and a corrupted weights file;
- an interrupted run resumed from its checkpoint ends with the same weights as an uninterrupted one.

A new method gets these tests by being added to METHODS.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest
import torch
from safetensors.torch import load_file

import tiny_models
from contract import EXAMPLES, PROMPTS, TEMPLATE, scores, trained_fixture
from prompttune import (
    TaskSpec,
    TrainConfig,
    build_classifier,
    get_method,
    load_artifact,
    load_backbone,
    save_artifact,
    train,
)
from prompttune.errors import ArtifactError, ConfigError, ModelError

# A method key is "name" or "name:variant"; PROMPTS gives its template and options.
METHODS = ["zero-shot", "prompt-finetune", "finetune", "prompt-tuning", "p-tuning", "p-tuning:mlp",
           "prefix-tuning", "p-tuning-v2", "p-tuning-v2:head", "lora", "lora:head", "p-tuning+lora", "adapter"]
# bitfit trains the backbone's own biases, so it is specified in tests/test_weight_methods.py instead.
MODELS = ["bert_dir", "roberta_dir", "gpt2_dir", "t5_dir"]
TRAINING = [m for m in METHODS if m != "zero-shot"]
PROMPT_METHODS = [m for m in METHODS if m not in ("zero-shot", "prompt-finetune", "finetune")]
TRAINED_BY_METHOD = ("soft.", "deep.", "lora_", "adapters.")  # what a parameter-efficient method may add and train

# High lr, few steps: enough for tiny random models to start memorising 8 examples.
FAST_TRAIN = TrainConfig(epochs=6, lr=1e-2, batch_size=4, progress=False)
PROMPT_TRAIN = TrainConfig(epochs=6, lr=1e-1, batch_size=4, progress=False)  # a few vectors need bigger steps


def train_config(method: str) -> TrainConfig:
    if method.endswith(":head"):  # a new linear head diverges at prompt step sizes
        return dataclasses.replace(PROMPT_TRAIN, lr=1e-2)
    return PROMPT_TRAIN if method in PROMPT_METHODS else FAST_TRAIN


def task_spec(method: str, model_dir) -> TaskSpec:
    # "wonderful" is two tokens everywhere, so training goes through the multi-token scoring path.
    template, options = PROMPTS.get(method, (TEMPLATE, {}))
    name = method.split(":")[0]
    return TaskSpec(max_length=64, method=name.split("+") if "+" in name else name, model=str(model_dir), text_fields=["text"], labels=["0", "1"],
                    template=template, verbalizer={"0": ["bad", "wonderful"], "1": ["good"]} if template else None,
                    options=dict(options))


trained = trained_fixture(task_spec, train_config)


# --- what trains --------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", TRAINING)
def test_training_lowers_the_loss(method, model, trained):
    t = trained(method, model)
    assert len(t.history) == train_config(method).epochs
    assert t.loss_after < t.loss_before - 0.01, (
        f"{method} on {model}: loss on the training examples went from {t.loss_before:.4f} to {t.loss_after:.4f} "
        f"(epoch means: {[round(h['train_loss'], 4) for h in t.history]})"
    )


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_only_the_parameters_the_method_marks_trainable_change(method, model, trained):
    t = trained(method, model)
    after = dict(t.classifier.named_parameters())
    frozen_changed = [n for n in t.before if n not in t.trainable and not torch.equal(t.before[n], after[n])]
    assert not frozen_changed, f"{method} changed frozen parameters: {frozen_changed[:5]}"
    if method != "zero-shot":
        changed = [n for n in t.trainable if not torch.equal(t.before[n], after[n])]
        assert changed, f"{method} marked {len(t.trainable)} parameters trainable but training changed none"


@pytest.mark.parametrize("method", METHODS)
def test_a_method_marks_exactly_its_parameters_trainable(method, bert_dir):
    clf, _ = build_classifier(task_spec(method, bert_dir))
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    if method == "zero-shot":
        assert not trainable, "zero-shot must leave every parameter frozen"
    elif method in PROMPT_METHODS:
        prompt = {n for n in trainable if any(mark in n for mark in TRAINED_BY_METHOD)}
        head = trainable - prompt
        assert prompt, f"{method} trains nothing of its own: {sorted(trainable)[:5]}"
        if method.endswith(":head"):  # the new classification head (and BERT's pooler, absent from an MLM checkpoint)
            assert head and all(".classifier." in n or ".pooler." in n for n in head), f"{method}'s head: {sorted(head)}"
        else:
            assert not head, f"{method} must leave the backbone frozen, trains {sorted(head)[:5]}"
    else:
        assert trainable == {n for n, _ in clf.named_parameters()}, f"{method} trains the whole model"
    spec = task_spec(method, bert_dir)
    assert get_method(spec.method).uses_head(spec.method_options()) == (method in ("finetune", "p-tuning-v2:head", "lora:head"))


@pytest.mark.parametrize("model", MODELS)
def test_zero_shot_leaves_the_backbone_bit_identical(model, trained):
    t = trained("zero-shot", model)
    assert t.trainable == set(), f"zero-shot parameters require grad: {sorted(t.trainable)[:5]}"
    assert t.history == [], "zero-shot should not run any training epoch"
    after = dict(t.classifier.named_parameters())
    assert all(torch.equal(t.before[n], after[n]) for n in t.before), "the backbone changed under zero-shot"


# --- artifacts ----------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_an_artifact_reloads_to_identical_class_scores(method, model, trained, tmp_path):
    t = trained(method, model)
    save_artifact(tmp_path, t.spec, t.classifier, t.fingerprint)
    expected = scores(t.classifier)
    reloaded, config = load_artifact(tmp_path)
    assert config["method"] == t.spec.method
    assert torch.equal(scores(reloaded), expected), f"{method} on {model}: reloaded scores differ"
    if method != "zero-shot":  # make sure the round trip carried the trained numbers, not the base model
        fresh, _ = build_classifier(t.spec)
        assert not torch.equal(scores(fresh), expected), "training did not change the scores; the test proves nothing"


def test_a_zero_shot_artifact_holds_no_tensors(bert_dir, tmp_path):
    spec = task_spec("zero-shot", bert_dir)
    clf, fp = build_classifier(spec)
    save_artifact(tmp_path, spec, clf, fp)
    assert load_file(str(tmp_path / "weights.safetensors")) == {}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["weights"]["tensors"] == 0 and config["trainable_parameters"] == 0
    assert (tmp_path / "weights.safetensors").stat().st_size < 100


@pytest.fixture(scope="module")
def other_bert_dir(tmp_path_factory) -> pathlib.Path:
    """Same architecture and tokenizer as `bert_dir`, other random weights."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tiny_models, "SEED", tiny_models.SEED + 1)
        return tiny_models.make_bert(tmp_path_factory.mktemp("other_bert"))


@pytest.fixture(scope="module")
def same_embeddings_bert_dir(bert_dir, tmp_path_factory) -> pathlib.Path:
    """`bert_dir` with every weight but the embeddings changed (as a merged LoRA or a fine-tune with
    frozen embeddings leaves a model)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(bert_dir)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embeddings" not in name:
                p.add_(0.01)
    out = tmp_path_factory.mktemp("same_embeddings_bert")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(bert_dir).save_pretrained(out)
    return out


@pytest.mark.parametrize("method", ["zero-shot", "prompt-tuning", "lora"])
def test_an_artifact_refuses_a_backbone_whose_layers_changed_under_the_same_embeddings(method, bert_dir,
                                                                                       same_embeddings_bert_dir, tmp_path):
    spec = task_spec(method, bert_dir)
    clf, fp = build_classifier(spec)
    save_artifact(tmp_path, spec, clf, fp)
    with pytest.raises((ModelError, ArtifactError), match="weights_sample_sha256") as err:
        load_artifact(tmp_path, load_backbone(str(same_embeddings_bert_dir)))
    assert "embedding_sha256" not in str(err.value), f"only the layers differ: {err.value}"


@pytest.mark.parametrize("method", METHODS)
def test_an_artifact_refuses_a_backbone_with_other_weights(method, bert_dir, other_bert_dir, tmp_path):
    spec = task_spec(method, bert_dir)
    clf, fp = build_classifier(spec)
    save_artifact(tmp_path, spec, clf, fp)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model"] = str(other_bert_dir)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises((ModelError, ArtifactError)) as err:
        load_artifact(tmp_path)
    message = str(err.value)
    assert "embedding_sha256" in message and "does not fit" in message, f"the error should name the mismatch: {message}"


def test_an_artifact_refuses_a_backbone_passed_in_by_the_caller(bert_dir, gpt2_dir, tmp_path):
    spec = task_spec("zero-shot", bert_dir)
    clf, fp = build_classifier(spec)
    save_artifact(tmp_path, spec, clf, fp)
    with pytest.raises((ModelError, ArtifactError), match="kind: artifact was made for 'masked', backbone has 'causal'"):
        load_artifact(tmp_path, backbone=load_backbone(str(gpt2_dir)))


@pytest.mark.parametrize("method", METHODS)
def test_a_corrupted_weights_file_is_refused_by_its_checksum(method, bert_dir, tmp_path):
    spec = task_spec(method, bert_dir)
    clf, fp = build_classifier(spec)
    save_artifact(tmp_path, spec, clf, fp)
    weights = tmp_path / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the checksum in config.json"):
        load_artifact(tmp_path)


def test_a_directory_without_config_is_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="is not a task artifact: it has no config.json"):
        load_artifact(tmp_path)


# --- resuming -----------------------------------------------------------------------------


class Interrupted(Exception):
    pass


def interrupt_after(clf, batches: int) -> None:
    """Make the classifier's collate raise after `batches` training batches, as a killed run would stop."""
    collate, calls = clf.collate, [0]

    def stopping_collate(examples):
        calls[0] += all("label" in ex for ex in examples)  # evaluation batches come without labels
        if calls[0] > batches:
            raise Interrupted
        return collate(examples)

    clf.collate = stopping_collate


@pytest.mark.parametrize("model", ["bert_dir", "gpt2_dir"])
@pytest.mark.parametrize("method", TRAINING)
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(method, model, request, tmp_path):
    """Interrupt a 4-epoch run during epoch 3, resume it, and compare with 4 epochs straight.

    The interrupted run must be configured for 4 epochs from the start: a run configured for 2
    epochs decays its learning rate to 0 by step 2·steps_per_epoch, so "train 2 then resume to 4"
    follows another schedule and is not expected to match.
    """
    spec = task_spec(method, request.getfixturevalue(model))
    config = dataclasses.replace(train_config(method), epochs=4)
    steps_per_epoch = len(EXAMPLES) // config.batch_size

    torch.manual_seed(0)
    straight, _ = build_classifier(spec)
    straight_result = train(straight, EXAMPLES, EXAMPLES[:4], config)

    torch.manual_seed(0)
    first, _ = build_classifier(spec)
    interrupt_after(first, 2 * steps_per_epoch + 1)
    with pytest.raises(Interrupted):
        train(first, EXAMPLES, EXAMPLES[:4], config, checkpoint_dir=tmp_path)
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 2

    torch.manual_seed(1)  # the resumed run must not depend on the fresh build's random head
    resumed, _ = build_classifier(spec)
    resumed_result = train(resumed, EXAMPLES, EXAMPLES[:4], config, checkpoint_dir=tmp_path, resume=True)

    assert resumed_result.history == straight_result.history
    assert resumed_result.best_epoch == straight_result.best_epoch
    assert resumed_result.steps == straight_result.steps == 4 * steps_per_epoch
    a, b = straight.state_dict(), resumed.state_dict()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"resumed weights differ from an uninterrupted run in {differ[:5]}"


def test_resuming_with_more_epochs_is_refused_as_another_run(bert_dir, tmp_path):
    """Extending a 2-epoch run to 4 through resume would mix two runs: the first two epochs followed a
    2-epoch learning-rate schedule (decayed to 0), the last two a 4-epoch one. It is refused, naming
    the key, and the checkpoint stays as it was."""
    spec = task_spec("prompt-finetune", bert_dir)
    short = dataclasses.replace(FAST_TRAIN, epochs=2)
    clf, _ = build_classifier(spec)
    train(clf, EXAMPLES, None, short, checkpoint_dir=tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    resumed, _ = build_classifier(spec)
    with pytest.raises(ConfigError, match=r"it was written by another run \(train\.epochs: 2 → 4\)"):
        train(resumed, EXAMPLES, None, dataclasses.replace(short, epochs=4), checkpoint_dir=tmp_path, resume=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("method", METHODS)
def test_a_freshly_built_classifier_predicts_deterministically(method, bert_dir):
    clf, _ = build_classifier(task_spec(method, bert_dir))
    assert not clf.training, "build_classifier must hand back a model in eval mode (dropout off)"
    batch = clf.collate(EXAMPLES[:4])
    assert torch.equal(clf(batch), clf(batch))


# --- prompt methods: the frozen model stays out of gradients and artifacts -----------------


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", PROMPT_METHODS)
def test_only_the_prompt_receives_gradients(method, model, request):
    clf, _ = build_classifier(task_spec(method, request.getfixturevalue(model)))
    batch = clf.collate(EXAMPLES)
    torch.nn.functional.cross_entropy(clf(batch), batch["labels"]).backward()
    with_grad = {n for n, p in clf.named_parameters() if p.grad is not None}
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert with_grad == trainable, f"{method}: gradients reached {sorted(with_grad - trainable)[:5]}, missed {sorted(trainable - with_grad)[:5]}"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", PROMPT_METHODS)
def test_a_prompt_artifact_holds_no_backbone_weights(method, model, trained, tmp_path):
    t = trained(method, model)
    save_artifact(tmp_path, t.spec, t.classifier, t.fingerprint)
    keys = set(load_file(str(tmp_path / "weights.safetensors")))
    head = {id(p) for p in t.classifier.head_parameters()}  # a new head (p-tuning-v2:head) is the task's, not the backbone's
    pretrained = {f"model.{n}" for n, p in t.classifier.model.named_parameters()
                  if id(p) not in head and "lora_" not in n}
    leaked = keys & pretrained
    assert not leaked, f"{method} saved backbone weights: {sorted(leaked)[:5]}"
    assert any(any(mark in k for mark in TRAINED_BY_METHOD) for k in keys), f"{method} saved no prompt: {sorted(keys)}"
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["stored_numbers"] == sum(t.numel() for t in load_file(str(tmp_path / "weights.safetensors")).values())
    assert 0 < config["fraction_of_backbone"] < 0.5

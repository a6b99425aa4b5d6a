"""LoRA through peft: merged outputs equal unmerged ones, PEFT itself loads the artifact to the same
outputs, and LoRA combines with a soft prompt. (Training, what changes and round trips are in the
method contract, tests/test_methods.py.)"""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM

from prompttune import TaskSpec, build_classifier, export_peft, load_artifact, save_artifact
from prompttune.errors import ConfigError
from prompttune.evaluation import predict_scores

EXAMPLES = [{"text": "great fun", "label": "1"}, {"text": "a terrible , boring movie .", "label": "0"}]
AUTO = {"bert_dir": AutoModelForMaskedLM, "gpt2_dir": AutoModelForCausalLM, "t5_dir": AutoModelForSeq2SeqLM}


def lora_task(model_dir, tmp_path, **options):
    spec = TaskSpec(method="lora", model=str(model_dir), text_fields=["text"], labels=["0", "1"],
                    template="{text} it was {mask} .", verbalizer={"0": ["bad", "wonderful"], "1": ["good"]},
                    options={"lora_rank": 4, **options})
    clf, fp = build_classifier(spec)
    with torch.no_grad():  # LoRA starts as a no-op (B = 0): give it an update to carry
        for name, p in clf.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.5)
    save_artifact(tmp_path / "task", spec, clf, fp)
    return clf, spec


@pytest.mark.parametrize("model", list(AUTO))
def test_a_merged_task_scores_as_the_unmerged_one_with_plain_layers(model, request, tmp_path):
    clf, _ = lora_task(request.getfixturevalue(model), tmp_path, merge=True)
    unmerged = predict_scores(clf, EXAMPLES)
    merged, _ = load_artifact(tmp_path / "task")
    assert not any("lora_" in n for n, _ in merged.named_parameters()), "merge: true should leave no LoRA layers"
    torch.testing.assert_close(predict_scores(merged, EXAMPLES), unmerged, rtol=1e-4, atol=1e-4)
    fresh, _ = build_classifier(TaskSpec(method="zero-shot", model=str(request.getfixturevalue(model)), text_fields=["text"],
                                         labels=["0", "1"], template="{text} it was {mask} .",
                                         verbalizer={"0": ["bad", "wonderful"], "1": ["good"]}))
    assert not torch.allclose(predict_scores(fresh, EXAMPLES), unmerged), "the LoRA update changed nothing"


@pytest.mark.parametrize("model", list(AUTO))
def test_peft_loads_the_exported_artifact_to_the_same_outputs(model, request, tmp_path):
    model_dir = request.getfixturevalue(model)
    clf, _ = lora_task(model_dir, tmp_path)
    out = export_peft(tmp_path / "task", tmp_path / "peft")  # verified against PEFT inside; checked again here
    peft_model = PeftModel.from_pretrained(AUTO[model].from_pretrained(model_dir), str(out)).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    extra = {"decoder_input_ids": ids[:, :2]} if model == "t5_dir" else {}
    with torch.no_grad():
        theirs = peft_model(input_ids=ids, **extra).logits
        ours = clf.model(input_ids=ids, **extra).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_lora_and_a_soft_prompt_train_together_and_save_both(bert_dir, tmp_path):
    spec = TaskSpec(method=["p-tuning", "lora"], model=str(bert_dir), text_fields=["text"], labels=["0", "1"],
                    template="{soft:2} {text} it was {mask} .", verbalizer={"0": ["bad"], "1": ["good"]},
                    options={"encoder": "mlp", "lora_rank": 2})
    clf, fp = build_classifier(spec)
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert any(n.startswith("soft.") for n in trainable) and any("lora_" in n for n in trainable), sorted(trainable)
    save_artifact(tmp_path / "task", spec, clf, fp)
    loaded, config = load_artifact(tmp_path / "task")
    assert config["method"] == ["p-tuning", "lora"]
    assert torch.equal(predict_scores(loaded, EXAMPLES), predict_scores(clf, EXAMPLES))


@pytest.mark.parametrize(("names", "message"), [
    (["lora", "lora"], "lists a method twice"),
    (["finetune", "prompt-tuning"], "disagree"),
    ([], "empty list"),
])
def test_bad_method_lists_are_refused(names, message, bert_dir):
    spec = TaskSpec(method=names, model=str(bert_dir), text_fields=["text"], labels=["0", "1"],
                    template="{soft:2} {text} {mask}", verbalizer={"0": ["bad"], "1": ["good"]})
    with pytest.raises(ConfigError, match=message):
        build_classifier(spec)


def test_target_modules_that_match_nothing_are_refused(bert_dir, tmp_path):
    with pytest.raises(ConfigError, match="cannot add LoRA layers"):
        lora_task(bert_dir, tmp_path, target_modules=["no_such_module"])


def test_lora_keeps_what_an_earlier_method_trains(bert_dir):
    spec = TaskSpec(method=["bitfit", "lora"], model=str(bert_dir), text_fields=["text"], labels=["0", "1"],
                    template="{text} it was {mask} .", verbalizer={"0": ["bad"], "1": ["good"]}, options={"lora_rank": 2})
    clf, _ = build_classifier(spec)
    trainable = [n for n, p in clf.named_parameters() if p.requires_grad]
    assert any(n.endswith("bias") for n in trainable), "peft's injection switched BitFit's biases off"
    assert any("lora_" in n for n in trainable)

"""`prompttune export --format peft`: PEFT loads the adapter and reproduces the task's logits.

Each supported task is saved, exported, loaded back with `peft.PeftModel.from_pretrained` on a
fresh copy of its base model, and run on a padded batch; PEFT's logits at every real token must
equal prompttune's. Tasks PEFT cannot represent are refused with the reason, and nothing is written.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM

from prompttune import TaskSpec, build_classifier, load_artifact, save_artifact
from prompttune.cli import main
from prompttune.errors import ArtifactError, ExportError
from prompttune.export import ADAPTER_CONFIG, ADAPTER_WEIGHTS, TASK_FILE, export_peft
from prompttune.models import bind_prompts

peft = pytest.importorskip("peft")

EXAMPLES = [{"text": "the movie was very good and the acting was fun"}, {"text": "bad"}, {"text": "a boring film"}]
AUTO = {"causal": AutoModelForCausalLM, "masked": AutoModelForMaskedLM, "seq2seq": AutoModelForSeq2SeqLM}
VERBALIZER = {"0": ["bad"], "1": ["good"]}


def make_artifact(directory: Path, method: str, model_dir: Path, template: str, options: dict | None = None) -> Path:
    """Build a task, move its prompt away from its initialisation, save it."""
    spec = TaskSpec(max_length=64, method=method, model=str(model_dir), text_fields=["text"], labels=["0", "1"], template=template,
                    verbalizer=VERBALIZER, options=dict(options or {}))
    clf, fp = build_classifier(spec)
    torch.manual_seed(1)
    with torch.no_grad():
        for prompt in (clf.soft, clf.deep):
            if prompt is not None:
                for p in prompt.parameters():
                    p.add_(torch.randn_like(p) * 0.5)
    return save_artifact(directory, spec, clf, fp)


def ours_and_peft(artifact: Path, adapter: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the real tokens of a padded batch: prompttune's task, and PEFT with the adapter."""
    clf, config = load_artifact(artifact)
    kind = config["backbone"]["kind"]
    batch = clf.scorer.encode(EXAMPLES)
    key = "ids" if "ids" in batch else min(k for k in batch if k.startswith("ids"))
    ids, attn = batch[key], batch[key.replace("ids", "attn")]
    assert (attn == 0).any(), "the probe batch should contain padding"
    n = clf.soft.n if clf.soft is not None else 0
    extra = {"decoder_input_ids": torch.tensor([clf.scorer.lead]).expand(len(EXAMPLES), -1)} if kind == "seq2seq" else {}
    with torch.no_grad():
        bind_prompts(clf)
        ours = clf.model(input_ids=ids, attention_mask=attn, **extra).logits
        base = AUTO[kind].from_pretrained(config["model"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = peft.PeftModel.from_pretrained(base, str(adapter)).eval()
            theirs = model(input_ids=ids[:, n:], attention_mask=attn[:, n:], **extra).logits
    if kind == "seq2seq":
        return ours, theirs
    real = attn[:, n:].bool()
    return ours[:, n:][real], theirs[:, n:][real]


CASES = {
    "gpt2-prompt-tuning": ("prompt-tuning", "gpt2_dir", "{soft:4}{text} it was {mask}", {}),
    "gpt2-prompt-tuning-words": ("prompt-tuning", "gpt2_dir", '{soft:2} {soft:"it was"} {text} it was {mask}', {}),
    "gpt2-p-tuning-mlp": ("p-tuning", "gpt2_dir", "{soft:4} {text} it was {mask}", {"encoder": "mlp"}),
    "gpt2-p-tuning-lstm": ("p-tuning", "gpt2_dir", "{soft:3}{text} it was {mask}", {"encoder": "lstm"}),
    "gpt2-prefix-tuning": ("prefix-tuning", "gpt2_dir", "{text} it was {mask}", {"prompt_length": 3, "reparameterize": False}),
    "gpt2-prefix-tuning-mlp": ("prefix-tuning", "gpt2_dir", "{text} it was {mask}", {"prompt_length": 3, "reparam_hidden": 16}),
    "bert-prefix-tuning": ("prefix-tuning", "bert_dir", "{text} it was {mask} .", {"prompt_length": 3, "reparameterize": False}),
    "bert-p-tuning-v2": ("p-tuning-v2", "bert_dir", "{text} it was {mask} .", {"prompt_length": 2}),
    "roberta-p-tuning-v2": ("p-tuning-v2", "roberta_dir", "{text} it was {mask} .", {"prompt_length": 2}),
    "t5-prompt-tuning": ("prompt-tuning", "t5_dir", "{soft:3} {text} it was {mask} .", {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_peft_loads_the_export_and_gives_the_same_logits(case, request, tmp_path):
    method, model_fixture, template, options = CASES[case]
    artifact = make_artifact(tmp_path / "task", method, request.getfixturevalue(model_fixture), template, options)
    adapter = export_peft(artifact, tmp_path / "peft")
    assert adapter == tmp_path / "peft"
    ours, theirs = ours_and_peft(artifact, adapter)
    assert ours.shape == theirs.shape, f"{case}: PEFT returned {tuple(theirs.shape)} logits, prompttune {tuple(ours.shape)}"
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5,
                               msg=lambda m: f"{case}: PEFT's logits with the exported adapter differ from prompttune's: {m}")


@pytest.mark.parametrize("case, peft_type, task_type, shape", [
    ("gpt2-prompt-tuning", "PROMPT_TUNING", "CAUSAL_LM", (4, 32)),
    ("t5-prompt-tuning", "PROMPT_TUNING", "SEQ_2_SEQ_LM", (3, 32)),
    ("gpt2-prefix-tuning", "PREFIX_TUNING", "CAUSAL_LM", (3, 2 * 2 * 32)),
    ("bert-p-tuning-v2", "PREFIX_TUNING", "FEATURE_EXTRACTION", (2, 2 * 2 * 32)),
])
def test_the_adapter_files_are_what_peft_itself_writes(case, peft_type, task_type, shape, request, tmp_path):
    method, model_fixture, template, options = CASES[case]
    model_dir = request.getfixturevalue(model_fixture)
    adapter = export_peft(make_artifact(tmp_path / "task", method, model_dir, template, options), tmp_path / "peft")
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    assert (config["peft_type"], config["task_type"]) == (peft_type, task_type), f"{case}: wrong PEFT type in {config}"
    assert config["base_model_name_or_path"] == str(model_dir)
    assert config["inference_mode"] is True
    weights = load_file(str(adapter / ADAPTER_WEIGHTS))
    assert {k: tuple(v.shape) for k, v in weights.items()} == {"prompt_embeddings": shape}, f"{case}: unexpected tensors"
    assert json.loads((adapter / TASK_FILE).read_text())["template"] == template

    # The same keys as an adapter PEFT saves itself for this method (and nothing PEFT cannot read back).
    own_cls = peft.PromptTuningConfig if peft_type == "PROMPT_TUNING" else peft.PrefixTuningConfig
    base = AUTO[{"CAUSAL_LM": "causal", "SEQ_2_SEQ_LM": "seq2seq", "FEATURE_EXTRACTION": "masked"}[task_type]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        own = peft.get_peft_model(base.from_pretrained(model_dir), own_cls(task_type=task_type, num_virtual_tokens=shape[0]))
        own.save_pretrained(tmp_path / "own")
    own_config = json.loads((tmp_path / "own" / ADAPTER_CONFIG).read_text())
    assert set(config) == set(own_config), f"{case}: keys differ from PEFT's own adapter_config: {set(config) ^ set(own_config)}"
    assert set(load_file(str(tmp_path / "own" / ADAPTER_WEIGHTS))) == set(weights)
    assert type(peft.PeftConfig.from_pretrained(str(adapter))) is own_cls


def assert_refused(artifact: Path, out: Path, *needles: str) -> str:
    with pytest.raises(ExportError) as info:
        export_peft(artifact, out)
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"the refusal should mention {needle!r}; got: {message}"
    assert not (out / ADAPTER_CONFIG).exists() and not (out / ADAPTER_WEIGHTS).exists(), "a refused export wrote files"
    return message


def test_soft_tokens_after_bert_cls_are_refused(bert_dir, tmp_path):
    artifact = make_artifact(tmp_path / "task", "prompt-tuning", bert_dir, "{soft:4} {text} it was {mask} .")
    assert_refused(artifact, tmp_path / "peft", "[CLS]", "before the whole input")


def test_soft_tokens_after_text_are_refused(gpt2_dir, tmp_path):
    artifact = make_artifact(tmp_path / "task", "prompt-tuning", gpt2_dir, "{text} {soft:2} it was {mask}")
    assert_refused(artifact, tmp_path / "peft", "{text}", "before the whole input")


def test_a_head_task_is_refused(bert_dir, tmp_path):
    spec = TaskSpec(max_length=64, method="p-tuning-v2", model=str(bert_dir), text_fields=["text"], labels=["0", "1"],
                    options={"prompt_length": 2, "head": True})
    clf, fp = build_classifier(spec)
    artifact = save_artifact(tmp_path / "task", spec, clf, fp)
    assert_refused(artifact, tmp_path / "peft", "classification head", "prefix-tuning and p-tuning-v2")


@pytest.mark.parametrize("method, reason", [("zero-shot", "trains nothing"), ("prompt-finetune", "all of the model's weights")])
def test_methods_without_a_peft_prompt_are_refused(method, reason, bert_dir, tmp_path):
    artifact = make_artifact(tmp_path / "task", method, bert_dir, "{text} it was {mask} .")
    assert_refused(artifact, tmp_path / "peft", method, reason, "exportable:")


def test_t5_prefix_tuning_is_refused(t5_dir, tmp_path):
    artifact = make_artifact(tmp_path / "task", "prefix-tuning", t5_dir, "{text} it was {mask} .",
                             {"prompt_length": 2, "reparameterize": False})
    assert_refused(artifact, tmp_path / "peft", "encoder-decoder", "past_key_values", "relative position bias")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, gpt2_dir) -> Path:
    """A tiny Llama (rotary position embeddings) with the tiny GPT-2's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, initializer_range=0.2)
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("llama")
    LlamaForCausalLM(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def test_a_prefix_on_a_rotary_model_exports(llama_dir, tmp_path):
    """Rotary models number the real tokens from P too (deep_prompts shifts `rotary_emb`'s position ids)."""
    artifact = make_artifact(tmp_path / "task", "prefix-tuning", llama_dir, "{text} it was {mask}",
                             {"prompt_length": 3, "reparameterize": False})
    ours, theirs = ours_and_peft(artifact, export_peft(artifact, tmp_path / "peft"))
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_soft_prompts_on_a_rotary_model_export(llama_dir, tmp_path):
    artifact = make_artifact(tmp_path / "task", "prompt-tuning", llama_dir, "{soft:3}{text} it was {mask}")
    ours, theirs = ours_and_peft(artifact, export_peft(artifact, tmp_path / "peft"))
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_a_directory_that_is_not_an_artifact_is_refused(tmp_path):
    with pytest.raises(ArtifactError, match="not a task artifact"):
        export_peft(tmp_path, tmp_path / "peft")


def test_cli_export_end_to_end(gpt2_dir, bert_dir, tmp_path, capsys):
    artifact = make_artifact(tmp_path / "task", "prefix-tuning", gpt2_dir, "{text} it was {mask}",
                             {"prompt_length": 3, "reparameterize": False})
    code = main(["export", str(artifact), "--format", "peft", "--out", str(tmp_path / "peft")])
    out, err = capsys.readouterr()
    assert code == 0, f"export failed: {err}"
    assert json.loads(out) == {"adapter": str(tmp_path / "peft"), "peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM",
                               "num_virtual_tokens": 3}
    assert (tmp_path / "peft" / ADAPTER_CONFIG).is_file() and (tmp_path / "peft" / ADAPTER_WEIGHTS).is_file()

    code = main(["export", str(tmp_path / "nowhere"), "--format", "peft", "--out", str(tmp_path / "peft2")])
    out, err = capsys.readouterr()
    assert code == 2, "a missing artifact should exit with status 2"
    assert err.startswith("prompttune export: error:") and "not a task artifact" in err and err.count("\n") == 1, err

    refused = make_artifact(tmp_path / "bert-task", "prompt-tuning", bert_dir, "{soft:2} {text} it was {mask} .")
    code = main(["export", str(refused), "--format", "peft", "--out", str(tmp_path / "peft3")])
    out, err = capsys.readouterr()
    assert code == 2 and "[CLS]" in err and err.count("\n") == 1, err
    assert not (tmp_path / "peft3").exists() or not any((tmp_path / "peft3").iterdir())


def test_cli_export_explains_itself(capsys):
    from prompttune.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["export", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: prompttune export" in out and "--format {peft}" in out and "--out" in out


@pytest.mark.parametrize(("method", "model_fixture", "template", "options"), [
    ("lora", "gpt2_chatml_dir", "{text} {mask}", {"lora_rank": 2}),
    ("prefix-tuning", "gpt2_chatml_dir", "{text} {mask}", {"prompt_length": 3, "reparam_hidden": 16}),
    ("prompt-tuning", "gpt2_dir", "{soft:3}{text} is {mask}", {}),
])
def test_a_generation_task_exports_and_peft_reproduces_its_prompt_logits(method, model_fixture, template, options, request,
                                                                          tmp_path):
    spec = TaskSpec(max_length=64, method=method, model=str(request.getfixturevalue(model_fixture)), text_fields=["text"],
                    labels=[], template=template, options=options, generation=True, chat_template=None)
    clf, fp = build_classifier(spec)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in clf.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    save_artifact(tmp_path / "task", spec, clf, fp)
    assert export_peft(tmp_path / "task", tmp_path / "peft") == tmp_path / "peft"  # export compares the logits itself

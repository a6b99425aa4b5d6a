"""Spec of `prompttune.lm_head`: fit a masked-LM head on a frozen encoder."""

import json
import shutil

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from prompttune.errors import ModelError
from prompttune.files import file_sha256
from prompttune.lm_head import (
    HEAD_INFO,
    HEAD_WEIGHTS,
    fit_lm_head,
    lm_head_state_dict,
    load_lm_head,
    masked_token_accuracy,
    save_lm_head,
)

WORDS = "the a film movie is was it good great bad terrible fun boring and but not very story actors plot".split()
# Repetitive text so that even a tiny random encoder leaves something to learn.
TEXTS = [f"the {w} film was {v} and the plot was {v}" for w in WORDS for v in ("good", "bad", "great", "boring")]


@pytest.fixture
def tokenizer(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS] + [f"w{i}" for i in range(180)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))


def tiny_mlm(tokenizer, seed: int = 0) -> transformers.BertForMaskedLM:
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    return transformers.BertForMaskedLM(config).eval()


def test_fit_trains_only_the_head_and_improves_it(tokenizer):
    model = tiny_mlm(tokenizer)
    encoder_before = {k: v.clone() for k, v in model.bert.state_dict().items()}
    head_before = lm_head_state_dict(model)
    accuracy_before = masked_token_accuracy(model, tokenizer, TEXTS)

    metrics = fit_lm_head(model, tokenizer, TEXTS, steps=50, batch_size=64, progress=False)

    for name, tensor in model.bert.state_dict().items():
        assert torch.equal(tensor, encoder_before[name]), f"encoder changed: {name}"
    assert all(p.grad is None for p in model.bert.parameters())
    head_after = lm_head_state_dict(model)
    assert all(not torch.equal(head_after[k], head_before[k]) for k in head_before)
    assert metrics["masked_tokens"] >= len(TEXTS)
    assert masked_token_accuracy(model, tokenizer, TEXTS) > accuracy_before


def test_head_state_dict_leaves_out_the_tied_decoder(tokenizer):
    names = set(lm_head_state_dict(tiny_mlm(tokenizer)))
    assert names == {
        "cls.predictions.bias",
        "cls.predictions.transform.dense.weight",
        "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.transform.LayerNorm.bias",
    }


def test_save_load_round_trip_gives_identical_logits(tokenizer, tmp_path):
    model = tiny_mlm(tokenizer)
    metrics = fit_lm_head(model, tokenizer, TEXTS, steps=5, progress=False)
    save_lm_head(model, tmp_path / "head", metrics)
    assert sorted(p.name for p in (tmp_path / "head").iterdir()) == ["head.json", "head.safetensors"]

    fresh = tiny_mlm(tokenizer)  # same seed: same encoder, random head re-drawn
    torch.nn.init.normal_(fresh.cls.predictions.transform.dense.weight)
    info = load_lm_head(fresh, tmp_path / "head")
    batch = tokenizer(TEXTS[:4], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, fresh(**batch).logits)
    assert info["metrics"]["steps"] == 5


def test_load_refuses_a_wrong_shape(tokenizer, tmp_path):
    model = tiny_mlm(tokenizer)
    save_lm_head(model, tmp_path)
    state = load_file(tmp_path / HEAD_WEIGHTS)
    state["cls.predictions.transform.dense.weight"] = torch.zeros(16, 32)
    save_file(state, tmp_path / HEAD_WEIGHTS)
    info = json.loads((tmp_path / HEAD_INFO).read_text())
    (tmp_path / HEAD_INFO).write_text(json.dumps({**info, "weights_sha256": file_sha256(tmp_path / HEAD_WEIGHTS)}))
    with pytest.raises(ModelError, match=r"dense\.weight.*\(16, 32\).*\(32, 32\)"):
        load_lm_head(model, tmp_path)


def test_load_refuses_a_head_file_from_another_save(tokenizer, tmp_path):
    """head.json records its weights' checksum, like an artifact's config.json."""
    model = tiny_mlm(tokenizer)
    save_lm_head(model, tmp_path / "a")
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.startswith("cls.predictions.transform")).add_(1.0)
    save_lm_head(model, tmp_path / "b")
    shutil.copy(tmp_path / "b" / HEAD_WEIGHTS, tmp_path / "a" / HEAD_WEIGHTS)
    with pytest.raises(ModelError, match="does not match the checksum in head.json"):
        load_lm_head(model, tmp_path / "a")


def test_a_model_without_mlm_head_is_refused(tokenizer):
    config = tiny_mlm(tokenizer).config
    with pytest.raises(ModelError, match="no masked-LM head"):
        fit_lm_head(transformers.BertModel(config), tokenizer, TEXTS, progress=False)

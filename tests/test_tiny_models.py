"""Checks that the tiny model factories keep the promises tests rely on."""

from __future__ import annotations

import pathlib

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from tiny_models import (
    ENGLISH_WORDS,
    MAX_POSITIONS,
    MULTI_TOKEN_WORDS,
    PUNCTUATION,
    SINGLE_TOKEN_WORDS,
    ZH_SEED_TEXT,
)

ENGLISH = ["bert_dir", "roberta_dir", "gpt2_dir", "t5_dir"]


def _ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(
    ("fixture", "model_type"),
    [
        ("bert_dir", "bert"),
        ("roberta_dir", "roberta"),
        ("gpt2_dir", "gpt2"),
        ("t5_dir", "t5"),
        ("bert_zh_dir", "bert"),
    ],
)
def test_config_matches_tokenizer(fixture: str, model_type: str, request) -> None:
    """AutoConfig reports the model type and a vocab the size of the tokenizer."""
    directory: pathlib.Path = request.getfixturevalue(fixture)
    config = AutoConfig.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert config.model_type == model_type
    assert config.vocab_size == len(tokenizer)
    assert tokenizer.model_max_length == MAX_POSITIONS


@pytest.mark.parametrize("fixture", ENGLISH)
def test_single_and_multi_token_words(fixture: str, request) -> None:
    """Listed words are one token (with or without a leading space); others split."""
    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(fixture))
    assert set(SINGLE_TOKEN_WORDS) <= set(ENGLISH_WORDS)
    for word in ENGLISH_WORDS:
        assert len(_ids(tokenizer, word)) == 1, word
        assert len(_ids(tokenizer, " " + word)) == 1, word
    for mark in PUNCTUATION:
        assert len(_ids(tokenizer, mark)) == 1, mark
    for word in MULTI_TOKEN_WORDS:
        assert len(_ids(tokenizer, word)) >= 2, word
        assert len(_ids(tokenizer, " " + word)) >= 2, word


def test_bert_wordpiece_splits(bert_dir: pathlib.Path) -> None:
    """BERT splits the multi-token words exactly as documented."""
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    for word, pieces in MULTI_TOKEN_WORDS.items():
        assert tuple(tokenizer.tokenize(word)) == pieces
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 4]) == [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
    ]
    assert tokenizer.unk_token_id not in _ids(tokenizer, "It was great, wonderful! Yes?")


def test_bert_masked_lm_and_classifier(bert_dir: pathlib.Path) -> None:
    """The BERT directory loads as a masked LM and as a sequence classifier."""
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    batch = tokenizer(["it was [MASK] .", "a very boring film"], padding=True, return_tensors="pt")
    model = AutoModelForMaskedLM.from_pretrained(bert_dir)
    logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer))
    classifier = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=2)
    assert classifier(**batch).logits.shape == (2, 2)


def test_bert_zh_characters(bert_zh_dir: pathlib.Path) -> None:
    """Each Chinese character is its own known token."""
    tokenizer = AutoTokenizer.from_pretrained(bert_zh_dir)
    assert len(_ids(tokenizer, "开心")) == 2
    assert len(_ids(tokenizer, "水果")) == 2
    ids = _ids(tokenizer, ZH_SEED_TEXT)
    assert len(ids) == len(ZH_SEED_TEXT)
    assert tokenizer.unk_token_id not in ids
    model = AutoModelForMaskedLM.from_pretrained(bert_zh_dir)
    batch = tokenizer("今天天气[MASK]好。", return_tensors="pt")
    assert model(**batch).logits.shape[-1] == len(tokenizer)


def test_roberta_mask_and_forward(roberta_dir: pathlib.Path) -> None:
    """The RoBERTa mask token is set, swallows its leading space, and runs."""
    tokenizer = AutoTokenizer.from_pretrained(roberta_dir)
    assert tokenizer.mask_token == "<mask>"
    assert tokenizer.mask_token_id is not None
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    ids = tokenizer("it was <mask>.")["input_ids"]
    assert ids == [0, *_ids(tokenizer, "it was"), tokenizer.mask_token_id, *_ids(tokenizer, "."), 2]
    model = AutoModelForMaskedLM.from_pretrained(roberta_dir)
    batch = tokenizer(["it was <mask>.", "a good movie"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape[-1] == len(tokenizer)


def test_gpt2_has_no_pad_and_runs(gpt2_dir: pathlib.Path) -> None:
    """GPT-2: no pad token, ``<|endoftext|>`` is bos/eos with the last id."""
    tokenizer = AutoTokenizer.from_pretrained(gpt2_dir)
    assert tokenizer.pad_token is None
    assert tokenizer.eos_token == tokenizer.bos_token == "<|endoftext|>"
    assert tokenizer.eos_token_id == len(tokenizer) - 1
    config = AutoConfig.from_pretrained(gpt2_dir)
    assert config.eos_token_id == config.bos_token_id == tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(gpt2_dir)
    batch = tokenizer("it was great", return_tensors="pt")
    assert model(**batch).logits.shape == (1, batch["input_ids"].shape[1], len(tokenizer))


def test_t5_sentinels_eos_and_forward(t5_dir: pathlib.Path) -> None:
    """T5: pad=0 starts decoding, ``</s>`` is appended, sentinels are single ids."""
    tokenizer = AutoTokenizer.from_pretrained(t5_dir)
    config = AutoConfig.from_pretrained(t5_dir)
    assert tokenizer.pad_token_id == config.pad_token_id == config.decoder_start_token_id == 0
    assert tokenizer("a b")["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.tokenize("great") == tokenizer.tokenize(" great") == ["\u2581great"]
    sentinels = [f"<extra_id_{i}>" for i in range(10)]
    sentinel_ids = tokenizer.convert_tokens_to_ids(sentinels)
    assert tokenizer.unk_token_id not in sentinel_ids
    assert len(set(sentinel_ids)) == 10
    assert _ids(tokenizer, "it was <extra_id_0> .")[2] == sentinel_ids[0]
    model = AutoModelForSeq2SeqLM.from_pretrained(t5_dir)
    batch = tokenizer(["it was <extra_id_0> .", "a good film"], padding=True, return_tensors="pt")
    labels = tokenizer(["<extra_id_0> great", "<extra_id_0> bad"], return_tensors="pt")["input_ids"]
    out = model(**batch, labels=labels)
    assert torch.isfinite(out.loss)
    assert out.logits.shape == (*labels.shape, len(tokenizer))

"""Shared pytest fixtures: tiny local models and the optional shared data folder."""

from __future__ import annotations

import pathlib

import pytest
import torch

import tiny_models

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Directory of a tiny BertForMaskedLM with an English WordPiece tokenizer."""
    return tiny_models.make_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="session")
def roberta_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Directory of a tiny RobertaForMaskedLM with a byte-level BPE tokenizer."""
    return tiny_models.make_roberta(tmp_path_factory.mktemp("roberta"))


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Directory of a tiny GPT2LMHeadModel (no pad token, like real GPT-2)."""
    return tiny_models.make_gpt2(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="session")
def t5_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Directory of a tiny T5ForConditionalGeneration with sentinel tokens."""
    return tiny_models.make_t5(tmp_path_factory.mktemp("t5"))


@pytest.fixture(scope="session")
def bert_zh_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Directory of a tiny BertForMaskedLM with a Chinese character vocabulary."""
    return tiny_models.make_bert_zh(tmp_path_factory.mktemp("bert_zh"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """Path of ``../shared/data`` next to the repository; skip the test if absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"../shared/data is absent: expected the shared data folder at {SHARED_DATA} "
            "(a sibling of the repository root); tests that need real data sets are skipped."
        )
    return SHARED_DATA


# Tiny models gain nothing from intra-op threads, and two threads on a shared 2-core machine
# slow every forward pass many times over (OpenMP threads wait on each other): run on one.
torch.set_num_threads(1)

"""Shared pytest fixtures: tiny local models and the optional shared data folder."""

from __future__ import annotations

import pathlib

import pytest
import torch

import tiny_models

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


TINY_MODELS = {
    "bert": (tiny_models.make_bert, "a tiny BertForMaskedLM with an English WordPiece tokenizer"),
    "roberta": (tiny_models.make_roberta, "a tiny RobertaForMaskedLM with a byte-level BPE tokenizer"),
    "gpt2": (tiny_models.make_gpt2, "a tiny GPT2LMHeadModel (no pad token, like real GPT-2)"),
    "t5": (tiny_models.make_t5, "a tiny T5ForConditionalGeneration with sentinel tokens"),
    "gpt2_chatml": (tiny_models.make_gpt2_chat, "a tiny GPT2LMHeadModel with ChatML tokens and a chat template"),
    "bert_zh": (tiny_models.make_bert_zh, "a tiny BertForMaskedLM with a Chinese character vocabulary"),
}


def _tiny_model_fixtures(name: str, make, what: str) -> None:
    """`NAME_dir` (session): the model's directory; `NAME` (per test module): it loaded as a Backbone."""

    def directory(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
        return make(tmp_path_factory.mktemp(name))

    def backbone(request):
        from prompttune.backbones import load_backbone

        return load_backbone(str(request.getfixturevalue(f"{name}_dir")))

    directory.__doc__, backbone.__doc__ = f"Directory of {what}.", f"{what[0].upper()}{what[1:]}, loaded."
    globals()[f"{name}_dir"] = pytest.fixture(scope="session", name=f"{name}_dir")(directory)
    globals()[name] = pytest.fixture(scope="module", name=name)(backbone)


for _name, (_make, _what) in TINY_MODELS.items():
    _tiny_model_fixtures(_name, _make, _what)


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

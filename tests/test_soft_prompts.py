"""Soft tokens (`{soft}`, `{soft:N}`, `{soft:"words"}`): where they go, what they compute, what is saved.

The decisive check: soft vectors initialised from words' embeddings, untrained, must give exactly
the scores of the template with those words written in, on every model kind. That pins down the
rendering (positions, ids), the embedding hook, and the scorers' handling of soft ids at once.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from prompttune import TaskSpec, build_classifier, load_artifact, save_artifact
from prompttune.errors import ConfigError, TemplateError
from prompttune.evaluation import predict_scores

EXAMPLES = [{"text": "great fun", "label": "1"}, {"text": "a terrible , boring movie .", "label": "0"},
            {"text": "very good", "label": "1"}]
VERBALIZER = {"0": ["bad", "wonderful"], "1": ["good"]}
MODELS = ["bert_dir", "roberta_dir", "gpt2_dir", "t5_dir"]


def spec(model_dir, method: str, template: str, **options) -> TaskSpec:
    return TaskSpec(method=method, model=str(model_dir), text_fields=["text"], labels=["0", "1"],
                    template=template, verbalizer=VERBALIZER, options=options)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("where", ["start", "middle", "after the mask"])
def test_word_initialised_soft_tokens_score_exactly_like_the_words(model, where, request):
    model_dir = request.getfixturevalue(model)
    soft, plain = {
        "start": ('{soft:"it was"} {text} {mask} .', "it was {text} {mask} ."),
        "middle": ('{text} {soft:"it was"} {mask} .', "{text} it was {mask} ."),
        "after the mask": ('{text} it was {mask} {soft:"the movie"} .', "{text} it was {mask} the movie ."),
    }[where]
    if model == "gpt2_dir" and where == "after the mask":
        pytest.skip("a causal LM scores the text after the mask as part of the label's continuation; soft tokens "
                    "there are input, not text to score, so the two templates differ by design")
    prompted, _ = build_classifier(spec(model_dir, "prompt-tuning", soft))
    written, _ = build_classifier(spec(model_dir, "zero-shot", plain))
    torch.testing.assert_close(predict_scores(prompted, EXAMPLES), predict_scores(written, EXAMPLES), rtol=0, atol=1e-5,
                               msg=f"{where}: soft tokens initialised from words should score as the words do")


@pytest.mark.parametrize("model", MODELS)
def test_soft_vectors_change_the_scores_and_get_gradients(model, request):
    clf, _ = build_classifier(spec(request.getfixturevalue(model), "prompt-tuning", "{soft:2} {text} {soft} it was {mask} ."))
    batch = clf.collate(EXAMPLES)
    before = clf(batch).detach()
    torch.nn.functional.cross_entropy(clf(batch), batch["labels"]).backward()
    grad = clf.soft.vectors.grad
    assert grad is not None and grad.abs().sum() > 0, "no gradient reached the soft vectors"
    assert all(p.grad is None for p in clf.model.parameters()), "gradients reached the frozen model"
    with torch.no_grad():
        clf.soft.vectors.add_(torch.randn_like(clf.soft.vectors))
    assert not torch.allclose(clf(batch), before), "changing the soft vectors did not change the scores"


def test_the_number_of_vectors_follows_the_template(bert_dir):
    clf, _ = build_classifier(spec(bert_dir, "zero-shot", "{text} {mask}"))
    n_words = len(clf.tokenizer("wonderful movies", add_special_tokens=False)["input_ids"])
    assert n_words > 2, "test premise: the words span several tokens"
    clf, _ = build_classifier(spec(bert_dir, "prompt-tuning", '{soft:4} {text} {soft:"wonderful movies"} {mask} {soft}'))
    assert clf.soft.vectors.shape == (4 + n_words + 1, clf.model.config.hidden_size)


@pytest.mark.parametrize("init", ["vocab", "random"])
def test_soft_vectors_start_at_the_scale_of_the_embeddings(bert_dir, init):
    clf, _ = build_classifier(spec(bert_dir, "prompt-tuning", "{soft:50} {text} {mask}", init=init))
    table = clf.model.get_input_embeddings().weight
    ratio = clf.soft.vectors.std().item() / table.std().item()
    assert 0.5 < ratio < 2, f"init {init!r}: soft vectors' spread is {ratio:.2f}× the embedding table's"


def test_p_tuning_saves_only_the_encoder_outputs(bert_dir, tmp_path):
    s = spec(bert_dir, "p-tuning", "{soft:3} {text} it was {mask} .", encoder="lstm")
    clf, fp = build_classifier(s)
    assert any("lstm" in n for n, p in clf.named_parameters() if p.requires_grad), "the LSTM encoder should train"
    with torch.no_grad():
        expected_vectors = clf.soft.encoder().clone()
    before = predict_scores(clf, EXAMPLES)
    save_artifact(tmp_path, s, clf, fp)
    weights = load_file(str(tmp_path / "weights.safetensors"))
    assert set(weights) == {"soft.vectors"}, f"a p-tuning artifact should hold only the vectors, holds {sorted(weights)}"
    assert torch.equal(weights["soft.vectors"], expected_vectors)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["stored_numbers"] == 3 * clf.model.config.hidden_size
    assert 0 < config["fraction_of_backbone"] < 0.01
    loaded, _ = load_artifact(tmp_path)
    assert not hasattr(loaded.soft, "encoder"), "loading a p-tuning task must not need its encoder"
    assert torch.equal(predict_scores(loaded, EXAMPLES), before)


def test_a_soft_template_with_a_method_without_soft_prompt_is_refused(bert_dir):
    with pytest.raises(TemplateError, match="has soft tokens, but method 'zero-shot' has no soft prompt"):
        build_classifier(spec(bert_dir, "zero-shot", "{soft:2} {text} {mask}"))


def test_a_soft_prompt_method_without_soft_tokens_is_refused(bert_dir):
    with pytest.raises(TemplateError, match="has no soft tokens for this method to train"):
        build_classifier(spec(bert_dir, "prompt-tuning", "{text} it was {mask}"))


def test_an_unknown_prompt_encoder_is_refused(bert_dir):
    with pytest.raises(ConfigError, match="method.encoder must be one of"):
        build_classifier(spec(bert_dir, "p-tuning", "{soft:2} {text} {mask}", encoder="gru"))


def test_truncation_keeps_every_soft_token(bert_dir):
    clf, _ = build_classifier(spec(bert_dir, "prompt-tuning", "{soft:5} {text} it was {mask} ."))
    clf.scorer.max_length = 12
    long = {"text": "good " * 50, "label": "1"}
    batch = clf.collate([long])
    ids = batch["ids1"][0]
    soft_base = clf.model.get_input_embeddings().num_embeddings
    assert len(ids) == 12 and (ids >= soft_base).sum() == 5, f"soft tokens lost to truncation: {ids.tolist()}"

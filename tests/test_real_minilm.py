"""Real weights: the embedded all-MiniLM-L6-v2 (offline), with SST-2 from ../shared/data.

Marked slow (skip them with `pytest -m 'not slow'`): they load a 22.7 M-parameter model and fit an MLM head.
"""

from __future__ import annotations

import pytest
import torch

from prompttune import ModelError, TaskSpec, build_classifier, evaluate, load_artifact, load_backbone, save_artifact
from prompttune.data import load_examples, sample_per_class
from prompttune.lm_head import fit_and_save_lm_head, masked_token_accuracy

pytestmark = pytest.mark.slow

SPEC = dict(model="all-MiniLM-L6-v2", text_fields=["sentence"], labels=["0", "1"],
            template="{sentence} It was {mask}.", verbalizer={"0": ["terrible"], "1": ["great"]}, max_length=64)


@pytest.fixture(scope="module")
def sst2(shared_data):
    return load_examples(shared_data / "sst2" / "train.tsv", ["sentence"], "label")


@pytest.fixture(scope="module")
def head_dir(sst2, tmp_path_factory):
    out = tmp_path_factory.mktemp("head")
    report = fit_and_save_lm_head("all-MiniLM-L6-v2", [ex["sentence"] for ex in sst2[:3000]], out,
                                  max_texts=2500, held_out=500, progress=False)
    assert report["masked_token_accuracy"] > 0.03, f"the fitted head should beat chance by far: {report}"
    return out


def test_the_default_loads_offline_as_a_masked_lm_without_a_head():
    bb = load_backbone()
    assert bb.kind == "masked" and bb.model.config.hidden_size == 384
    assert bb.missing_head, "all-MiniLM-L6-v2 ships without cls.predictions; this must be detected"


def test_label_word_methods_refuse_the_default_without_a_fitted_head():
    with pytest.raises(ModelError, match="fit-lm-head"):
        build_classifier(TaskSpec(method="zero-shot", **SPEC))


def test_zero_shot_with_a_fitted_head_runs_and_round_trips(sst2, head_dir, tmp_path):
    clf, fp = build_classifier(TaskSpec(method="zero-shot", lm_head=str(head_dir), **SPEC))
    test = sample_per_class(sst2[-5000:], 50, seed=0)
    result = evaluate(clf, test)
    assert result["n"] == 100 and 0.0 <= result["accuracy"] <= 1.0
    save_artifact(tmp_path / "task", TaskSpec(method="zero-shot", lm_head=str(head_dir), **SPEC), clf, fp)
    loaded, _ = load_artifact(tmp_path / "task")
    batch = clf.collate(test[:8])
    assert torch.equal(clf(batch), loaded(batch))


def test_the_fitted_head_predicts_masked_tokens_on_held_out_text(sst2, head_dir):
    bb = load_backbone(lm_head=str(head_dir))
    acc = masked_token_accuracy(bb.model, bb.tokenizer, [ex["sentence"] for ex in sst2[-500:]])
    assert acc > 0.03, f"masked-token accuracy {acc:.3f} is near chance (1/30522)"


def test_soft_words_and_a_zero_prefix_reproduce_the_real_model(sst2, head_dir):
    """On the real weights: {soft:"It was"} untrained scores as the written words; a 0-length prefix is the bare model."""
    test = sample_per_class(sst2[-5000:], 8, seed=1)
    written, _ = build_classifier(TaskSpec(method="zero-shot", lm_head=str(head_dir), **SPEC))
    soft_spec = {**SPEC, "template": '{sentence} {soft:"It was"} {mask}.'}
    soft, _ = build_classifier(TaskSpec(method="prompt-tuning", lm_head=str(head_dir), **soft_spec))
    prefix, _ = build_classifier(TaskSpec(method="p-tuning-v2", lm_head=str(head_dir), options={"prompt_length": 0}, **SPEC))
    batch = written.collate(test)
    with torch.no_grad():
        expected = written(batch)
        torch.testing.assert_close(soft(soft.collate(test)), expected, rtol=0, atol=1e-4)
        torch.testing.assert_close(prefix(batch), expected, rtol=0, atol=0)


def test_p_tuning_v2_trains_a_few_steps_and_round_trips(sst2, tmp_path):
    from prompttune import TrainConfig, train

    spec = TaskSpec(method="p-tuning-v2", model="all-MiniLM-L6-v2", text_fields=["sentence"], labels=["0", "1"],
                    max_length=64, options={"prompt_length": 8, "head": True})
    clf, fp = build_classifier(spec)
    before = {n: p.detach().clone() for n, p in clf.model.base_model.named_parameters()}
    train(clf, sample_per_class(sst2[:2000], 16, seed=0), None, TrainConfig(epochs=1, lr=1e-2, batch_size=8, progress=False))
    assert all(torch.equal(before[n], p) for n, p in clf.model.base_model.named_parameters()), "the backbone changed"
    save_artifact(tmp_path / "task", spec, clf, fp)
    loaded, config = load_artifact(tmp_path / "task")
    assert config["stored_numbers"] < 0.01 * config["total_parameters"]
    test = sample_per_class(sst2[-5000:], 4, seed=2)
    clf.eval()  # train() leaves the classifier in training mode (dropout on)
    with torch.no_grad():
        assert torch.equal(clf(clf.collate(test)), loaded(loaded.collate(test)))


# --- prompts found, not written (issue: AutoPrompt, label-word search, demonstrations) -----------------

def test_searched_triggers_and_label_words_on_the_real_vocabulary_reload_as_ordinary_prompts(sst2, head_dir):
    """On the full 30,522-token WordPiece vocabulary: the written template scores what the search
    scored, and the searched verbalizer reaches the dev accuracy it reported."""
    from prompttune.models import PromptClassifier
    from prompttune.search.label_words import search_label_words
    from prompttune.search.triggers import search_triggers, trigger_classifier
    from prompttune.templates import parse_template
    from prompttune.verbalizers import parse_verbalizer

    bb = load_backbone(lm_head=str(head_dir))
    train, dev = sample_per_class(sst2[:2000], 8, seed=1), sample_per_class(sst2[2000:4000], 8, seed=2)
    verbalizer = parse_verbalizer(SPEC["verbalizer"])
    template = parse_template("{sentence} {trigger:2} {mask}.")
    found = search_triggers(bb, template, verbalizer, train, steps=2, candidates=4, batch_size=8, max_length=64,
                            progress=False)
    written = PromptClassifier(bb, parse_template(found.template), verbalizer, 64)
    searched = trigger_classifier(bb, template, verbalizer, found.token_ids, 64)
    with torch.no_grad():
        torch.testing.assert_close(written(written.collate(train)), searched(searched.collate(train)), rtol=0, atol=1e-5)

    labels = search_label_words(bb, parse_template(SPEC["template"]), ["0", "1"], train, dev, per_class=10,
                                assignments=10, max_length=64, progress=False)
    clf = PromptClassifier(bb, parse_template(SPEC["template"]), parse_verbalizer(labels.verbalizer), 64).eval()
    assert evaluate(clf, dev)["accuracy"] == labels.dev_accuracy
    assert all(len(bb.tokenizer.tokenize(" " + w[0])) == 1 for w in labels.verbalizer.values()), labels.verbalizer


def test_similar_demonstrations_come_from_the_real_sentence_encoder(head_dir):
    from prompttune.demonstrations import Demonstrations
    from prompttune.verbalizers import parse_verbalizer

    pool = [{"sentence": s, "label": "1"} for s in ("a wonderful , moving film", "the pasta was delicious", "my phone charges fast")]
    pool += [{"sentence": s, "label": "0"} for s in ("a dull , lifeless movie", "the soup was cold", "the battery died quickly")]
    demos = Demonstrations(pool, parse_verbalizer(SPEC["verbalizer"]), ["sentence"], selection="similar")
    query = "an excellent film with great acting"
    chosen = demos.fill([{"sentence": query}])[0]
    q = demos.encoder.encode([query])[0]
    for j, group in enumerate((pool[3:], pool[:3])):
        texts = [ex["sentence"] for ex in group]
        order = [texts[i] for i in (demos.encoder.encode(texts) @ q).argsort(descending=True).tolist()]
        assert "film" in order[0] or "movie" in order[0], f"MiniLM should rank the film review first: {order}"
        assert chosen[f"demo:{j}:sentence"] in order[:2], f"demonstration {j} is not among the most similar half: {chosen}"

"""AutoPrompt trigger search (`prompttune.search.triggers`): what it ranks, what it finds, what it leaves.

The decisive checks: the gradient ranking is the first-order change of the loss (against finite
differences), and the template the search writes scores exactly as the searched tokens did, so
what was found is what gets used.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prompttune.backbones import load_backbone
from prompttune.errors import ConfigError, DataError, TemplateError
from prompttune.models import PromptClassifier
from prompttune.search.common import word_tokens
from prompttune.search.triggers import rank_candidates, search_triggers, trigger_classifier
from prompttune.soft_prompts import install_soft_embedding
from prompttune.templates import parse_template
from prompttune.verbalizers import parse_verbalizer

EXAMPLES = [{"text": t, "label": str(i % 2)} for i, t in enumerate(
    ["great fun", "a terrible movie", "very good film", "boring and bad",
     "it was fun", "not good", "a good review", "awful film"])]
VERBALIZER = parse_verbalizer({"0": "bad", "1": "good"})
TEMPLATE = "{text} {trigger:3} {mask} ."


def batch_loss(clf, batch) -> torch.Tensor:
    return F.cross_entropy(clf(batch), batch["labels"])


def test_rank_candidates_puts_the_steepest_descent_first():
    embeddings = torch.eye(4)  # token i points along axis i
    grad = torch.tensor([0.5, -2.0, 1.0, -1.0])
    ranked = rank_candidates(grad, embeddings, torch.tensor([0, 1, 2, 3]))
    assert ranked.tolist() == [1, 3, 0, 2], "the token whose embedding most opposes the gradient should come first"


def test_the_gradient_ranking_matches_brute_force_directional_derivatives(bert_dir):
    bb = load_backbone(str(bert_dir), dtype=torch.float64)
    the = bb.tokenizer.convert_tokens_to_ids("the")
    clf = trigger_classifier(bb, parse_template(TEMPLATE), VERBALIZER, [the] * 3)
    batch, slot = clf.collate(EXAMPLES), 1
    vectors, embeddings = clf.soft.vectors, clf.model.get_input_embeddings().weight.detach()
    (grad,) = torch.autograd.grad(batch_loss(clf, batch), vectors)  # as the search does
    candidates = word_tokens(bb.tokenizer)[:50]

    def loss_along(w: int, t: float) -> float:
        with torch.no_grad():
            vectors[slot] = embeddings[the] + t * (embeddings[w] - embeddings[the])
            return batch_loss(clf, batch).item()

    h = 0.03  # five-point central difference: the scorers' float32 log-softmax limits precision to ~1e-5
    brute = torch.tensor([
        -(-loss_along(w, 2 * h) + 8 * loss_along(w, h) - 8 * loss_along(w, -h) + loss_along(w, -2 * h)) / (12 * h)
        for w in candidates.tolist()
    ], dtype=torch.float64)  # first-order score: minus the loss's derivative along E[w] - E[the]
    first_order = -(embeddings[candidates] - embeddings[the]) @ grad[slot]
    torch.testing.assert_close(first_order, brute, rtol=0, atol=5e-5,
                               msg="(E[w] - E[cur]) · grad is not the loss's derivative towards token w")

    ranked = rank_candidates(grad[slot], embeddings, candidates)
    by_brute = candidates[brute.argsort(descending=True)]
    assert ranked[:10].tolist() == by_brute[:10].tolist(), "the top 10 differ from the brute-force ranking"


@pytest.mark.parametrize("model", ["bert_dir", "gpt2_dir"])
def test_the_search_lowers_the_loss_with_tokens_from_the_candidates(model, request):
    bb = load_backbone(str(request.getfixturevalue(model)))
    found = search_triggers(bb, parse_template(TEMPLATE), VERBALIZER, EXAMPLES, steps=6, batch_size=len(EXAMPLES),
                            progress=False)
    start = bb.tokenizer(" the", add_special_tokens=False)["input_ids"]
    assert found.token_ids != start * 3, "no trigger token changed"
    assert found.loss < found.initial_loss, f"the loss did not fall: {found.initial_loss:.4f} → {found.loss:.4f}"
    losses = [h["loss"] for h in found.history]
    assert all(b <= a + 1e-6 for a, b in zip(losses, losses[1:])), \
        f"with every example in each batch, a step never raises the loss: {losses}"
    assert [h["slot"] for h in found.history] == [0, 1, 2, 0, 1, 2], "one slot per step, in turn"
    allowed = set(word_tokens(bb.tokenizer, alphabetic=False).tolist())
    labels = {i for w in (" bad", " good", "bad", "good") for i in bb.tokenizer(w, add_special_tokens=False)["input_ids"]}
    assert set(found.token_ids) <= allowed - labels, "a trigger is outside the candidates or spells a label word"


@pytest.mark.parametrize("model", ["bert_dir", "gpt2_dir", "roberta_dir", "t5_dir"])
@pytest.mark.parametrize("template", [TEMPLATE, "{trigger:2} {text} . {trigger} {mask} ."])
def test_the_written_template_scores_exactly_like_the_searched_tokens(model, template, request):
    bb = load_backbone(str(request.getfixturevalue(model)))
    found = search_triggers(bb, parse_template(template), VERBALIZER, EXAMPLES, steps=4, progress=False)
    written = parse_template(found.template)
    assert written.n_triggers == 0, f"the written template still has trigger slots: {found.template!r}"
    with torch.no_grad():
        searched = trigger_classifier(bb, parse_template(template), VERBALIZER, found.token_ids)
        by_words = PromptClassifier(bb, written, VERBALIZER)
        diff = (searched(searched.collate(EXAMPLES)) - by_words(by_words.collate(EXAMPLES))).abs().max().item()
    assert diff < 1e-5, \
        f"{found.template!r} scores differently from the searched tokens {found.token_ids} (max diff {diff:.2e})"


def test_the_backbone_is_left_as_found(bert_dir):
    bb = load_backbone(str(bert_dir))
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    search_triggers(bb, parse_template(TEMPLATE), VERBALIZER, EXAMPLES, steps=3, progress=False)
    after = bb.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the search changed backbone weights"
    assert install_soft_embedding(bb.model)["table"] is None, "the search left its trigger table bound"
    assert all(p.grad is None for p in bb.model.parameters()), "the search left gradients on the backbone"
    assert not bb.model.training, "the search changed the backbone's train/eval mode"


def test_a_failing_search_still_unbinds_its_trigger_table(bert_dir):
    bb = load_backbone(str(bert_dir))
    broken = EXAMPLES + [{"label": "0"}]  # no text field: rendering fails mid-search
    with pytest.raises(TemplateError, match="example has no field 'text'"):
        search_triggers(bb, parse_template(TEMPLATE), VERBALIZER, broken, steps=3, progress=False)
    assert install_soft_embedding(bb.model)["table"] is None, "a failed search left its trigger table bound"


@pytest.mark.parametrize(("template", "examples", "options", "error", "message"), [
    ("{text} it was {mask} .", EXAMPLES, {}, TemplateError, "has no {trigger} slot"),
    (TEMPLATE, EXAMPLES, {"steps": 0}, ConfigError, "steps must be ≥ 1, got 0"),
    (TEMPLATE, EXAMPLES, {"candidates": 0}, ConfigError, "candidates must be ≥ 1, got 0"),
    (TEMPLATE, [], {}, DataError, "needs labelled examples, got none"),
    (TEMPLATE, [{"text": "fun"}, *EXAMPLES], {}, DataError, "1 of 9 examples have no 'label'"),
    (TEMPLATE, EXAMPLES, {"init": "good"}, ConfigError, "init word 'good' is not a single whole-word token"),
    (TEMPLATE, EXAMPLES, {"init": "wonderful"}, ConfigError, "init word 'wonderful' is not a single"),
    ("{text} it was{trigger} {mask} .", EXAMPLES, {}, TemplateError, "put a space before and after each {trigger}"),
])
def test_bad_input_is_an_error_naming_the_problem(bert_dir, template, examples, options, error, message):
    bb = load_backbone(str(bert_dir))
    with pytest.raises(error) as err:
        search_triggers(bb, parse_template(template), VERBALIZER, examples, progress=False, **options)
    assert message in str(err.value), f"expected the error to say {message!r}, it said: {err.value}"

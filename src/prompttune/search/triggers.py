"""AutoPrompt trigger search (Shin et al. 2020): fill a template's `{trigger:N}` slots with the
vocabulary tokens that best elicit the label words.

Discrete search guided by gradients (AutoPrompt §2.2). While it runs, the trigger slots are
soft tokens whose vectors are always rows of the input embedding table E, so a trigger token
reaches the model through the soft-token hook (`prompttune.soft_prompts`). Each step, for one
slot j:

1. the gradient g of the batch loss with respect to the slot's embedding ranks every candidate
   token w by the first-order change of the loss, (E[w] − E[current]) · g: best first is the
   most negative;
2. the top `candidates` are tried for real (one forward pass each) and the best is kept if it
   lowers the batch loss.

The result is an ordinary template with the words written in: the candidates are whole-word
tokens that come back as themselves when written as text, so the saved template scores exactly
what the search scored.

Example:
    >>> found = search_triggers(load_backbone("bert-base-uncased"),
    ...                         parse_template("{sentence} {trigger:3} {mask}."),
    ...                         parse_verbalizer({0: "terrible", 1: "great"}), train_examples)
    >>> found.template            # e.g. '{sentence} absolutely definitely was {mask}.'
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..backbones import Backbone
from ..devices import model_device, to_device
from ..errors import ConfigError, DataError, TemplateError
from ..models import PromptClassifier
from ..progress import bar_off
from ..soft_prompts import SoftPrompt, clear_soft
from ..templates import Template, Trigger, encode_example, fill_triggers, parse_template, segment_texts
from ..verbalizers import Verbalizer, tokenize_words
from .common import token_text, word_tokens


@dataclass
class TriggerSearch:
    """What a trigger search found."""

    template: str
    """The template with the found words written in place of the trigger slots (no triggers left)."""
    words: list[str]
    """One word per trigger token, in order."""
    token_ids: list[int]
    """The vocabulary ids of `words`, as the search scored them."""
    loss: float
    """Mean cross-entropy on the search's examples with the found triggers."""
    initial_loss: float
    """The same with the initial trigger tokens."""
    history: list[dict] = field(default_factory=list)
    """One record per step: step, slot, the word in that slot after the step, and the step's batch loss with it."""


def rank_candidates(grad: torch.Tensor, embeddings: torch.Tensor, candidate_ids: torch.Tensor) -> torch.Tensor:
    """Candidate ids ordered by the first-order loss change of putting each in a slot, best first.

    Swapping the slot's token e_cur for w changes the loss by about (E[w] − e_cur) · grad
    (AutoPrompt §2.2); e_cur · grad is the same for every w, so ranking by −E[w] · grad suffices.

    Example:
        >>> rank_candidates(table_grad[j], model.get_input_embeddings().weight, word_tokens(tok))[:10]
    """
    scores = -(embeddings[candidate_ids].float() @ grad.float())  # (n_candidates,)
    return candidate_ids[scores.argsort(descending=True, stable=True).to(candidate_ids.device)]


def trigger_classifier(backbone: Backbone, template: Template, verbalizer: Verbalizer, token_ids: list[int],
                       max_length: int = 128) -> PromptClassifier:
    """A classifier whose trigger slots hold the embeddings of `token_ids` (the search's view of a template).

    Example:
        >>> clf = trigger_classifier(bb, parse_template("{s} {trigger:2} {mask}"), verbalizer, [101, 102])
        >>> clf(clf.collate(examples))        # scores as the template with those two words written in
    """
    if len(token_ids) != template.n_triggers:
        raise TemplateError(
            f"template {template.source!r} has {template.n_triggers} trigger tokens, got {len(token_ids)} ids"
        )
    clf = PromptClassifier(backbone, template, verbalizer, max_length)
    embeddings = clf.model.get_input_embeddings().weight.detach()
    rows = torch.tensor(token_ids, device=embeddings.device)
    clf.soft = SoftPrompt(clf.model, embeddings[rows].clone())  # the classifier binds it before each forward
    return clf


def search_triggers(backbone: Backbone, template: Template, verbalizer: Verbalizer, examples: list[dict], *,
                    steps: int = 50, candidates: int = 10, batch_size: int = 16, max_length: int = 128,
                    seed: int = 0, progress: bool = True, init: str | None = None) -> TriggerSearch:
    """Find words for the template's `{trigger}` slots that minimise the classification loss on `examples`.

    `init` is the word every slot starts from (default "the", else the first candidate). The
    backbone is left as found: weights untouched, no soft table bound, same train/eval mode.

    Example:
        >>> found = search_triggers(bb, parse_template("{text} {trigger:3} {mask}."), verbalizer, train, steps=100)
        >>> parse_template(found.template)       # an ordinary template, for any method
    """
    if template.n_triggers == 0:
        raise TemplateError(f"template {template.source!r} has no {{trigger}} slot to search; add one, e.g. "
                            "'{sentence} {trigger:3} {mask}.'")
    for name, value in (("steps", steps), ("candidates", candidates), ("batch_size", batch_size)):
        if value < 1:
            raise ConfigError(f"{name} must be ≥ 1, got {value}")
    if not examples:
        raise DataError("a trigger search needs labelled examples, got none")
    unlabelled = sum("label" not in ex for ex in examples)
    if unlabelled:
        raise DataError(f"{unlabelled} of {len(examples)} examples have no 'label'; a trigger search needs labelled examples")

    tokenizer = backbone.tokenizer
    pools = _candidate_pools(tokenizer, template, verbalizer)
    ids = [_initial_token(pool, tokenizer, space, init) for pool, space in pools]
    writes_back = _WriteBack(template, tokenizer)
    if not writes_back(ids):
        raise TemplateError(
            f"in template {template.source!r} the trigger words would not tokenize back to the searched tokens "
            "(written as text they merge with the text around them); put a space before and after each {trigger}"
        )

    clf = trigger_classifier(backbone, template, verbalizer, ids, max_length)
    embeddings = clf.model.get_input_embeddings().weight.detach()  # (V, dim)
    vectors = clf.soft.vectors  # (n_triggers, dim): rows of E, the table the hook reads
    was_training = clf.model.training
    clf.eval()  # no dropout: the loss of a token must not depend on the draw
    generator = torch.Generator().manual_seed(seed)
    history: list[dict] = []
    try:
        initial_loss = _mean_loss(clf, examples, batch_size)
        bar = tqdm(range(steps), desc="trigger search", disable=bar_off(progress))
        for step in bar:
            pick = torch.randperm(len(examples), generator=generator)[:batch_size]  # all of them if they fit one batch
            batch = _collate(clf, [examples[i] for i in pick.tolist()])
            j = step % len(ids)  # one slot per step (AutoPrompt §2.2), in turn
            # Only the trigger vectors get a gradient: autograd.grad leaves the backbone's .grad alone.
            loss = _loss(clf, batch)
            (grad,) = torch.autograd.grad(loss, vectors)  # (n_triggers, dim)
            pool, _ = pools[j]
            ranked = rank_candidates(grad[j], embeddings, pool[pool != ids[j]])
            best, best_loss = ids[j], loss.item()
            with torch.no_grad():
                for w in ranked[:candidates].tolist():
                    tried = ids[:j] + [w] + ids[j + 1 :]
                    if not writes_back(tried):
                        continue  # e.g. punctuation merging with the text after the slot
                    vectors[j] = embeddings[w]
                    tried_loss = _loss(clf, batch).item()
                    if tried_loss < best_loss:
                        best, best_loss = w, tried_loss
                ids[j] = best
                vectors[j] = embeddings[best]
            history.append({"step": step, "slot": j, "word": token_text(tokenizer, best), "loss": best_loss})
            bar.set_postfix(loss=f"{best_loss:.4f}")
        final_loss = _mean_loss(clf, examples, batch_size)
    finally:
        clear_soft(clf.model)
        clf.model.train(was_training)
    words = [token_text(tokenizer, i) for i in ids]
    return TriggerSearch(fill_triggers(template, words), words, ids, final_loss, initial_loss, history)


def _loss(clf: PromptClassifier, batch: dict) -> torch.Tensor:
    """Cross-entropy of the class scores (mean label-word log-probs per class) against the labels."""
    return F.cross_entropy(clf(batch), batch["labels"])


def _collate(clf: PromptClassifier, examples: list[dict]) -> dict:
    return to_device(clf.collate(examples), model_device(clf.model))


@torch.no_grad()
def _mean_loss(clf: PromptClassifier, examples: list[dict], batch_size: int) -> float:
    total = 0.0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        total += _loss(clf, _collate(clf, chunk)).item() * len(chunk)
    return total / len(examples)


def _candidate_pools(tokenizer, template: Template, verbalizer: Verbalizer) -> list[tuple[torch.Tensor, bool]]:
    """Per trigger slot: the token ids it may take, and whether a space precedes it.

    Whole-word tokens that come back as themselves when written as text (with the space the slot
    has: GPT-2's "Ġthe" and "the" are different tokens), minus the label words' tokens so the
    triggers cannot simply spell the answer (AutoPrompt §2.2).
    """
    dummy = {f: "x" for f in template.fields}
    spaces = []
    for seg, text in segment_texts(template, dummy):
        if isinstance(seg, Trigger):
            spaces += [text.startswith(" ")] + [True] * (seg.n - 1)  # words in one slot are joined by spaces
    label_ids = torch.tensor(sorted({i for space in (True, False)
                                     for word in tokenize_words(tokenizer, verbalizer.flat_words, leading_space=space)
                                     for i in word}))
    pools = {}
    for space in set(spaces):
        ids = word_tokens(tokenizer, leading_space=space, alphabetic=False)
        pools[space] = ids[~torch.isin(ids, label_ids)]
        if len(pools[space]) == 0:
            raise TemplateError("the tokenizer has no whole-word tokens (other than the label words) to search over")
    return [(pools[space], space) for space in spaces]


def _initial_token(pool: torch.Tensor, tokenizer, space: bool, init: str | None) -> int:
    word = "the" if init is None else init
    ids = tokenizer((" " if space else "") + word, add_special_tokens=False)["input_ids"]
    if len(ids) == 1 and ids[0] in pool:
        return ids[0]
    if init is not None:
        raise ConfigError(f"init word {init!r} is not a single whole-word token that the search may choose "
                          "(label words are excluded); pick another word")
    return int(pool[0])


class _WriteBack:
    """Whether trigger tokens written into the template as words tokenize back to those same tokens.

    The words join the template text around them; fields are tokenized on their own (see
    `encode_example`), so one example with dummy fields decides it for every example.
    """

    def __init__(self, template: Template, tokenizer):
        self.template, self.tokenizer = template, tokenizer
        self.example = {f: "x" for f in template.fields}
        self.base = len(tokenizer) + 1_000_000  # any id past the vocabulary marks a trigger slot
        self.slots = encode_example(template, tokenizer, self.example, max_length=1 << 30, soft_base=self.base).ids

    def __call__(self, ids: list[int]) -> bool:
        searched = [ids[i - self.base] if i >= self.base else i for i in self.slots]
        filled = parse_template(fill_triggers(self.template, [token_text(self.tokenizer, i) for i in ids]))
        return encode_example(filled, self.tokenizer, self.example, max_length=1 << 30).ids == searched

"""What the searches share: the vocabulary they may choose from, and zero-shot accuracy."""

from __future__ import annotations

import torch

from ..backbones import Backbone
from ..evaluation import evaluate
from ..models import PromptClassifier
from ..templates import Template
from ..verbalizers import Verbalizer


def word_tokens(tokenizer, *, leading_space: bool = True, alphabetic: bool = True) -> torch.Tensor:
    """Ids of the tokens that are whole words and come back as themselves when their text is
    written into a template (sorted, 1-D).

    A token qualifies when its decoded text, stripped, re-encodes (with the template's space
    before it if `leading_space`) to exactly that one id. This drops word pieces ("##ing",
    GPT-2's "ing" without "Ġ"), special and unused tokens, so a search result written as text
    is tokenized back to the ids the search scored. `alphabetic` keeps letters only
    (label words; CJK characters count as letters).

    Example:
        >>> ids = word_tokens(tokenizer)
        >>> tokenizer.convert_ids_to_tokens(ids[:3].tolist())
    """
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    words = [tokenizer.decode([i]).strip() for i in ids]
    keep = [(i, w) for i, w in zip(ids, words) if w and (w.isalpha() if alphabetic else not any(c.isspace() for c in w))]
    if not keep:
        return torch.empty(0, dtype=torch.long)
    lead = " " if leading_space else ""
    encoded = tokenizer([lead + w for _, w in keep], add_special_tokens=False)["input_ids"]
    return torch.tensor(sorted(i for (i, _), enc in zip(keep, encoded) if enc == [i]), dtype=torch.long)


def token_text(tokenizer, token_id: int) -> str:
    """The text a whole-word token stands for (as `word_tokens` checked it)."""
    return tokenizer.decode([int(token_id)]).strip()


def zero_shot_accuracy(backbone: Backbone, template: Template, verbalizer: Verbalizer, examples: list[dict], *,
                       max_length: int = 128, batch_size: int = 32) -> float:
    """Accuracy of template + verbalizer on labelled `examples` with the frozen backbone."""
    clf = PromptClassifier(backbone, template, verbalizer, max_length).eval()  # evaluate restores the mode it finds
    return evaluate(clf, examples, batch_size=batch_size)["accuracy"]

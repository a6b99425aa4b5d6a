"""Verbalizers: which words stand for which label.

A manual verbalizer maps each label to one or more label words; each word may be
several tokens. A class's score is the mean of its words' log-probabilities (PET,
Schick & Schütze 2021, averages over a class's verbalizations the same way).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import VerbalizerError


@dataclass(frozen=True)
class Verbalizer:
    """Labels (as strings, in class-index order) and their label words.

    Example:
        >>> v = parse_verbalizer({0: "terrible", 1: "great"})
        >>> v.labels, v.words
        (('0', '1'), (('terrible',), ('great',)))
    """

    labels: tuple[str, ...]
    words: tuple[tuple[str, ...], ...]

    def to_config(self) -> dict[str, list[str]]:
        return {label: list(words) for label, words in zip(self.labels, self.words)}

    @property
    def flat_words(self) -> list[str]:
        """Every label word, class by class (the order of `word_classes`)."""
        return [w for words in self.words for w in words]

    @property
    def word_classes(self) -> torch.Tensor:
        """Class index of each entry of `flat_words`."""
        return torch.tensor([c for c, words in enumerate(self.words) for _ in words])

    def class_index(self, label) -> int:
        """Index of a data label; a label the verbalizer lacks is an error naming it."""
        key = label_key(label)
        try:
            return self.labels.index(key)
        except ValueError:
            raise VerbalizerError(
                f"label {key!r} appears in the data but not in the verbalizer; verbalizer labels: {list(self.labels)}"
            ) from None

    def class_scores(self, word_scores: torch.Tensor) -> torch.Tensor:
        """(B, n_words) word log-probabilities → (B, n_classes): mean over each class's words."""
        classes = self.word_classes.to(word_scores.device)
        sums = torch.zeros(word_scores.shape[0], len(self.labels), dtype=word_scores.dtype, device=word_scores.device)
        sums.index_add_(1, classes, word_scores)
        counts = torch.bincount(classes, minlength=len(self.labels)).to(word_scores.dtype)
        return sums / counts


def label_key(label) -> str:
    """Labels are compared as text, so YAML's `0:` and a TSV's "0" are the same label, and a JSON
    `true` is the label 'true' (JSON's spelling), as a verbalizer's quoted 'true' key.

    Example:
        >>> label_key(0), label_key(1.0), label_key(" pos "), label_key(True)
        ('0', '1', 'pos', 'true')
    """
    if isinstance(label, bool):
        return "true" if label else "false"
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    return str(label).strip()


def parse_verbalizer(mapping) -> Verbalizer:
    """Build a verbalizer from `{label: word}` or `{label: [word, ...]}`.

    Example:
        >>> parse_verbalizer({"neg": ["bad", "awful"], "pos": ["good", "great"]}).words
        (('bad', 'awful'), ('good', 'great'))
    """
    if not isinstance(mapping, dict) or not mapping:
        raise VerbalizerError(
            f"a verbalizer is a mapping from label to label word(s), e.g. {{0: terrible, 1: great}}; got {mapping!r}"
        )
    labels, words = [], []
    for label, value in mapping.items():
        if label is None:
            raise VerbalizerError("a verbalizer label is null (YAML reads an empty key or ~ as null); write the label, "
                                  "e.g. {0: terrible, 1: great}")
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not items:
            raise VerbalizerError(f"label {label!r} needs at least one label word, got {value!r}")
        clean = []
        for w in items:
            if not isinstance(w, str) or not w.strip():
                raise VerbalizerError(f"label {label!r} has an empty or non-text label word: {w!r}")
            clean.append(w.strip())
        key = label_key(label)
        if key in labels:
            raise VerbalizerError(f"label {key!r} is given twice in the verbalizer")
        labels.append(key)
        words.append(tuple(clean))
    return Verbalizer(tuple(labels), tuple(words))


def require_distinct_words(verbalizer: Verbalizer) -> None:
    """Refuse a verbalizer in which one word stands for two labels (it could never tell them apart).

    Raises `VerbalizerError`: "label word 'good' is a word of both label '0' and label '1'..."."""
    owner: dict[str, str] = {}
    for label, words in zip(verbalizer.labels, verbalizer.words):
        for w in words:
            if owner.setdefault(w, label) != label:
                raise VerbalizerError(f"label word {w!r} is a word of both label {owner[w]!r} and label {label!r}; "
                                      "a label word can stand for one label only")


def tokenize_words(tokenizer, words: list[str], *, leading_space: bool) -> list[list[int]]:
    """Token ids of each label word as it appears at the mask (with the template's space, if any)."""
    out = []
    for w in words:
        ids = tokenizer((" " if leading_space else "") + w, add_special_tokens=False)["input_ids"]
        if not ids:
            raise VerbalizerError(f"label word {w!r} tokenizes to nothing with this model's tokenizer")
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
            raise VerbalizerError(
                f"label word {w!r} contains tokens unknown to this model's tokenizer "
                f"({tokenizer.convert_ids_to_tokens(ids)}); choose another word"
            )
        out.append(ids)
    return out

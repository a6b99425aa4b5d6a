"""Demonstrations: labelled examples written into the input, LM-BFF style (Gao et al. 2021, §6).

Every input gets `per_class` demonstrations of each class appended after it, each written with
the task's own template and its mask replaced by the class's label word:

    [CLS] A gripping film. It was [MASK]. [SEP] Dull and long. It was terrible. [SEP] Fun. It was great. [SEP]

Demonstrations are drawn from a pool of labelled examples (the training set; the artifact keeps
it) either at random or among the examples most similar to the input under a sentence encoder
(LM-BFF samples from the top half by SBERT cosine; we do the same). The choice is seeded by the
input's text, so a prediction is reproducible, and an input never gets itself as a
demonstration. The demonstrations' text fields are template fields like the input's, so when
the whole does not fit `max_length` the longest *text* is cut (`templates.encode_example`),
never a template, a label word or the mask.
"""

from __future__ import annotations

import math
import random
import zlib

from .data import by_label
from .errors import ConfigError, DataError
from .templates import Field, Mask, Soft, Template, Text
from .verbalizers import Verbalizer, label_key

SELECTIONS = ("random", "similar")


def text_key(example: dict, fields: list[str]) -> tuple[str, ...]:
    """What makes two examples the same input (their text fields)."""
    return tuple(str(example.get(f, "")).strip() for f in fields)


def filled(template: Template, word: str, *, prefix: str = "") -> Template:
    """The template written for one demonstration: its fields renamed `prefix + name` (the example
    supplies them under those names), the mask replaced by `word`, soft tokens left out
    (demonstrations are text)."""
    segments = []
    for seg in template.segments:
        if isinstance(seg, Field):
            segments.append(Field(prefix + seg.name))
        elif isinstance(seg, Mask):
            segments.append(Text(word))
        elif not isinstance(seg, Soft):
            segments.append(seg)
    return Template(f"{template.source} [demonstration]", tuple(segments))


def separator(tokenizer) -> str:
    """Between input and demonstrations: the model's own separator token where it has one."""
    return f" {tokenizer.sep_token} " if tokenizer.sep_token else "\n\n"


class Demonstrations:
    """Chooses and writes LM-BFF demonstrations for a template task.

    Example:
        >>> demos = Demonstrations(train, verbalizer, ["sentence"], per_class=1, selection="similar")
        >>> template = demos.template(parse_template("{sentence} It was {mask}."), " [SEP] ")
        >>> examples = demos.fill([{"sentence": "A joy."}])    # adds the demonstrations' fields
    """

    def __init__(self, pool: list[dict], verbalizer: Verbalizer, text_fields: list[str], *, per_class: int = 1,
                 selection: str = "random", encoder: str | None = None):
        if selection not in SELECTIONS:
            raise ConfigError(f"method.demo_selection must be one of {list(SELECTIONS)}, got {selection!r}")
        if per_class < 1:
            raise ConfigError(f"method.demonstrations must be ≥ 1 per class, got {per_class}")
        self.verbalizer, self.fields, self.per_class, self.selection = verbalizer, list(text_fields), per_class, selection
        groups = by_label([{**ex, "label": label_key(ex["label"])} for ex in pool])
        self.groups = []
        for label in verbalizer.labels:
            group = groups.get(label, [])
            if len(group) < per_class:
                raise DataError(f"demonstrations need {per_class} example(s) of label {label!r} in the training data; "
                                f"it has {len(group)}")
            self.groups.append(group)
        self.keys = [[text_key(d, self.fields) for d in group] for group in self.groups]
        self.encoder = None
        if selection == "similar":
            from .sentence_encoder import sentence_encoder

            self.encoder = sentence_encoder(encoder)
            self.embeddings = [self.encoder.encode([self._text(ex) for ex in g]) for g in self.groups]

    def _text(self, example: dict) -> str:
        return " ".join(text_key(example, self.fields))

    @property
    def count(self) -> int:
        return self.per_class * len(self.groups)

    def template(self, template: Template, sep: str) -> Template:
        """The input's template followed by every demonstration slot (class by class)."""
        segments = list(template.segments)
        for j in range(self.count):
            word = self.verbalizer.words[j // self.per_class][0]
            segments += [Text(sep), *filled(template, word, prefix=f"demo:{j}:").segments]
        return Template(f"{template.source} + {self.count} demonstration(s)", tuple(segments))

    def fill(self, examples: list[dict]) -> list[dict]:
        """The examples with their demonstrations' text fields added."""
        queries = self.encoder.encode([self._text(ex) for ex in examples]) if self.encoder else None
        out = []
        for i, ex in enumerate(examples):
            key = text_key(ex, self.fields)
            rng = random.Random(zlib.crc32("\x1f".join(key).encode("utf-8")))
            extra, j = {}, 0
            for c, group in enumerate(self.groups):
                allowed = [k for k, other in enumerate(self.keys[c]) if other != key]
                if len(allowed) < self.per_class:
                    raise DataError(f"label {self.verbalizer.labels[c]!r} has no demonstration other than the input itself")
                if queries is not None:
                    # LM-BFF §6.2: sample among the top half most similar, not just the nearest.
                    sims = self.embeddings[c][allowed] @ queries[i]
                    top = sims.argsort(descending=True)[: max(self.per_class, math.ceil(len(allowed) / 2))]
                    allowed = [allowed[k] for k in top.tolist()]
                for k in rng.sample(allowed, self.per_class):
                    extra.update({f"demo:{j}:{f}": group[k][f] for f in self.fields})
                    j += 1
            out.append({**ex, **extra})
        return out

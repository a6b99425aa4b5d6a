"""Task models: a backbone turned into a classifier, either through a prompt or a head.

- `PromptClassifier`: template + verbalizer. Class scores are the verbalizer's mean of label-word
  log-probabilities (see `scoring`); training minimises cross-entropy over them (PET / LM-BFF).
- `HeadClassifier`: a new linear head on the [CLS]/pooled state, the fine-tuning baseline.

Both expose the same two steps: `collate(examples) -> batch` (runs in the data loader) and
`forward(batch) -> (B, n_classes)` scores. Their parameters are named `model.*`, so an artifact's
keys read the same as the backbone's. Prompt methods add `soft` (soft-token vectors) and/or
`deep` (per-layer prefixes) modules, bound to the frozen model at the start of each forward.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import Backbone, fresh_parameters
from .adapters import clear as clear_adapters
from .deep_prompts import clear as clear_deep
from .demonstrations import Demonstrations, separator
from .errors import DataError
from .scoring import make_scorer, pad
from .soft_prompts import clear_soft
from .templates import SpecialTokens, Template, encode_text
from .verbalizers import Verbalizer, label_key


class PromptClassifier(nn.Module):
    """Classify by scoring label words at the template's mask.

    Example:
        >>> clf = PromptClassifier(load_backbone(...), parse_template("{text} It was {mask}."),
        ...                        parse_verbalizer({0: "terrible", 1: "great"}))
        >>> clf(clf.collate([{"text": "A joy.", "label": "1"}])).argmax(-1)
    """

    def __init__(self, backbone: Backbone, template: Template, verbalizer: Verbalizer, max_length: int = 256,
                 demonstrations: Demonstrations | None = None):
        super().__init__()
        self.model = backbone.model
        self.kind = backbone.kind
        self.tokenizer = backbone.tokenizer
        self.template = template
        self.labels = verbalizer.labels
        self.verbalizer = verbalizer
        # LM-BFF demonstrations extend what is scored: the input's template, then theirs.
        self.demonstrations = demonstrations
        scored = demonstrations.template(template, separator(backbone.tokenizer)) if demonstrations else template
        self.scorer = make_scorer(backbone, scored, verbalizer, max_length)
        self.soft, self.deep = None, None

    def collate(self, examples: list[dict]) -> dict:
        batch = self.scorer.encode(self.demonstrations.fill(examples) if self.demonstrations else examples)
        if all("label" in ex for ex in examples):
            batch["labels"] = torch.tensor([self.label_index(ex["label"]) for ex in examples])
        return batch

    def label_index(self, label) -> int:
        return self.verbalizer.class_index(label)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.verbalizer.class_scores(self.word_scores(batch))

    def word_scores(self, batch: dict) -> torch.Tensor:
        """(B, n_words) log-probabilities of every label word, before averaging per class."""
        bind_prompts(self)
        return self.scorer(self.model, batch)

    def head_parameters(self) -> list[nn.Parameter]:
        return []  # the label words' output embeddings are the "head", and they are the LM's own


class HeadClassifier(nn.Module):
    """A sequence-classification model on the raw text fields (the fine-tuning baseline).

    One field is encoded alone, two as a sentence pair ([CLS] a [SEP] b [SEP]); more are
    joined with spaces. The fields are read literally (a "[SEP]" in the data is text), and
    truncation is longest-first (`templates.encode_text`).
    """

    def __init__(self, model: nn.Module, tokenizer, text_fields: list[str], labels: tuple[str, ...], max_length: int = 256):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.text_fields = list(text_fields)
        self.labels = tuple(labels)
        self.max_length = max_length
        self.specials = SpecialTokens.of(tokenizer)
        self.soft, self.deep = None, None

    def collate(self, examples: list[dict]) -> dict:
        rows = []
        for ex in examples:
            texts = [str(ex[f]) for f in self.text_fields]
            text, pair = texts if len(texts) == 2 else (" ".join(texts), None)
            rows.append(encode_text(self.tokenizer, text, pair, max_length=self.max_length, specials=self.specials))
        ids, attn = pad(rows, self.tokenizer.pad_token_id)
        batch = {"ids": ids, "attn": attn}
        if all("label" in ex for ex in examples):
            batch["labels"] = torch.tensor([self.label_index(ex["label"]) for ex in examples])
        return batch

    def label_index(self, label) -> int:
        key = label_key(label)
        if key not in self.labels:
            raise DataError(f"label {key!r} is not one of the task's labels {list(self.labels)}")
        return self.labels.index(key)

    def forward(self, batch: dict) -> torch.Tensor:
        bind_prompts(self)
        return self.model(input_ids=batch["ids"], attention_mask=batch["attn"]).logits

    def head_parameters(self) -> list[nn.Parameter]:
        """The new classification head: everything outside the pretrained base model, and anything
        the checkpoint did not have (e.g. BERT's pooler when it was saved from a masked LM)."""
        base = {id(p) for p in self.model.base_model.parameters()}
        new = {id(p) for p in fresh_parameters(self.model)}
        return [p for p in self.model.parameters() if id(p) not in base or id(p) in new]


def bind_prompts(classifier: nn.Module) -> None:
    """Put the classifier's current soft vectors / prefixes in place on its model, and take away
    any that another task sharing the model left there."""
    if classifier.soft is not None:
        classifier.soft.bind()
    else:
        clear_soft(classifier.model)
    if classifier.deep is not None:
        classifier.deep.bind()
    else:
        clear_deep(classifier.model)
    adapters = getattr(classifier, "adapters", None)
    if adapters is not None:
        adapters.bind()
    else:
        clear_adapters(classifier.model)

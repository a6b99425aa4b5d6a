"""Task models: a backbone turned into a classifier, either through a prompt or a head.

- `PromptClassifier`: template + verbalizer. Class scores are the verbalizer's mean of label-word
  log-probabilities (see `scoring`); training minimises cross-entropy over them (PET / LM-BFF).
- `HeadClassifier`: a new linear head on the [CLS]/pooled state, the fine-tuning baseline.

Both expose the same two steps: `collate(examples) -> batch` (runs in the data loader) and
`forward(batch) -> (B, n_classes)` scores. Their parameters are named `model.*`, so an artifact's
keys read the same as the backbone's. Methods add parts (`model_parts`: `soft` vectors, `deep`
prefixes, `adapters`, `lora`), bound to the frozen model at the start of each forward.

For a forward pass shared with other tasks (`serving.mixed_batch`) a task also says what to run and
read (`reads(batch)`, or None to run its own pass) and how what was read becomes class scores
(`scores_from(batch, logps)`); its own `forward` is the same two steps around one pass.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import Backbone, fresh_parameters
from .demonstrations import Demonstrations, separator
from .errors import DataError
from .model_parts import ModelPart, bind_parts, parts_of
from .scoring import Reads, make_scorer, pad
from .templates import SpecialTokens, Template, encode_text
from .verbalizers import Verbalizer, label_key


class TaskModule(nn.Module):
    """What every task model shares: a frozen `model`, and the parts its method put on it."""

    def parts(self) -> list[ModelPart]:
        """The parts to bind before this task's forward passes (its children that are parts)."""
        return parts_of(self)


class PromptClassifier(TaskModule):
    """Classify by scoring label words at the template's mask.

    Example:
        >>> clf = PromptClassifier(load_backbone(...), parse_template("{text} It was {mask}."),
        ...                        parse_verbalizer({0: "terrible", 1: "great"}))
        >>> clf(clf.collate([{"text": "A joy.", "label": "1"}])).argmax(-1)
    """

    def __init__(self, backbone: Backbone, template: Template, verbalizer: Verbalizer, max_length: int = 256,
                 demonstrations: Demonstrations | None = None, word_score: str = "sum"):
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
        self.scorer = make_scorer(backbone, scored, verbalizer, max_length, word_score)
        self.soft, self.deep = None, None

    def collate(self, examples: list[dict]) -> dict:
        batch = self.scorer.encode(self.demonstrations.fill(examples) if self.demonstrations else examples)
        if all("label" in ex for ex in examples):
            batch["labels"] = torch.tensor([self.label_index(ex["label"]) for ex in examples])
        return batch

    def label_index(self, label) -> int:
        return self.verbalizer.class_index(label)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.class_scores(self.word_scores(batch))

    def word_scores(self, batch: dict) -> torch.Tensor:
        """(B, n_words) log-probabilities of every label word, before averaging per class."""
        bind_prompts(self)
        return self.scorer(self.model, batch)

    def class_scores(self, word_scores: torch.Tensor) -> torch.Tensor:
        """(B, n_words) label-word scores → (B, n_classes): the verbalizer's mean per class."""
        return self.verbalizer.class_scores(word_scores)

    def reads(self, batch: dict) -> list[Reads] | None:
        """What a shared forward pass must run and read for `batch` (`scoring.Reads`), with this task's
        parts bound to those rows; None when the scorer runs passes of its own (seq2seq)."""
        return self.scorer.reads(batch)

    def scores_from(self, batch: dict, logps: list[torch.Tensor]) -> torch.Tensor:
        """(B, n_classes) from the log-probs `reads(batch)` asked for."""
        return self.class_scores(self.scorer.word_scores(batch, logps))

    def head_parameters(self) -> list[nn.Parameter]:
        return []  # the label words' output embeddings are the "head", and they are the LM's own


class HeadClassifier(TaskModule):
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
        rows = [head_input_ids(self.tokenizer, self.text_fields, ex, max_length=self.max_length, specials=self.specials)
                for ex in examples]
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

    def reads(self, batch: dict) -> None:
        """None: the head reads the model's own output (its pass is not shared with other tasks)."""
        return None

    def head_parameters(self) -> list[nn.Parameter]:
        """The new classification head: everything outside the pretrained base model, and anything
        the checkpoint did not have (e.g. BERT's pooler when it was saved from a masked LM)."""
        base = {id(p) for p in self.model.base_model.parameters()}
        new = {id(p) for p in fresh_parameters(self.model)}
        return [p for p in self.model.parameters() if id(p) not in base or id(p) in new]


def head_input_ids(tokenizer, text_fields: list[str], example: dict, *, max_length: int,
                   specials: SpecialTokens | None = None) -> list[int]:
    """The ids a `HeadClassifier` reads for `example`: one field alone, two as a pair, more joined with spaces."""
    texts = [str(example[f]) for f in text_fields]
    text, pair = texts if len(texts) == 2 else (" ".join(texts), None)
    return encode_text(tokenizer, text, pair, max_length=max_length, specials=specials)


def bind_prompts(classifier: TaskModule) -> None:
    """Put the classifier's parts (soft vectors, prefixes, adapters, LoRA) in place on its model for
    every row, and take away any that another task sharing the model left there."""
    bind_parts(classifier.model, [(classifier.parts(), None)])

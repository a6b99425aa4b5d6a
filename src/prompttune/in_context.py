"""In-context learning (Brown et al. 2020) on causal LMs: an instruction and K demonstrations,
then the query, scored through the verbalizer. Nothing is trained.

    Classify the sentiment of each review.          ← method.instruction
                                                      
    Review: A gripping film.                          ← K demonstrations, written with the task's
    Sentiment: positive                                 template, label word at the mask
    ...
    Review: <query>                                  ← the query, scored at {mask}
    Sentiment: {mask}

The instruction and demonstrations are the same for every query, so they are encoded once: their
per-layer keys/values are kept (`ContextPrefix`) and every batch of queries attends to them as a
key/value prefix (`deep_prompts.KeyValuePrefix`, the mechanism of prefix-tuning: real tokens
numbered on from the prefix), instead of re-encoding hundreds of prefix tokens per query. So an
in-context task's rows share a forward pass with other tasks' rows like any prefix task's.
Scores equal those of the re-encoded text to float tolerance (tests/test_in_context.py);
`benchmarks/in_context_speed.py` measures the gain.

`max_length` bounds the query (template + text, text truncated first); the prefix comes on top.
"""

from __future__ import annotations

import dataclasses
import random

import torch
from torch import nn

from .backbones import Backbone
from .data import by_label
from .deep_prompts import KeyValuePrefix, encode_prefix, install
from .chain_of_thought import ANSWER_TRIGGER, COT_TRIGGER, MODES, answer_template, generate_reasoning, reasoning_template
from .demonstrations import filled
from .devices import model_device, to_device
from .errors import ConfigError, ModelError
from .model_parts import ModelPart, bind_bare
from .models import PromptClassifier
from .scoring import CausalLMScorer
from .templates import Encoded, SpecialTokens, Template, Text, encode_example
from .verbalizers import Verbalizer

BLANK_LINE = "\n\n"
"""Between the instruction and the demonstrations, and after each."""


def choose_context(examples: list[dict], k: int, seed: int) -> list[dict]:
    """K demonstrations drawn class by class in turn (balanced as far as the data allows), in a
    seeded random order — the order matters to in-context learning, so it is fixed and saved."""
    rng = random.Random(seed)
    groups = [rng.sample(g, len(g)) for g in by_label(examples).values()]
    chosen: list[dict] = []
    while len(chosen) < k and any(groups):
        for g in groups:
            if g and len(chosen) < k:
                chosen.append(g.pop())
    if len(chosen) < k:
        raise ConfigError(f"method.context_examples is {k} but the training data has only {len(chosen)} examples")
    rng.shuffle(chosen)
    return chosen


def context_ids(tokenizer, template: Template, context: list[dict], words: list[str], instruction: str | None) -> list[int]:
    """The prefix's token ids: the tokenizer's start token, the instruction, then each demonstration
    written with `template` and its label word (`words[i]`) at the mask, each part followed by a blank
    line; no ids at all without an instruction or demonstrations.

    The instruction and the template are the task's own text, so a special token written there is
    meant; the demonstrations' fields are data, read literally (`templates.literal_ids`).

    Example:
        >>> tok.decode(context_ids(tok, parse_template("review : {s} sentiment : {mask}"), [{"s": "fun"}], ["good"], "classify"))
        'classify\\n\\nreview : fun sentiment : good\\n\\n'
    """
    segments: list = [Text(instruction.strip() + BLANK_LINE)] if instruction and instruction.strip() else []
    example: dict = {}
    for j, (ex, word) in enumerate(zip(context, words, strict=True)):
        for seg in [*filled(template, word, prefix=f"demo:{j}:").segments, Text(BLANK_LINE)]:
            if segments and isinstance(seg, Text) and isinstance(segments[-1], Text):
                # One run of text between two fields is tokenized as one string, as the model would read it
                # ("\n\nReview:" is "\n", "\n", "Review:" to GPT-2's tokenizer, "\n\n" alone is one token).
                segments[-1] = Text(segments[-1].text + seg.text)
            else:
                segments.append(seg)
        example.update({f"demo:{j}:{name}": value for name, value in ex.items()})
    if not segments:
        return []
    specials = dataclasses.replace(SpecialTokens.of(tokenizer), suffix=())
    prefix = Template(f"{template.source} [in-context prefix]", tuple(segments))
    return encode_example(prefix, tokenizer, example, max_length=1 << 30, specials=specials).ids


class ContextPrefix(nn.Module, KeyValuePrefix):
    """The keys/values the frozen model computes for a fixed token prefix, computed once (on the bare
    model) and bound before every query as a key/value prefix. Kept as buffers, so they follow the
    classifier's `.to()`; not parameters, so nothing trains and artifacts store none of them."""

    def __init__(self, model: nn.Module, ids: list[int]):
        super().__init__()
        self._model = (model,)  # a tuple: the backbone is not a submodule of the prefix
        self.ids = ids
        self.sites = install(model) if ids else []
        self.encode()

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def length(self) -> int:
        return len(self.ids)

    def encode(self) -> None:
        """(Re)compute the prefix's keys/values with nothing bound on the model."""
        layers = []
        if self.ids:
            model = self._model[0]
            bind_bare(model)
            layers = encode_prefix(model, self.ids)
            if len(layers) != len(self.sites):
                raise ModelError(f"{type(model).__name__} caches {len(layers)} layers but has {len(self.sites)} "
                                 "self-attention modules; its in-context prefix cannot be bound as a key/value prefix")
        # One (2 * layers, H, P, D) buffer: binding it is one view, not one per layer.
        table = torch.cat([t for k, v in layers for t in (k, v)]) if layers else torch.zeros(0)
        self.register_buffer("table", table, persistent=False)

    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, (keys, values), each (1, H, P, D), as transformers' cache holds them."""
        return [(k[None], v[None]) for k, v in self.key_values()]

    def key_value_table(self) -> torch.Tensor:
        return self.table


class InContextScorer(CausalLMScorer):
    """The causal label-word scorer for the queries after a shared prefix (`prefix`, a `ContextPrefix`
    the classifier binds).

    `use_cache=False` instead writes the prefix's ids before every query and re-encodes them (the
    reference the kept prefix is checked against, and the baseline of the speed benchmark)."""

    def __init__(self, backbone: Backbone, template: Template, verbalizer: Verbalizer, max_length: int,
                 prefix_ids: list[int], *, use_cache: bool = True, word_score: str = "sum"):
        super().__init__(backbone, template, verbalizer, max_length, word_score)
        self.prefix = ContextPrefix(backbone.model, prefix_ids)
        self.use_cache = use_cache
        # The tokenizer's start token (Llama's <s>) opens the prefix, not each query.
        self.query_specials = dataclasses.replace(self.specials, prefix=()) if prefix_ids else self.specials

    def _encode(self, example: dict, fill: list[int]):
        enc = encode_example(self.template, self.tokenizer, example, mask_fill=fill, max_length=self.max_length,
                             specials=self.query_specials, soft_base=self.soft_base)
        if self.use_cache:
            return enc
        n = len(self.prefix.ids)
        return Encoded(self.prefix.ids + enc.ids, enc.mask_start + n if enc.mask_start >= 0 else -1, enc.mask_len,
                       [p + n for p in enc.soft_positions])

    def _check_prefix(self, encs):
        if not len(self.prefix):
            super()._check_prefix(encs)


class InContextClassifier(PromptClassifier):
    """A causal LM classifying by label words after an instruction and K demonstrations.

    Example:
        >>> clf = InContextClassifier(load_backbone("runs/smollm2"), parse_template("Review: {sentence}\\nSentiment: {mask}"),
        ...                           parse_verbalizer({0: "negative", 1: "positive"}), 64, context=train[:16],
        ...                           instruction="Classify the sentiment of each review.")
        >>> clf(clf.collate([{"sentence": "A joy."}])).argmax(-1)
    """

    def __init__(self, backbone: Backbone, template: Template, verbalizer: Verbalizer, max_length: int,
                 context: list[dict], *, instruction: str | None = None, chain_of_thought: str | None = None,
                 reasoning_field: str = "reasoning", cot_trigger: str = COT_TRIGGER, answer_trigger: str = ANSWER_TRIGGER,
                 max_reasoning_tokens: int = 64, calibrate: bool = False, use_cache: bool = True, word_score: str = "sum"):
        if backbone.kind != "causal":
            raise ModelError(f"in-context learning reads demonstrations as a text to continue: {backbone.name!r} is a "
                             f"{backbone.kind} LM; use a causal LM (GPT-2, Llama, SmolLM2...)")
        if chain_of_thought not in (None, *MODES):
            raise ConfigError(f"method.chain_of_thought must be one of {list(MODES)} or null, got {chain_of_thought!r}")
        if chain_of_thought == "zero-shot" and context:
            raise ConfigError("zero-shot chain-of-thought has no demonstrations: set method.context_examples: 0, or use "
                              "chain_of_thought: few-shot with demonstrations that carry their reasoning")
        if chain_of_thought == "few-shot":
            lacking = [i for i, ex in enumerate(context) if not str(ex.get(reasoning_field) or "").strip()]
            if lacking or not context:
                raise ConfigError(f"few-shot chain-of-thought needs demonstrations with their reasoning in a "
                                  f"{reasoning_field!r} column (method.reasoning_field); {len(lacking)} of {len(context)} lack it")
            # Written as generated reasoning is (`cut_reasoning`): one line, so a blank line in the data never
            # reads as the end of a demonstration.
            context = [{**ex, reasoning_field: " ".join(str(ex[reasoning_field]).split())} for ex in context]
        super().__init__(backbone, template, verbalizer, max_length, word_score=word_score)
        self.chain_of_thought, self.answer_trigger, self.max_reasoning_tokens = chain_of_thought, answer_trigger, max_reasoning_tokens
        self.reasoning_field = reasoning_field
        scored = template
        if chain_of_thought:
            scored = answer_template(template, chain_of_thought, reasoning_field, cot_trigger, answer_trigger)
            self.reasoning_template = reasoning_template(template, chain_of_thought, cot_trigger)
        words = [verbalizer.words[verbalizer.class_index(ex["label"])][0] for ex in context]
        prefix = context_ids(backbone.tokenizer, scored, context, words, instruction)
        limit = getattr(backbone.model.config, "max_position_embeddings", None)
        if limit and len(prefix) + max_length > limit:
            raise ConfigError(f"the instruction and {len(context)} demonstration(s) take {len(prefix)} tokens; with queries of up "
                              f"to {max_length} (train.max_length) that exceeds the model's {limit} positions: use fewer "
                              "demonstrations (method.context_examples) or a smaller max_length")
        self.scorer = InContextScorer(backbone, scored, verbalizer, max_length, prefix, use_cache=use_cache,
                                      word_score=word_score)
        self.context = self.scorer.prefix
        self.calibrate, self._content_free = calibrate, None

    def parts(self) -> list[ModelPart]:
        """The demonstrations' kept keys/values, unless the scorer writes them before every query."""
        return [self.context] if self.scorer.use_cache and len(self.context) else []

    def class_scores(self, word_scores: torch.Tensor) -> torch.Tensor:
        scores = super().class_scores(word_scores)
        if not self.calibrate:
            return scores
        # Contextual calibration (Zhao et al. 2021, "Calibrate Before Use"): demonstrations shift the
        # label prior (majority and recency biases); dividing the class probabilities by those the
        # same context gives a content-free input removes that shift.
        if self._content_free is None:
            self._content_free = self._content_free_logprobs()
        return scores.log_softmax(-1) - self._content_free.to(scores.device)

    @torch.no_grad()
    def _content_free_logprobs(self) -> torch.Tensor:
        """Log of the class probabilities for content-free inputs, averaged over "N/A", "" and the mask
        token (Zhao et al.'s three), every text field filled with them."""
        fields = [f for f in self.template.fields if f != self.reasoning_field]
        fillers = ["N/A", "", self.tokenizer.mask_token or "[MASK]"]
        examples = [{**{f: text for f in fields}, self.reasoning_field: text} for text in fillers]
        batch = to_device(PromptClassifier.collate(self, examples), model_device(self.model))
        probs = self.verbalizer.class_scores(self.word_scores(batch)).softmax(-1).mean(0)
        return probs.log()

    def collate(self, examples: list[dict]) -> dict:
        if self.chain_of_thought:
            reasoning = self._reasoning(examples)
            examples = [{**ex, self.reasoning_field: r} for ex, r in zip(examples, reasoning)]
        return super().collate(examples)

    def _reasoning(self, examples: list[dict]) -> list[str]:
        """Chain of thought, stage 1: generation re-reads the written prefix, so nothing may be bound."""
        bind_bare(self.model)
        return generate_reasoning(self, examples)

    @torch.no_grad()
    def explain(self, examples: list[dict]) -> list[dict]:
        """Reasoning (chain of thought only), label and class probabilities for each example."""
        reasoning = self._reasoning(examples) if self.chain_of_thought else [None] * len(examples)
        filled = [{**ex, self.reasoning_field: r} for ex, r in zip(examples, reasoning)] if self.chain_of_thought else examples
        probs = self(to_device(PromptClassifier.collate(self, filled), model_device(self.model))).softmax(-1)
        return [{"reasoning": r, "label": self.labels[int(p.argmax())], "probabilities": dict(zip(self.labels, p.tolist()))}
                for r, p in zip(reasoning, probs)]

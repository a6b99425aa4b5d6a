"""In-context learning (Brown et al. 2020) on causal LMs: an instruction and K demonstrations,
then the query, scored through the verbalizer. Nothing is trained.

    Classify the sentiment of each review.          ← method.instruction
                                                      
    Review: A gripping film.                          ← K demonstrations, written with the task's
    Sentiment: positive                                 template, label word at the mask
    ...
    Review: <query>                                  ← the query, scored at {mask}
    Sentiment: {mask}

The instruction and demonstrations are the same for every query, so they are encoded once: their
per-layer keys/values are kept (`PrefixCache`) and every batch of queries attends to them through
a fresh key/value cache (real tokens numbered on from the prefix), instead of re-encoding hundreds of
prefix tokens per query. Scores equal those of the re-encoded text to float tolerance
(tests/test_in_context.py); `benchmarks/in_context_speed.py` measures the gain.

`max_length` bounds the query (template + text, text truncated first); the prefix comes on top.
"""

from __future__ import annotations

import dataclasses
import random

import torch
from torch import nn

from .backbones import Backbone
from .data import by_label
from .deep_prompts import cache_inputs, encode_prefix, prefix_cache
from .chain_of_thought import ANSWER_TRIGGER, COT_TRIGGER, MODES, answer_template, generate_reasoning, reasoning_template
from .demonstrations import filled
from .errors import ConfigError, ModelError
from .models import PromptClassifier
from .scoring import CausalLMScorer, logprobs_at
from .templates import SpecialTokens, Template, Text, encode_example
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


class PrefixCache:
    """The keys/values of a fixed token prefix, computed once and handed to each forward pass as a
    fresh cache (the model appends the query's keys/values to the cache it is given, so the kept
    tensors are never extended in place). The cache itself is built in `deep_prompts`, the one
    module that uses transformers' cache API."""

    def __init__(self, model: nn.Module, ids: list[int]):
        self.model, self.ids = model, ids
        self._layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._layers is None or self._layers[0][0].device != self.model.device:
            self._layers = encode_prefix(self.model, self.ids)
        return self._layers

    def inputs(self, batch: int) -> dict:
        """The model's keyword arguments that put the prefix before `batch` rows of queries."""
        return cache_inputs(self.model, prefix_cache(self.model, self.layers(), batch))


class InContextScorer(CausalLMScorer):
    """The causal label-word scorer with a shared prefix before every query.

    `use_cache=False` re-encodes the prefix with every query (the reference the cache is checked
    against, and the baseline of the speed benchmark)."""

    def __init__(self, backbone: Backbone, template: Template, verbalizer: Verbalizer, max_length: int,
                 prefix_ids: list[int], *, use_cache: bool = True):
        super().__init__(backbone, template, verbalizer, max_length)
        self.prefix = PrefixCache(backbone.model, prefix_ids)
        self.use_cache = use_cache
        # The tokenizer's start token (Llama's <s>) opens the prefix, not each query.
        self.query_specials = dataclasses.replace(self.specials, prefix=()) if prefix_ids else self.specials

    def _encode(self, example: dict, fill: list[int]):
        return encode_example(self.template, self.tokenizer, example, mask_fill=fill, max_length=self.max_length,
                              specials=self.query_specials, soft_base=self.soft_base)

    def _check_prefix(self, encs):
        if not len(self.prefix):
            super()._check_prefix(encs)

    def _logprobs(self, model: nn.Module, ids: torch.Tensor, attn: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor):
        n_prefix, batch = len(self.prefix), ids.shape[0]
        if not n_prefix:
            return logprobs_at(model, ids, attn, rows, cols)
        attn = torch.cat([attn.new_ones(batch, n_prefix), attn], dim=1)
        if not self.use_cache:
            prefix = torch.tensor(self.prefix.ids, device=ids.device).expand(batch, -1)
            return logprobs_at(model, torch.cat([prefix, ids], dim=1), attn, rows, cols + n_prefix)
        positions = torch.arange(n_prefix, n_prefix + ids.shape[1], device=ids.device).expand(batch, -1)
        return logprobs_at(model, ids, attn, rows, cols, position_ids=positions, **self.prefix.inputs(batch))


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
                 max_reasoning_tokens: int = 64, calibrate: bool = False, use_cache: bool = True):
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
        super().__init__(backbone, template, verbalizer, max_length)
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
        self.scorer = InContextScorer(backbone, scored, verbalizer, max_length, prefix, use_cache=use_cache)
        self.calibrate, self._content_free = calibrate, None

    def forward(self, batch: dict) -> torch.Tensor:
        scores = super().forward(batch)
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
        probs = PromptClassifier.forward(self, PromptClassifier.collate(self, examples)).softmax(-1).mean(0)
        return probs.log()

    def collate(self, examples: list[dict]) -> dict:
        if self.chain_of_thought:
            reasoning = generate_reasoning(self, examples)
            examples = [{**ex, self.reasoning_field: r} for ex, r in zip(examples, reasoning)]
        return super().collate(examples)

    @torch.no_grad()
    def explain(self, examples: list[dict]) -> list[dict]:
        """Reasoning (chain of thought only), label and class probabilities for each example."""
        reasoning = generate_reasoning(self, examples) if self.chain_of_thought else [None] * len(examples)
        filled = [{**ex, self.reasoning_field: r} for ex, r in zip(examples, reasoning)] if self.chain_of_thought else examples
        probs = self(PromptClassifier.collate(self, filled)).softmax(-1)
        return [{"reasoning": r, "label": self.labels[int(p.argmax())], "probabilities": dict(zip(self.labels, p.tolist()))}
                for r, p in zip(reasoning, probs)]

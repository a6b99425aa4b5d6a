"""A task: everything needed to rebuild its classifier on a backbone, as plain values.

`TaskSpec` is what an artifact's `config.json` stores (plus the backbone fingerprint and the
weights' checksum); `build_classifier` turns it into a module with the method attached.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .backbones import (FRESH_SEED, Backbone, Kind, fingerprint, fresh_parameters, load_backbone, load_head_model, load_tokenizer,
                        share_base_modules)
from .errors import ConfigError, ModelError, TemplateError
from .methods import MethodOptions, get_method, method_list, non_default_options
from .model_parts import detach_parts
from .models import HeadClassifier, PromptClassifier
from .parameters import freeze
from .quantization import quantization_of, require_trainable_base
from .templates import parse_template
from .verbalizers import parse_verbalizer


@dataclass
class TaskSpec:
    """What defines a task, independent of its trained numbers.

    Example:
        >>> spec = TaskSpec(method="zero-shot", model="all-MiniLM-L6-v2", text_fields=["sentence"],
        ...                 labels=["0", "1"], template="{sentence} It was {mask}.",
        ...                 verbalizer={"0": ["terrible"], "1": ["great"]}, lm_head="heads/minilm")
    """

    method: str | list[str]
    """A registered method name, or a list of names attached together (e.g. ["p-tuning", "lora"])."""
    model: str
    text_fields: list[str]
    labels: list[str]
    template: str | None = None
    verbalizer: dict[str, list[str]] | None = None
    word_score: str = "sum"
    """How a multi-token label word's token log-probabilities make its score: sum or mean (`scoring.word_logprob`)."""
    model_kind: Kind | None = None
    lm_head: str | None = None
    max_length: int = 128
    options: dict = field(default_factory=dict)
    """The method's options (`MethodOptions` fields) that differ from their defaults, e.g.
    {"prompt_length": 10}; those left out take their defaults."""
    generation: bool = False
    """A text task: the model writes the target text at `{mask}` (no labels, no verbalizer)."""
    demonstrations: list[dict] | None = None
    """Labelled examples written into the input: the pool LM-BFF demonstrations are drawn from
    (`options.demonstrations`), or the in-context method's K demonstrations, in order."""
    chat_template: bool | None = False
    """A generation task's prompt is rendered in the tokenizer's chat template, as the user's turn
    (`chat`); None = when the model is causal and its tokenizer has one (a trained task stores which)."""
    response_only_loss: bool = True
    """A generation task's loss covers the target's tokens only; false: the prompt's tokens too."""
    decoding: dict = field(default_factory=dict)
    """How its text is generated (`generation.Decoding` fields) where that differs from the defaults,
    e.g. {"num_beams": 4, "stop": ["\\n"]}; those left out take their defaults."""

    def to_dict(self) -> dict:
        """The spec as JSON values; `options` and `decoding` only where they differ from the defaults."""
        from .generation import Decoding

        return {**asdict(self), "options": non_default_options(self.options),
                "decoding": Decoding.from_dict(self.decoding).to_dict()}

    def method_options(self) -> MethodOptions:
        try:
            return MethodOptions(**self.options)
        except TypeError as e:
            raise ConfigError(f"bad method options {self.options}: {e}") from None


def require_lm_head(backbone: Backbone) -> None:
    """Refuse to read label words through an LM head the checkpoint did not have (random weights)."""
    if backbone.missing_head:
        raise ModelError(
            f"model {backbone.name!r} ships without a masked-LM head, so its label-word scores would be random; "
            f"fit one first (prompttune fit-lm-head --model {backbone.name} --data FILE --text-field FIELD --out HEAD_DIR) "
            "and set lm_head: HEAD_DIR"
        )


def positions_for_tokens(classifier: nn.Module) -> tuple[int, int] | None:
    """(positions of the model's absolute position table, of which a deep prompt takes the first P):
    a task's input plus anything generated after it must fit in positions − P tokens. None for models
    with relative or rotary positions (T5, Llama), which have no such table and no hard limit.

    Example:
        >>> positions_for_tokens(p_tuning_v2_task_on_bert_base)
        (512, 20)
    """
    from .deep_prompts import position_embeddings

    table = position_embeddings(classifier.model)
    if table is None:
        return None
    offset = table.padding_idx + 1 if table.padding_idx is not None else 0  # RoBERTa numbers from padding_idx + 1
    prefix = classifier.deep.length if getattr(classifier, "deep", None) is not None else 0
    return table.num_embeddings - offset, prefix


def require_positions(classifier: nn.Module, spec: TaskSpec) -> None:
    """Refuse a `max_length` the model has no positions for (an input that long would crash the
    forward pass): max_length plus a deep prompt's length must fit the position table
    (`positions_for_tokens`).

    Raises `ConfigError`: "train.max_length 1000 exceeds the 512 positions of model 'bert-base'...".
    """
    found = positions_for_tokens(classifier)
    if found is None:
        return
    positions, prefix = found
    if spec.max_length + prefix > positions:
        after = f" with a deep prompt of {prefix}" if prefix else ""
        raise ConfigError(f"train.max_length {spec.max_length}{after} exceeds the {positions} positions of model "
                          f"{spec.model!r}; set train.max_length to at most {positions - prefix}")


def require_fresh_weights_trained(classifier: nn.Module, spec: TaskSpec) -> None:
    """Refuse a task whose method leaves frozen a weight the checkpoint lacked (`fresh_parameters`).

    Such a weight is created at load, is not saved (an artifact holds what trains), and would be
    whatever the load initialised: the task could not be reproduced from its artifact. Raises
    `ConfigError` naming the weights.
    """
    fresh = {id(p) for p in fresh_parameters(classifier.model)}
    frozen = [n for n, p in classifier.named_parameters() if id(p) in fresh and not p.requires_grad]
    if frozen:
        raise ConfigError(
            f"method {spec.method!r} leaves {frozen[:5]}{'...' if len(frozen) > 5 else ''} frozen, but the checkpoint of "
            f"{spec.model!r} lacks them: they would be created at random on load and never saved; use a method that trains "
            "them or a checkpoint that has them"
        )


def added_in_float32(classifier: nn.Module, own: set[int]) -> None:
    """Make every floating-point parameter a method added to `classifier` (those whose ids are not in
    `own`) float32: what trains beside a bfloat16 or float16 model keeps full precision (small Adam
    updates are not rounded away), and is cast to the activations' dtype where it meets them (soft
    prompts, prefixes and adapters do so themselves; peft's LoRA layers cast their input). peft
    creates LoRA matrices in the dtype of the layer they adapt; the other parts are float32 already."""
    for p in classifier.parameters():
        if id(p) not in own and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()


def _prompt_classifier(spec: TaskSpec, backbone: Backbone, template, options: MethodOptions) -> PromptClassifier:
    verbalizer = parse_verbalizer(spec.verbalizer)
    names = method_list(spec.method)
    if "in-context" in names:
        from .in_context import InContextClassifier

        if len(names) > 1:
            raise ConfigError(f"method in-context trains nothing and cannot be combined with {[n for n in names if n != 'in-context']}")
        return InContextClassifier(
            backbone, template, verbalizer, spec.max_length, spec.demonstrations or [], instruction=options.instruction,
            chain_of_thought=options.chain_of_thought, reasoning_field=options.reasoning_field,
            cot_trigger=options.cot_trigger, answer_trigger=options.answer_trigger,
            max_reasoning_tokens=options.max_reasoning_tokens, calibrate=options.calibrate, word_score=spec.word_score)
    demos = None
    if options.demonstrations:
        from .demonstrations import Demonstrations

        if not spec.demonstrations:
            raise ConfigError("method.demonstrations asks for demonstrations, but the task has no labelled examples to draw "
                              "them from (task.train)")
        demos = Demonstrations(spec.demonstrations, verbalizer, spec.text_fields, per_class=options.demonstrations,
                               selection=options.demo_selection, encoder=options.demo_encoder)
    return PromptClassifier(backbone, template, verbalizer, spec.max_length, demonstrations=demos,
                            word_score=spec.word_score)


def build_classifier(spec: TaskSpec, backbone: Backbone | None = None, *, folded: bool = False,
                     head_seed: int = FRESH_SEED, dtype: torch.dtype | None = None, device_map: str | None = None,
                     max_memory: dict | None = None, quantization: str = "none",
                     device: torch.device | str | None = None) -> tuple[nn.Module, dict]:
    """The task's classifier with its method attached, and the base backbone's fingerprint.

    `backbone` lets several tasks share one loaded model. Head-based methods build a classification
    model (the LM head replaced by a new head); over a given backbone it keeps only its own head and
    takes every other module from the backbone (`backbones.share_base_modules`). `folded` builds the
    form a saved task has (P-tuning's encoder and prefix-tuning's MLP already folded into vectors).
    `head_seed` initialises a new classification head (a loaded task's head comes from its file).
    `dtype` is the dtype the model's weights are loaded in (`model_dtype`; None: the checkpoint's own);
    a given backbone keeps its own. What a method adds (soft prompts, prefixes, adapters, LoRA matrices)
    is float32 whatever the model's dtype, cast where it meets the model's activations; weights of the
    model a method trains (a head, BitFit's biases, fine-tuning) are in the model's dtype.
    `device_map` and `max_memory` place a model this call loads across devices (`backbones.load_backbone`);
    the task's own vectors (soft prompts, prefixes) then live on the model's input device.
    `quantization` (see `prompttune.quantization`) is how a backbone loaded here is quantized, onto
    `device` (a quantized model is placed as it loads, not moved after); a given
    backbone is as it is. Raises `ConfigError` for a method that would train quantized weights.
    """
    method = get_method(spec.method)
    options = spec.method_options()
    if backbone is not None:
        quantization = quantization_of(backbone.model)
    require_trainable_base(method, quantization)
    if spec.generation and method.uses_head(options):
        raise ConfigError(f"method {spec.method!r} with a classification head cannot generate text; a generation task "
                          "needs a template method (prompt-tuning, p-tuning, prefix-tuning, p-tuning-v2, prompt-finetune)")
    if method.uses_head(options):
        model = load_head_model(spec.model, len(spec.labels), seed=head_seed, quantization=quantization, device=device,
                                dtype=backbone.model.dtype if backbone is not None else dtype,
                                **({} if backbone is not None else {"device_map": device_map, "max_memory": max_memory}))
        if backbone is not None:
            share_base_modules(model, backbone.model)
        fp = fingerprint(model, spec.model, "classifier")
        tokenizer = backbone.tokenizer if backbone is not None else load_tokenizer(spec.model)
        clf = HeadClassifier(model, tokenizer, spec.text_fields, tuple(spec.labels), spec.max_length)
    else:
        if spec.template is None or (spec.verbalizer is None and not spec.generation):
            raise ConfigError(f"method {spec.method!r} needs prompt.template and prompt.verbalizer")
        template = parse_template(spec.template)
        template.check_fields(spec.text_fields)
        if template.n_triggers:
            raise TemplateError(f"template {spec.template!r} has {{trigger}} slots: fill them first with "
                                "`prompttune search triggers CONFIG --out DIR`, then train with the config it writes")
        if backbone is None:
            backbone = load_backbone(spec.model, kind=spec.model_kind, lm_head=spec.lm_head, dtype=dtype,
                                     device_map=device_map, max_memory=max_memory, quantization=quantization,
                                     device=device)
        require_lm_head(backbone)
        fp = backbone.fingerprint()
        if spec.generation:
            from .generation import TextGenerator

            from .chat import uses_chat_template

            chat = uses_chat_template(spec.chat_template, backbone.kind, backbone.tokenizer)
            clf = TextGenerator(backbone, template, spec.max_length, chat=chat, response_only_loss=spec.response_only_loss)
        else:
            clf = _prompt_classifier(spec, backbone, template, options)
    freeze(clf)  # methods switch on what they train
    own = {id(p) for p in clf.parameters()}  # the model's weights (and a new head): in the model's dtype
    try:
        method.attach(clf, options, folded)
        added_in_float32(clf, own)
        require_fresh_weights_trained(clf, spec)
        require_positions(clf, spec)
        if not method.uses_head(options) and template.n_soft_segments and clf.soft is None:
            raise TemplateError(
                f"template {spec.template!r} has soft tokens, but method {spec.method!r} has no soft prompt to fill "
                "them; use prompt-tuning or p-tuning, or remove {soft}"
            )
        if options.init_from and not folded and options.init_from != "most_similar":
            from .prompt_bank import init_from_artifact

            init_from_artifact(clf, options.init_from, fp)
    except Exception:
        detach_parts(clf)  # a shared backbone keeps nothing of a task that failed to build
        raise
    clf.eval()  # dropout off until a trainer asks for train mode: predictions are deterministic
    return clf, fp

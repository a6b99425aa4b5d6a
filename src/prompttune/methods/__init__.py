"""Methods: what a task trains. One module per method; this file is the registry.

A method decides two things: whether the task is read through a template + verbalizer or
through a classification head, and which parameters train (`attach` adds prompt modules and sets
`requires_grad`). What trains is exactly what the artifact saves (see `prompttune.parameters`).
Register your own with `register_method`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from torch import nn

from ..errors import ConfigError


@dataclass
class MethodOptions:
    """Knobs of the prompt methods (YAML `method:` section, beside `name`). Each method reads its own."""

    prompt_length: int = 20
    """Deep prompts (prefix-tuning, p-tuning-v2): prefix vectors per layer."""
    init: str = "vocab"
    """Soft tokens without words: start from sampled vocabulary embeddings (vocab) or random."""
    encoder: str = "lstm"
    """p-tuning's prompt encoder: lstm | mlp | none."""
    reparameterize: bool | None = None
    """Deep prompts through an MLP while training (default: on for prefix-tuning, off for p-tuning-v2)."""
    reparam_hidden: int = 512
    """Hidden width of that MLP."""
    head: bool = False
    """p-tuning-v2 / prefix-tuning: a linear classification head instead of template + verbalizer."""
    init_from: str | None = None
    """Prompt transfer: an artifact directory to start from, or `most_similar` (needs prompt_bank)."""
    prompt_bank: str | None = None
    """Directory of task artifacts to pick the most similar prompt from."""
    transfer_epochs: int = 1
    """`init_from: most_similar`: epochs of brief training before comparing with the bank."""
    lora_rank: int = 8
    """lora: rank r of the update B·A."""
    lora_alpha: int = 16
    """lora: the update is scaled by alpha / r."""
    lora_dropout: float = 0.0
    target_modules: list[str] | None = None
    """lora: names of the Linear modules to adapt (default: peft's choice for the model family)."""
    merge: bool = False
    """lora: fold B·A into the weights when a saved task is loaded (zero-overhead inference)."""
    adapter_kind: str = "houlsby"
    """adapter: houlsby (after attention and feed-forward) or pfeiffer (after feed-forward only)."""
    reduction_factor: int = 16
    """adapter: bottleneck width = hidden size / reduction_factor."""
    demonstrations: int = 0
    """Template methods: demonstrations of each class appended to every input (LM-BFF); 0 = none."""
    demo_selection: str = "random"
    """Which demonstrations: random, or similar (sampled among the top half by sentence-encoder cosine)."""
    demo_encoder: str | None = None
    """Sentence encoder for demo_selection: similar (default: the embedded all-MiniLM-L6-v2)."""
    context_examples: int = 16
    """in-context: demonstrations written before the query (K), drawn class by class from task.train."""
    instruction: str | None = None
    """in-context: a line of instruction before the demonstrations."""
    calibrate: bool = False
    """in-context: contextual calibration (Zhao et al. 2021) — remove the label prior the context gives a content-free input."""
    chain_of_thought: str | None = None
    """in-context: zero-shot or few-shot chain-of-thought reasoning before the answer (null = off)."""
    reasoning_field: str = "reasoning"
    """in-context, few-shot chain-of-thought: the training data's column with each example's reasoning."""
    cot_trigger: str = "Let's think step by step."
    answer_trigger: str = "Therefore, the answer is"
    max_reasoning_tokens: int = 64
    """Chain-of-thought: at most this many generated tokens of reasoning."""


def non_default_options(options: dict) -> dict:
    """`options` without those equal to their `MethodOptions` default: what a task's `config.json`
    stores. `MethodOptions(**non_default_options(o)) == MethodOptions(**o)`; names that are not
    options stay, for `MethodOptions` to refuse.

    Example:
        >>> non_default_options({"prompt_length": 20, "encoder": "mlp"})
        {'encoder': 'mlp'}
    """
    defaults = asdict(MethodOptions())
    return {k: v for k, v in options.items() if k not in defaults or v != defaults[k]}


@dataclass(frozen=True)
class Method:
    """A tuning method.

    Example:
        >>> register_method(Method("head-only", "train the classifier head", head=True,
        ...                        attach=lambda clf, options, folded: ...))
    """

    name: str
    summary: str
    head: bool | None
    """True: a classification head on the raw text; False: template + verbalizer; None: `options.head` decides."""
    attach: Callable[[nn.Module, MethodOptions, bool], None]
    """Add the method's modules to the classifier and mark what it trains. The classifier arrives
    frozen, so methods only ever switch training on, and several can be attached in turn.
    `folded` is True when rebuilding a saved task: build the form that was saved (see `artifacts.stored_state_dict`)."""
    trains_base: bool = False
    """Whether it trains the base model's own weights (all of them), which a quantized base cannot
    (`quantization.require_trainable_base`)."""

    def uses_head(self, options: MethodOptions) -> bool:
        return bool(options.head) if self.head is None else self.head


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in _METHODS:
        raise ConfigError(f"a method named {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def method_list(name: str | list[str]) -> list[str]:
    """`method.name` as a list of names (a single name, or the list of combined methods)."""
    return list(name) if isinstance(name, (list, tuple)) else [name]


def get_method(name: str | list[str]) -> Method:
    """The registered method, or for a list of names their composition (see `compose`)."""
    if isinstance(name, (list, tuple)):
        return compose([get_method(n) for n in name])
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method.name {name!r}; available: {sorted(_METHODS)}") from None


def compose(methods: list[Method]) -> Method:
    """Several methods on one task, e.g. [p-tuning, lora]: each attaches in turn and everything any of
    them marks trains (and is saved). They must agree on head vs template + verbalizer."""
    if not methods:
        raise ConfigError("method.name is an empty list; name one method or several")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ConfigError(f"method.name {names} lists a method twice")
    heads = {m.head for m in methods if m.head is not None}
    if len(heads) > 1:
        raise ConfigError(f"methods {names} disagree: some read the task through a classification head, others "
                          "through a template + verbalizer")

    def attach(classifier, options, folded):
        for m in methods:
            m.attach(classifier, options, folded)

    return Method("+".join(names), " + ".join(m.summary for m in methods), heads.pop() if heads else None, attach,
                  trains_base=any(m.trains_base for m in methods))


def method_names() -> list[str]:
    return sorted(_METHODS)


from . import (  # noqa: E402,F401  (register the built-ins)
    adapter,
    bitfit,
    finetune,
    in_context,
    lora,
    p_tuning,
    p_tuning_v2,
    prefix_tuning,
    prompt_finetune,
    prompt_tuning,
    zero_shot,
)

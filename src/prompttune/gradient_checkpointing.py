"""Gradient (activation) checkpointing while a task trains: keep each layer's input, recompute the
rest of its activations in the backward pass (Chen et al. 2016, "Training deep nets with sublinear
memory cost"). Memory for activations falls from one set per layer to about one layer's; a step
costs about one more forward pass.

Through `transformers`' own switch (`activation_checkpointing_enable`, called
`gradient_checkpointing_enable` before 5.x), which checkpoints each transformer block's `forward`,
with *non-reentrant* `torch.utils.checkpoint`. Non-reentrant because of what a task puts on a frozen
model: soft prompts, prefixes, adapters and LoRA's row names are read from the modules they are bound
to (`model_parts`), not passed as layer inputs. Reentrant checkpointing runs the forward under
`no_grad` and gives gradients only to tensors passed as inputs (hence transformers'
`enable_input_require_grads`): a soft prompt behind a frozen embedding, or a prefix read from an
attention module's attribute, would get none (the failure PEFT reports for prefix tuning,
huggingface/peft #2191). Non-reentrant checkpointing records every tensor the recomputed layer reads,
attributes included, so each trainable parameter gets the gradient it gets without checkpointing.

What the recomputation sees: parts stay bound until the next bind (`KeyValuePrefix.bind_rows`,
`SoftPrompt.bind_rows`, ...), and the training loop binds once per forward and runs the backward
before the next forward, so a recomputed layer sees the same prefix, adapters and LoRA rows as the
forward pass did. Dropout draws the same masks (checkpoint restores the random state). Embedding
hooks (soft tokens, position shifts) run outside the checkpointed blocks and are never recomputed.

Checkpointing is on only inside `checkpointed(model)`; the model is as it was after it (inference and
serving never see it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from .errors import ConfigError

KWARGS = {"use_reentrant": False}
"""How `torch.utils.checkpoint.checkpoint` is called: non-reentrant (see the module's docstring)."""


def enable_checkpointing(model: nn.Module) -> None:
    """Checkpoint every transformer block of `model` (a `transformers` PreTrainedModel) in training mode.

    The hook transformers adds to make the input embeddings' output require grad (needed only by
    reentrant checkpointing) is removed again: the model gains nothing else.

    Raises `ConfigError` for a model whose class does not support checkpointing.

    Example:
        >>> enable_checkpointing(clf.model); clf.train(); loss = clf(batch).sum(); loss.backward()
        >>> disable_checkpointing(clf.model)
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"train.gradient_checkpointing: {type(model).__name__} does not support gradient "
                          "checkpointing; set it to false")
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:  # transformers ≥ 5.24 (gradient_checkpointing_enable is its deprecated alias)
        enable(activation_checkpointing_kwargs=dict(KWARGS))
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(KWARGS))
    model.disable_input_require_grads()


def disable_checkpointing(model: nn.Module) -> None:
    """Turn `enable_checkpointing` off: every block runs its plain forward again."""
    disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
    disable()
    model.disable_input_require_grads()


def is_checkpointing(model: nn.Module) -> bool:
    """Whether any module of `model` is set to checkpoint its forward."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


@contextmanager
def checkpointed(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """`model` with gradient checkpointing on (if `enabled`) for the block, off again after it, also
    when the block raises.

    Example:
        >>> with checkpointed(clf.model, config.gradient_checkpointing):
        ...     ...  # the training loop
    """
    if not enabled:
        yield
        return
    enable_checkpointing(model)
    # A training forward builds no key/value cache; saying so (in every config: T5's stacks keep copies)
    # spares transformers' warning that it turns the cache off under checkpointing.
    caching = {id(c): c for m in model.modules() if getattr(c := getattr(m, "config", None), "use_cache", False) is True}
    for config in caching.values():
        config.use_cache = False
    try:
        yield
    finally:
        for config in caching.values():
            config.use_cache = True
        disable_checkpointing(model)

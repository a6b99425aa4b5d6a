"""Methods: what a task trains. One module per method; this file is the registry.

A method decides two things: whether the task is read through a template + verbalizer or
through a classification head, and which parameters train (`attach` sets `requires_grad`).
What trains is exactly what the artifact saves (see `prompttune.parameters`). Register your own
with `register_method`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class Method:
    """A tuning method.

    Example:
        >>> register_method(Method("head-only", "train the classifier head", head=True,
        ...                        attach=lambda clf: ...))
    """

    name: str
    summary: str
    head: bool
    """True: a classification head on the raw text; False: template + verbalizer."""
    attach: Callable[[nn.Module], None]
    """Mark the classifier's trainable parameters (everything else frozen)."""


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in _METHODS:
        raise ConfigError(f"a method named {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method.name {name!r}; available: {sorted(_METHODS)}") from None


def method_names() -> list[str]:
    return sorted(_METHODS)


from . import finetune, prompt_finetune, zero_shot  # noqa: E402,F401  (register the built-ins)

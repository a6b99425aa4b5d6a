"""Which parameters train, and what is saved: the one rule every method follows.

A method marks parameters trainable (`requires_grad`); a task artifact holds exactly those
parameters and nothing else (torchtune's `adapter_params()` idea, reduced to the flag itself).
"""

from __future__ import annotations

import torch
from torch import nn


def freeze(module: nn.Module) -> None:
    """Stop every parameter of `module` from training."""
    for p in module.parameters():
        p.requires_grad_(False)


def trainable_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name (tied weights once), detached: what an artifact saves."""
    return {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameters, tied weights counted once."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(_numel(p) for p in params)


def _numel(p: torch.Tensor) -> int:
    """The numbers `p` holds: a 4-bit weight (bitsandbytes) packs two in a byte; its shape is its quant state's."""
    quant_state = getattr(p, "quant_state", None)
    return quant_state.shape.numel() if quant_state is not None and hasattr(quant_state, "shape") else p.numel()


def trainable_bytes(module: nn.Module) -> int:
    """Bytes of the trainable parameters (tied weights once), in their own dtypes."""
    return sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)

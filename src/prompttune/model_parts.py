"""What a task adds to a frozen model, and putting it there for some rows of a batch or for all.

A *part* is one thing a task puts on a shared, frozen model: its soft-token vectors
(`soft_prompts.SoftPrompt`), per-layer key/value prefixes (`deep_prompts.KeyValuePrefix`: trained
prefixes, or an in-context task's demonstrations), bottleneck adapters (`adapters.AdapterSet`) or a
LoRA update (`methods.lora.LoraPart`). Each kind of part answers one question, in one class method:

    Kind.bind_rows(model, [(part or None, rows), ...])

"from now on, let `model` compute for the rows of each group what it computes with that group's part
of this kind (None: with none)". `rows` is a (n,) long tensor of batch indices, or None for every row
of whatever batch comes. One task's forward pass is the one-group case `[(part, None)]`, and every kind
keeps a fast path for it (training runs it, one task's `generate` too); several groups must partition
the rows of the next batch (a shared forward pass of many tasks, `serving.mixed_batch`).

Each kind installs its hooks on the model once and records itself, with its own bookkeeping (hooked
modules, attention sites, the soft table...), in the model's registry (`kind_state`). `bind_parts` asks
every registered kind before each forward pass, so a task without a part of some kind gets None for it,
which takes off what another task sharing the model left bound. A model built over another's modules
(a classification-head model over a pool's backbone) shares that model's registry (`share_registry`).

Nothing here knows a method: a task model lists its parts (`parts()`: its children that are parts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

Rows = torch.Tensor | None
"""(n,) indices of the rows of a batch a part applies to; None: every row."""

_REGISTRY = "_prompttune_parts"  # in a model's __dict__: {kind: that kind's bookkeeping}, in install order


class ModelPart:
    """A kind of thing a task adds to a frozen model (a mixin beside `nn.Module`).

    A kind (the class that defines `bind_rows`) installs itself with `kind_state(model, Kind, new)`.
    Subclasses of a kind are the same kind: a trained prefix and an in-context prefix bind together.
    """

    @classmethod
    def bind_rows(cls, model: nn.Module, groups: Sequence[tuple[ModelPart | None, Rows]]) -> None:
        """Put each group's part of this kind (or none) on `model` for that group's rows, until the next call.

        `groups` is `[(part, None)]` for every row, or groups whose `rows` partition the next batch.
        Raises `ModelError` where the parts cannot share one batch."""
        raise NotImplementedError

    def stored(self, state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
        """`state` (a task's trainable parameters by name, this part being its child `name`) with this
        part's entries in the form an artifact stores. Default: as they are."""
        return state

    def loaded(self, weights: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
        """Saved `weights` with this part's entries under the names they have in this task. Default: as saved."""
        return weights

    def detach(self) -> None:
        """Take this part off its model for good, freeing what it holds there (a pool removing its task).
        Default: nothing to free (hooks stay, and bind nothing once the part is gone)."""


def replace_child_state(state: dict[str, torch.Tensor], name: str, own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with the entries of its child `name` replaced by `own` (keyed under `name.`): a part that
    stores a folded form (a soft prompt's vectors, a prefix's keys/values) in place of what trains.

    Example:
        >>> replace_child_state({"soft.encoder.w": w, "head.b": b}, "soft", {"vectors": v})
        {'head.b': b, 'soft.vectors': v}
    """
    kept = {k: v for k, v in state.items() if not k.startswith(f"{name}.")}
    return {**kept, **{f"{name}.{k}": v for k, v in own.items()}}


def kind_state(model: nn.Module, kind: type[ModelPart], new: Callable[[], object] | None = None):
    """The bookkeeping `kind` keeps on `model`; with `new`, registered (and made by `new()`) on first use.
    None where the kind was never installed on the model."""
    registry = model.__dict__.setdefault(_REGISTRY, {})
    if kind not in registry and new is not None:
        registry[kind] = new()
    return registry.get(kind)


def share_registry(model: nn.Module, base: nn.Module) -> None:
    """Let `model`, built over modules of `base`, bind and clear the same kinds as `base` (one registry).

    Raises `ModelError` if `model` already has parts of its own."""
    from .errors import ModelError

    if model.__dict__.get(_REGISTRY):
        raise ModelError(f"{type(model).__name__} already has parts installed; share the registry before adding any")
    model.__dict__[_REGISTRY] = base.__dict__.setdefault(_REGISTRY, {})


def parts_of(task: nn.Module) -> list[ModelPart]:
    """The parts a task model put on its model: its children that are parts."""
    return [m for m in task.children() if isinstance(m, ModelPart)]


def detach_parts(task: nn.Module) -> None:
    """Take every part of a task model off its (shared) model for good (`ModelPart.detach`)."""
    for part in parts_of(task):
        part.detach()


def bind_parts(model: nn.Module, groups: Sequence[tuple[Sequence[ModelPart], Rows]]) -> None:
    """Bind, for every kind installed on `model`, each group's part of that kind (or none) to its rows.

    Example:
        >>> bind_parts(model, [(parts_of(clf), None)])                           # one task, every row
        >>> bind_parts(model, [(parts_of(a), rows_a), (parts_of(b), rows_b)])    # two tasks, one batch
        >>> bind_parts(model, [([], None)])                                      # the bare model
    """
    for kind in list(model.__dict__.get(_REGISTRY, ())):
        kind.bind_rows(model, [(next((p for p in parts if isinstance(p, kind)), None), rows) for parts, rows in groups])


def bind_bare(model: nn.Module) -> None:
    """Take every part off `model`: it computes what the pretrained model does."""
    bind_parts(model, [([], None)])


def row_count(groups: Sequence[tuple[object, Rows]]) -> int:
    """Rows in the batch that groups with index tensors partition."""
    return sum(int(rows.numel()) for _, rows in groups)

"""lora (Hu et al. 2022): a trainable low-rank update B·A beside frozen Linear weights.

Injected by Hugging Face `peft` (`inject_adapter_in_model`), not written by hand: peft keeps
LoRA's layers, initialisation (A random, B = 0, so training starts from the pretrained model),
scaling (alpha / r) and merging correct across model families. Target modules default to
peft's choice per model family (BERT/RoBERTa query+value, GPT-2 c_attn, T5 q+v, Llama
q_proj+v_proj); `method.target_modules` overrides.

The artifact holds only the A and B matrices (and a classification head, if any). A target the
checkpoint lacks is part of that new head (with `head: true`, `dense` also matches BERT's pooler
when the checkpoint is a masked LM): it trains in full beside its LoRA update and is saved. With
`method.merge: true`, loading a task folds B·A into the weights and removes the LoRA layers
(`merge_lora`), so inference costs what the bare model costs; such a loaded task is for
inference (its LoRA matrices are gone). A task loaded onto a backbone given to it (a pool's) is
never merged: that would change the weights every other task on the backbone reads.

Many tasks on one backbone (`LoraPart`): each task's update is injected under its own peft adapter
name ("default" for the first, "task1", "task2"... beside it), and a batch names the adapter of
each row (peft's mixed-batch forward, `adapter_names`; "__base__" for rows of tasks without LoRA).
Artifacts always store the names as "default" (`LoraPart.stored` / `loaded` map them), so saved
tasks and PEFT exports are the same whichever name a task has in memory.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..model_parts import ModelPart, Rows, kind_state, row_count
from . import Method, register_method

SAVED_NAME = "default"
"""The adapter name artifacts store (peft's default name)."""
BASE = "__base__"
"""peft's name for "no adapter" in `adapter_names`."""
_ROWS = "_prompttune_lora_rows"  # on a LoRA layer: None, one adapter name for every row, or a name per row
_HOOK = "_prompttune_lora_hook"  # on a LoRA layer: the handle of its `_name_rows` pre-hook while rows are named


def default_targets(model: nn.Module) -> list[str]:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as TARGETS

    model_type = model.config.model_type
    if model_type not in TARGETS:
        raise ConfigError(f"peft has no default LoRA target modules for model type {model_type!r}; "
                          "set method.target_modules, e.g. [q_proj, v_proj]")
    return list(TARGETS[model_type])


def targets_are_conv1d(model: nn.Module, targets: list[str]) -> bool:
    """GPT-2 keeps its projections as Conv1D (weight stored transposed), which peft must be told."""
    from transformers.pytorch_utils import Conv1D

    def name_of(path: str) -> str:  # a target's own name, also once peft has wrapped it (".base_layer")
        return path.removesuffix(".base_layer").rsplit(".", 1)[-1]

    return any(isinstance(m, Conv1D) and name_of(n) in targets for n, m in model.named_modules())


class LoraPart(nn.Module, ModelPart):
    """A task's LoRA update: the name peft injected it under in the model's layers (which hold its
    matrices; this part holds none, so the task's parameter names stay the model's)."""

    def __init__(self, model: nn.Module, adapter: str):
        super().__init__()
        self._model = (model,)  # a tuple: the backbone is not a submodule of the part
        self.adapter = adapter

    @classmethod
    def bind_rows(cls, model: nn.Module, groups: Sequence[tuple[LoraPart | None, Rows]]) -> None:
        """Name each row's adapter in every LoRA layer; one task whose adapter is a layer's only active
        one runs peft's own forward there (the fast path, what training takes)."""
        layers = kind_state(model, LoraPart)
        if len(groups) == 1 and groups[0][1] is None:
            part = groups[0][0]
            name = part.adapter if part is not None else BASE
            for layer in layers:
                active = layer.active_adapters
                own = active == [name] or (name == BASE and not any(a in layer.lora_A for a in active))
                _name_layer_rows(layer, None if own else name)
            return
        names: list[str] = [BASE] * row_count(groups)
        for part, rows in groups:
            for row in rows.tolist():
                names[row] = part.adapter if part is not None else BASE
        for layer in layers:
            _name_layer_rows(layer, names)

    def stored(self, state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
        """This task's LoRA matrices under the name artifacts store ("default")."""
        return {_renamed(k, self.adapter, SAVED_NAME): v for k, v in state.items()}

    def loaded(self, weights: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
        """Saved LoRA matrices ("default") under this task's adapter name."""
        return {_renamed(k, SAVED_NAME, self.adapter): v for k, v in weights.items()}

    def detach(self) -> None:
        """Delete this task's matrices from every LoRA layer of the model (its name is free again). Which
        adapter peft then calls active does not matter (batches name theirs); what trains is left as it was."""
        for layer in kind_state(self._model[0], LoraPart):
            if self.adapter in layer.lora_A:
                training = {id(p): p.requires_grad for p in layer.parameters()}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "Adapter taskN was active which is now deleted"
                    layer.delete_adapter(self.adapter)
                for p in layer.parameters():
                    p.requires_grad_(training[id(p)])


def _renamed(key: str, old: str, new: str) -> str:
    """A peft parameter name with adapter `old` written as `new` (`...lora_A.old.weight`)."""
    return re.sub(rf"(\.lora_\w+\.){re.escape(old)}(\.|$)", rf"\g<1>{new}\g<2>", key)


def _name_rows(module: nn.Module, args, kwargs):
    """Forward pre-hook on a LoRA layer: pass the bound adapter name of each row (peft's `adapter_names`)."""
    rows = module.__dict__.get(_ROWS)
    if rows is None:
        return None
    x = args[0] if args else kwargs["x"]
    return args, {**kwargs, "adapter_names": [rows] * x.shape[0] if isinstance(rows, str) else rows}


def _name_layer_rows(layer: nn.Module, rows: str | list[str] | None) -> None:
    """Bind `rows` (None: peft's own forward, the fast path) on a LoRA layer; the `_name_rows` pre-hook is
    there only while rows are named. A module with any hook takes torch's slower call path, and the hook
    is a Python call per layer per forward: on a GPU waiting for the CPU, that was LoRA's gap to PEFT."""
    layer.__dict__[_ROWS] = rows
    hook = layer.__dict__.get(_HOOK)
    if rows is None and hook is not None:
        hook.remove()
        layer.__dict__[_HOOK] = None
    elif rows is not None and hook is None:
        layer.__dict__[_HOOK] = layer.register_forward_pre_hook(_name_rows, with_kwargs=True)


def _register_layers(model: nn.Module) -> list[nn.Module]:
    """Record the model's LoRA layers in its registry (each once, with no rows named); return them all."""
    from peft.tuners.lora import LoraLayer

    layers = kind_state(model, LoraPart, list)
    for module in model.modules():
        if isinstance(module, LoraLayer) and not any(m is module for m in layers):
            module.__dict__[_ROWS] = None
            module.__dict__[_HOOK] = None
            layers.append(module)
    return layers


def _free_name(model: nn.Module) -> str:
    """"default" if no LoRA layer of the model has it, else the first free "taskN"."""
    taken = {name for layer in (kind_state(model, LoraPart) or []) for name in layer.lora_A}
    return next(name for name in (SAVED_NAME, *(f"task{i}" for i in range(1, len(taken) + 2))) if name not in taken)


def attach_lora(classifier: nn.Module, options, folded: bool) -> None:
    """Inject LoRA layers into the classifier's model under a free adapter name; train them (and a
    classification head, if any)."""
    from peft import LoraConfig, inject_adapter_in_model

    model = classifier.model
    if options.lora_rank < 1:
        raise ConfigError(f"method.lora_rank must be ≥ 1, got {options.lora_rank}")
    targets = options.target_modules or default_targets(model)
    config = LoraConfig(r=options.lora_rank, lora_alpha=options.lora_alpha, lora_dropout=options.lora_dropout,
                        target_modules=targets, bias="none", fan_in_fan_out=targets_are_conv1d(model, targets))
    adapter = _free_name(model)
    # peft freezes everything but LoRA (every adapter's); keep what methods attached before this one train.
    training = {id(p) for p in classifier.parameters() if p.requires_grad}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Already found a `peft_config` attribute": a second task's LoRA
            inject_adapter_in_model(config, model, adapter_name=adapter)
    except ValueError as e:  # e.g. target modules that match nothing
        raise ConfigError(f"cannot add LoRA layers: {e}") from None
    _register_layers(model)
    own = re.compile(rf"\.lora_\w+\.{re.escape(adapter)}(\.|$)")
    mine = {id(p) for name, p in model.named_parameters() if own.search(name)}
    for p in classifier.parameters():
        p.requires_grad_(id(p) in training or id(p) in mine)
    for p in classifier.head_parameters():
        p.requires_grad_(True)
    classifier.lora = LoraPart(model, adapter)


def merge_lora(model: nn.Module) -> None:
    """Fold every LoRA update into its base weight and put the plain layer back (zero overhead)."""
    from peft.tuners.lora import LoraLayer

    merged = []
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
            merged.append(module)
    layers = kind_state(model, LoraPart)
    if layers is not None:  # the merged layers are gone from the model: nothing left to bind there
        layers[:] = [m for m in layers if not any(m is g for g in merged)]


register_method(Method("lora", "low-rank updates B·A beside frozen weights, through peft (Hu et al. 2022)",
                       head=None, attach=attach_lora))

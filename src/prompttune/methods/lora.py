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
inference (its LoRA matrices are gone). peft edits the model's modules, so a LoRA task owns its
backbone: do not share one loaded backbone between a LoRA task and others.
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from . import Method, register_method


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


def attach_lora(classifier: nn.Module, options, folded: bool) -> None:
    """Inject LoRA layers into the classifier's model; train them (and a classification head, if any)."""
    from peft import LoraConfig, inject_adapter_in_model

    model = classifier.model
    if any(hasattr(m, "lora_A") for m in model.modules()):
        raise ConfigError("this model already has LoRA layers (a backbone shared with another LoRA task?); "
                          "a LoRA task needs its own backbone")
    if options.lora_rank < 1:
        raise ConfigError(f"method.lora_rank must be ≥ 1, got {options.lora_rank}")
    targets = options.target_modules or default_targets(model)
    config = LoraConfig(r=options.lora_rank, lora_alpha=options.lora_alpha, lora_dropout=options.lora_dropout,
                        target_modules=targets, bias="none", fan_in_fan_out=targets_are_conv1d(model, targets))
    # peft freezes everything but LoRA; keep what methods attached before this one train.
    training = [p for p in classifier.parameters() if p.requires_grad]
    try:
        inject_adapter_in_model(config, model)
    except ValueError as e:  # e.g. target modules that match nothing
        raise ConfigError(f"cannot add LoRA layers: {e}") from None
    for p in training:
        p.requires_grad_(True)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
    for p in classifier.head_parameters():
        p.requires_grad_(True)


def merge_lora(model: nn.Module) -> None:
    """Fold every LoRA update into its base weight and put the plain layer back (zero overhead)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())


register_method(Method("lora", "low-rank updates B·A beside frozen weights, through peft (Hu et al. 2022)",
                       head=None, attach=attach_lora))

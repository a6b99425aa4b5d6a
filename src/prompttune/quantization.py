"""A quantized frozen base (QLoRA's setting, Dettmers et al. 2023): the backbone's Linear weights
stored in 4 or 8 bits, the task's own parameters (LoRA matrices, adapters, soft prompts, prefixes, a
classification head) trained and saved in full precision.

`quantization: nf4 | fp4 | int8 | none` (a run config's top level) reaches `transformers`'
`from_pretrained(quantization_config=...)` through `backbones.load_pretrained`; this module builds
that config, refuses what cannot train on it, and tells how a loaded model is quantized.

Backend: bitsandbytes, the one QLoRA users run on GPUs (NF4 with double quantization of the block
scales, LLM.int8()). Checked on the CPU (torch 2.13 CPU build, bitsandbytes 0.50.2, whose wheel
installs beside that torch and pulls no other): its CPU backend loads tiny BERT, RoBERTa, GPT-2 and T5
and the real SmolLM2 (Llama) quantized, and runs forward and backward (gradients reach LoRA matrices,
adapters, soft prompts, prefixes and biases through the quantized layers); so CI tests the very code
path a GPU runs. torchao's weight-only int8/int4 (`TorchAoConfig`) has no NF4 and is not what QLoRA
users load; optimum-quanto (which also installs beside that torch) quantizes to its own int4/int8
types, again not QLoRA's NF4. Neither is used.

What this module does beyond the config, and why:
- Every 4-bit layer keeps the standard (GPU) weight layout on the CPU (`keep_weight_layout`):
  bitsandbytes otherwise repacks a layer's weight *in place* on its first no-grad forward in eval
  mode on an AVX512-BF16 CPU. The repacked layer cannot train afterwards (its kernel has no backward,
  and a dev evaluation between epochs would break the next epoch), its bytes are no longer the
  checkpoint's, and unpacking re-quantizes the double-quantized scales (lossy).
- A classification head and a pooler stay in full precision (`skip_modules`): they are new
  (randomly initialised) weights that train; quantizing them would freeze them at random.
- peft's `prepare_model_for_kbit_training` is not called: it freezes the base (every task is built
  frozen already), upcasts fp16/bf16 weights that are not quantized to fp32 (the base loads in
  `model_dtype`; the trained parameters are created in full precision by their methods and peft's
  LoRA upcasts its own) and turns on gradient checkpointing (`train.gradient_checkpointing`'s job).
- Methods that train the base's own weights (prompt-finetune, finetune) are refused
  (`require_trainable_base`): 4-bit and 8-bit weights have no gradients. BitFit trains: the biases
  of quantized layers are ordinary full-precision parameters.

A task artifact never holds quantized weights (it holds what trains, and nothing quantized trains);
its `config.json` records the base's quantization (`quantization_of`), for information: a task trained
on a 4-bit base loads on the unquantized model too (`note_difference` says so on stderr).
"""

from __future__ import annotations

import importlib.util
import logging
import sys

import torch
from torch import nn

from .errors import ConfigError

QUANTIZATIONS: tuple[str, ...] = ("none", "nf4", "fp4", "int8")
"""`quantization` values: none, 4-bit NormalFloat (QLoRA's), 4-bit float, 8-bit LLM.int8()."""
INSTALL = "pip install 'prompttune[quantization]' (bitsandbytes)"


def check_quantization(name: str) -> str:
    """`name` if it is one of `QUANTIZATIONS` and its backend is installed.

    Raises `ConfigError`: "quantization must be one of [...], got 'nf3'", or "quantization: nf4 needs
    the bitsandbytes package: pip install 'prompttune[quantization]' (bitsandbytes)".
    """
    if name not in QUANTIZATIONS:
        raise ConfigError(f"quantization must be one of {list(QUANTIZATIONS)}, got {name!r}")
    if name != "none" and not backend_installed():
        raise ConfigError(f"quantization: {name} needs the bitsandbytes package: {INSTALL}")
    return name


def backend_installed() -> bool:
    """Whether bitsandbytes, the quantization backend, can be imported."""
    return importlib.util.find_spec("bitsandbytes") is not None


def quantization_config(name: str, compute_dtype: torch.dtype | None = None, skip_modules: list[str] | None = None):
    """The `transformers` `BitsAndBytesConfig` for `name` (None for "none"): nf4 and fp4 with double
    quantization of the block scales (QLoRA §3), computing in `compute_dtype` (default float32, the
    dtype the model loads in); int8 is LLM.int8() with its default outlier threshold. `skip_modules`
    (module paths or patterns) stay in full precision; None keeps transformers' choice (the LM head
    and the weights tied to the embeddings).

    Example:
        >>> quantization_config("nf4", torch.bfloat16).bnb_4bit_quant_type
        'nf4'
    """
    check_quantization(name)
    if name == "none":
        return None
    _import_quietly()
    from transformers import BitsAndBytesConfig

    if name == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip_modules)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=name, bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype or torch.float32, llm_int8_skip_modules=skip_modules)


def skip_modules(auto_cls, config) -> list[str]:
    """What a model of class `auto_cls` built from `config` keeps in full precision under a
    classification head: the head (every top-level module but the base model) and any pooler. Found
    on a model built on the meta device (no memory).

    Example:
        >>> skip_modules(AutoModelForSequenceClassification, AutoConfig.from_pretrained("bert-base-uncased"))
        ['classifier', 'bert.pooler']
    """
    with torch.device("meta"):
        model = auto_cls.from_config(config)
    head = [name for name, child in model.named_children() if child is not model.base_model and next(child.parameters(), None) is not None]
    return head + [name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] == "pooler"]


def load_kwargs(name: str, dtype: torch.dtype | None, device: torch.device | str | None = None,
                skip: list[str] | None = None) -> dict:
    """Extra `from_pretrained` arguments for quantization `name` ({} for "none"): the config, and the
    device the weights are quantized onto (`device_map`; a quantized model is placed while it loads,
    not moved after). `device` None: transformers' choice, the current GPU when there is one.
    """
    config = quantization_config(name, dtype, skip)
    if config is None:
        return {}
    return {"quantization_config": config, **({"device_map": {"": str(device)}} if device is not None else {})}


def prepare_quantized(model: nn.Module) -> None:
    """After loading: every 4-bit layer keeps its weight layout (`keep_weight_layout`), and the weights
    left unquantized on the CPU (embeddings, norms) get memory of their own: as views into the
    checkpoint file's memory map they would keep the whole file mapped, every page of it read while
    quantizing, and the process would hold the full-precision model's size after all."""
    keep_weight_layout(model)
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            if t.device.type == "cpu" and not is_quantized_parameter(t):
                t.data = t.data.clone()


def keep_weight_layout(model: nn.Module) -> None:
    """Stop bitsandbytes from repacking 4-bit weights in place for its CPU inference kernel (see the
    module docstring): the weights stay the checkpoint's quantized bytes, and the model can go on
    training after an evaluation. A no-op on a GPU, where that repacking never happens."""
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


def quantization_of(model: nn.Module) -> str:
    """How `model`'s weights are quantized: one of `QUANTIZATIONS` ("none" for a plain model).

    Example:
        >>> quantization_of(load_backbone("gpt2", quantization="nf4").model)
        'nf4'
    """
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    if config is None:
        return "none"
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    if get("load_in_8bit", False):
        return "int8"
    if get("load_in_4bit", False):
        return get("bnb_4bit_quant_type", "fp4")
    return str(get("quant_method", "unknown"))


def is_quantized_parameter(p: torch.Tensor) -> bool:
    """Whether `p` is a weight stored quantized (bitsandbytes' 4-bit or 8-bit parameter)."""
    return type(p).__name__ in ("Params4bit", "Int8Params")


def require_trainable_base(method, quantization: str) -> None:
    """Refuse a method that trains the base's own weights on a quantized base.

    Raises `ConfigError`: "method 'finetune' trains every weight of the base model, but quantization:
    nf4 stores them in 4 bits, which cannot train; ...".
    """
    if quantization != "none" and method.trains_base:
        bits = "8 bits" if quantization == "int8" else "4 bits"
        raise ConfigError(f"method {method.name!r} trains every weight of the base model, but quantization: {quantization} "
                          f"stores them in {bits}, which cannot train; use lora, adapter, bitfit or a prompt method "
                          "(prompt-tuning, p-tuning, prefix-tuning, p-tuning-v2), or quantization: none")


def note_difference(trained: str, loaded: str, where: str) -> None:
    """Say on stderr, in one line, that a task trained on a base quantized as `trained` is loaded on
    one quantized as `loaded` (allowed: its scores differ by the quantization error)."""
    if trained != loaded:
        base = lambda q: "an unquantized base" if q == "none" else f"a {q}-quantized base"  # noqa: E731
        print(f"note: {where} was trained on {base(trained)} and is loaded on {base(loaded)}; its outputs differ "
              "from training's by the quantization error", file=sys.stderr)


def _import_quietly() -> None:
    """Import bitsandbytes without its CPU backend's warning that an optional hub kernel (for the
    repacked layout `keep_weight_layout` turns off) is missing, and without its per-forward warning
    that LLM.int8() casts CPU inputs to float16."""
    loggers = [logging.getLogger(n) for n in ("bitsandbytes.backends.cpu.ops", "bitsandbytes.autograd._functions")]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    import bitsandbytes  # noqa: F401

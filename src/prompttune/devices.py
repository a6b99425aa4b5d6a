"""Which device and which dtype: one place for the rules every command and the task pool follow.

- `resolve_device("auto" | "cpu" | "cuda" | "cuda:N")`: auto is the first GPU when there is one.
- `resolve_dtype("auto" | "float32" | "bfloat16" | "float16", device)`: auto is bfloat16 on a GPU
  that supports it, float32 otherwise (the dtype of the frozen model's weights: `model_dtype`, `--dtype`).
- `MIXED_PRECISION` and `check_mixed_precision`: `train.mixed_precision` (accelerate's autocast).
- `model_device(module)` and `to_device(batch, device)`: every batch a model reads is put where
  the model is, with these two, in one place per code path.

Example:
    >>> device = resolve_device("auto")                 # cuda on a GPU machine, else cpu
    >>> dtype = resolve_dtype("auto", device)           # bfloat16 on an A100/H100, float32 on the CPU
    >>> batch = to_device(clf.collate(examples), model_device(clf))
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .errors import ConfigError

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""Names of the weights' dtypes a model may be loaded in (`model_dtype`, `--dtype`); auto: see `resolve_dtype`."""
DEVICES = "auto, cpu, cuda or cuda:N"
"""The device names `resolve_device` takes, in words."""
MIXED_PRECISION = ("no", "bf16", "fp16")
"""`train.mixed_precision`: accelerate's autocast of the forward pass (no = the weights' own dtype)."""


def resolve_device(device: str) -> torch.device:
    """`auto` = the first GPU when there is one, else the CPU; `cpu`, `cuda`, `cuda:N` as given. Under a
    launcher that starts a process per GPU (`accelerate launch`, torchrun: `LOCAL_RANK` is set), `auto`
    and `cuda` are the process's own GPU.

    Raises `ConfigError` for a device name torch does not know or a GPU that is not there.

    Example:
        >>> resolve_device("auto")          # on a machine without CUDA
        device(type='cpu')
        >>> resolve_device("cuda")          # there: ConfigError("--device cuda: this machine has no CUDA GPU")
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be {DEVICES}, got {device!r}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: this machine has no CUDA GPU")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                              f"numbered from 0")
        if resolved.index is None and os.environ.get("LOCAL_RANK", "").isdigit():
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    return resolved


def resolve_dtype(dtype: str, device: torch.device, *, key: str = "--dtype") -> torch.dtype:
    """`auto` = bfloat16 on a GPU that supports it, float32 otherwise; a dtype name as given.

    `key` names the flag or config key in the error. Raises `ConfigError` for a name not in `DTYPES`.

    Example:
        >>> resolve_dtype("auto", torch.device("cpu"))
        torch.float32
        >>> resolve_dtype("bfloat16", torch.device("cpu"), key="model_dtype")
        torch.bfloat16
    """
    if dtype not in DTYPES:
        raise ConfigError(f"{key} must be one of {list(DTYPES)}, got {dtype!r}")
    if dtype == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    """A dtype as `DTYPES` names it (and config.json records it): torch.bfloat16 → 'bfloat16'."""
    return str(dtype).removeprefix("torch.")


def check_mixed_precision(mode: str, device: torch.device) -> None:
    """Refuse a `train.mixed_precision` accelerate cannot run on `device`: a name other than no, bf16,
    fp16, and fp16 on the CPU (accelerate's fp16 needs a GPU's gradient scaler; bf16 runs on the CPU).

    Raises `ConfigError`."""
    if mode not in MIXED_PRECISION:
        raise ConfigError(f"train.mixed_precision must be one of {list(MIXED_PRECISION)}, got {mode!r}")
    if mode == "fp16" and device.type == "cpu":
        raise ConfigError("train.mixed_precision: fp16 needs a GPU (accelerate does not run fp16 on the CPU); "
                          "use bf16 there, or no")


def check_training_dtypes(model_dtype: torch.dtype, mode: str, trained: int) -> None:
    """Refuse what cannot train in a `model_dtype` model: autocast to the other 16-bit type (bf16 over a
    float16 model, fp16 over a bfloat16 one: the kernels get mixed dtypes), and AdamW directly on float16
    weights of the model itself (`trained` of them: BitFit, a head, fine-tuning, a fitted MLM head), whose
    eps (1e-8) is 0 in float16 and whose updates overflow to inf/NaN at once. bfloat16 weights train
    (float32's range; `train` notes their coarse steps).

    Raises `ConfigError` naming the keys to change.

    Example:
        >>> check_training_dtypes(torch.float16, "no", trained=63_872)
        ConfigError: model_dtype: float16: Adam's updates of the 63,872 model weights the method trains ...
    """
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
    if autocast is not None and model_dtype in (torch.bfloat16, torch.float16) and model_dtype != autocast:
        raise ConfigError(f"train.mixed_precision: {mode} autocasts to {dtype_name(autocast)}, over a model loaded in "
                          f"{dtype_name(model_dtype)} (model_dtype): use model_dtype: float32 with mixed precision, or "
                          "mixed_precision: no")
    if model_dtype == torch.float16 and trained:
        raise ConfigError(f"model_dtype: float16: Adam's updates of the {trained:,} model weights the method trains "
                          "overflow in float16 (they become inf/NaN at once); use model_dtype: bfloat16, or float32 "
                          "(with train.mixed_precision: fp16 on a GPU)")


def model_device(module: nn.Module) -> torch.device:
    """The device a module's weights are on (its first parameter's, else its first buffer's; the CPU
    for a module with neither): where every tensor it reads must be.

    Example:
        >>> model_device(clf)            # a classifier loaded with `load_artifact(dir, device="cuda")`
        device(type='cuda', index=0)
    """
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def to_device(batch: dict, device: torch.device | str) -> dict:
    """`batch` with every tensor value on `device` (a tensor already there is not copied); other values
    (lists, strings, numbers) as they are.

    Example:
        >>> to_device({"ids": torch.tensor([[1, 2]]), "texts": ["a b"]}, "cpu")
        {'ids': tensor([[1, 2]]), 'texts': ['a b']}
    """
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

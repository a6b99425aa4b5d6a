"""A second device on a machine that has only the CPU, for tests of device placement.

A GPU run fails when a tensor built on the CPU meets a model on the GPU ("Expected all tensors to be
on the same device, but got index is on cpu"). A CPU-only machine cannot see that bug: every tensor
is on the CPU. Here the model is put on a device that only pretends to be elsewhere (`FAKE`,
`privateuseone:0`): its tensors hold their data on the CPU, compute as usual, and say they are on
`FAKE` (`.device`); a tensor moved there (`.to(FAKE)`, `Module.to(FAKE)`) or created there
(`device=FAKE`) becomes one of them, and any result computed from one is one too. An operation that
mixes them with a CPU tensor raises, as CUDA would: every input of an operation must be on one
device, CPU scalars (0-dim) aside, and an index into a tensor may be on the CPU.

    with fake_device():                      # the torch function mode that makes it so
        clf.to(FAKE)
        clf(clf.collate(examples))           # raises: the batch is on the CPU
        clf(to_device(clf.collate(examples), FAKE))   # runs

It reads no CUDA API: code that branches on `device.type == "cuda"` sees another type. Only what
runs inside the `with` block is checked (tensors made outside it are plain CPU tensors).
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode, get_default_nowrap_functions
from torch.utils._pytree import tree_flatten, tree_map

FAKE = torch.device("privateuseone", 0)
"""The pretend device."""

_NOWRAP = set(get_default_nowrap_functions())
_MOVES = {torch._has_compatible_shallow_copy_type, torch.Tensor.copy_, torch.Tensor.data.__set__, torch.Tensor.module_load}
"""Operations across devices that CUDA allows too: copying from one device into a tensor on another."""
_GRAD = torch._C.TensorBase.grad
"""The `.grad` attribute, whose getter reaches `__torch_function__` as a new method each time."""
_INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}
"""A tensor indexed with CPU index tensors (CUDA moves them): only the indexed tensor and a value put
into it must be on its device."""


class DeviceMismatch(RuntimeError):
    """Tensors on the CPU and on `FAKE` met in one operation."""


def _target_device(args, kwargs) -> torch.device | None:
    """The device a `Tensor.to(...)` call names, or None."""
    kwargs = {k: v for k, v in kwargs.items() if k != "copy"}
    device, _, _, _ = torch._C._nn._parse_to(*args[1:], **kwargs)
    return device


def _name(func) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


class OnFake(torch.Tensor):
    """A tensor on `FAKE`: CPU data, another device in name."""

    @property
    def device(self) -> torch.device:
        return FAKE

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _MOVES and func not in _NOWRAP:
            checked = (args[0], *args[2:]) if func in _INDEXING else (args, kwargs)
            tensors = [t for t in tree_flatten(checked)[0] if isinstance(t, torch.Tensor)]
            on_cpu = [t for t in tensors if not isinstance(t, OnFake) and t.dim() > 0]
            if on_cpu and len(on_cpu) < len(tensors):
                raise DeviceMismatch(f"{_name(func)}: a tensor of shape {tuple(on_cpu[0].shape)} on the CPU meets "
                                     f"tensors on {FAKE} (CUDA: 'Expected all tensors to be on the same device')")
            if func in _INDEXING and not isinstance(args[0], OnFake):
                raise DeviceMismatch(f"{_name(func)}: a CPU tensor indexed with a tensor on {FAKE}")
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        if getattr(func, "__self__", None) is _GRAD and type(out) is torch.Tensor:
            return out.as_subclass(cls)  # autograd writes a plain tensor: the gradient is where its tensor is
        if func in _NOWRAP:
            return out
        if func is torch.Tensor.cpu or (func is torch.Tensor.to and _target_device(args, kwargs) == torch.device("cpu")):
            return tree_map(lambda t: t.as_subclass(torch.Tensor) if isinstance(t, torch.Tensor) else t, out)
        return tree_map(lambda t: t.as_subclass(cls) if type(t) is torch.Tensor else t, out)


class _FakeDeviceMode(TorchFunctionMode):
    """Turns `.to(FAKE)` and `device=FAKE` into tensors on `FAKE`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if device is not None and not isinstance(device, int) and torch.device(device) == FAKE:
            out = func(*args, **{**kwargs, "device": "cpu"})
            return tree_map(lambda t: t.as_subclass(OnFake) if isinstance(t, torch.Tensor) else t, out)
        if func is torch.Tensor.to and _target_device(args, kwargs) == FAKE:
            dtype = torch._C._nn._parse_to(*args[1:], **{k: v for k, v in kwargs.items() if k != "copy"})[1]
            out = args[0] if dtype is None else args[0].to(dtype)
            return out if isinstance(out, OnFake) else out.as_subclass(OnFake)
        return func(*args, **kwargs)


@contextlib.contextmanager
def fake_device():
    """Within: `FAKE` is a device (see the module docstring); `Module.to(FAKE)` swaps each parameter
    for one on it (tied weights stay tied)."""
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        with _FakeDeviceMode():
            yield FAKE
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)

"""What the speed benchmarks share about where they run: device and dtype flags, the device's name, and
peak memory per variant.

Peak memory of a variant is measured in a fresh subprocess that builds that variant alone (`--only NAME`),
runs one step to warm up (so the optimizer state exists), then one measured step:

- on a GPU, `torch.cuda.max_memory_allocated()` during the measured step (the peak of tensors the
  process held: the variant's model, its optimizer state, activations and gradients);
- on the CPU, the process's peak resident set (VmHWM in /proc/self/status) during the measured step,
  after resetting it (`echo 5 > /proc/self/clear_refs`), and the resident set just before the step. That
  includes the Python interpreter and torch's libraries (~0.3–0.5 GB) and the allocator's unreturned
  free memory, so compare variants with each other (`step_mib` = peak − before is the step's own
  growth), not with a GPU's allocated bytes. Where the reset is not allowed, the lifetime peak is used
  and said so.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def add_device_arguments(ap) -> None:
    """--device, --dtype, --model are added by the caller (its default model differs); this adds the rest."""
    ap.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                    help="the frozen backbone's dtype (on CUDA, float32 runs with TF32 matmuls)")
    ap.add_argument("--memory", action=__import__("argparse").BooleanOptionalAction, default=True,
                    help="peak memory per variant, each in a fresh subprocess (see bench_device.py)")
    ap.add_argument("--only", default=None, help=__import__("argparse").SUPPRESS)  # internal: the subprocess's variant


def resolve_device(name: str) -> torch.device:
    """auto|cpu|cuda|cuda:N → a torch.device; SystemExit for CUDA without a GPU."""
    try:  # the project's own rule, where it exists (issue 12's devices module)
        from prompttune.devices import resolve_device as project_rule

        return project_rule(name)
    except ImportError:
        pass
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: no CUDA device available")
    return device


def use_tf32(device: torch.device) -> None:
    """TF32 matmuls on CUDA for float32 (as the issue measured on the H200)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo (with the core count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os
    import platform

    model = platform.processor() or "unknown CPU"
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        model = found.group(1).strip() if found else model
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores)"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _rss_kib(field: str) -> int:
    found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(found.group(1)) if found else 0


def step_memory(step, device: torch.device) -> dict:
    """Peak memory of one call of `step` after one warm-up call (see the module docstring), in MiB."""
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        kind = "torch.cuda.max_memory_allocated"
    else:
        before = _rss_kib("VmRSS") * 1024
        try:
            Path("/proc/self/clear_refs").write_text("5")
            kind = "peak RSS (VmHWM, reset before the step)"
        except OSError:
            kind = "peak RSS (VmHWM since process start: reset not allowed)"
        step()
        peak = _rss_kib("VmHWM") * 1024
    mib = 2 ** 20
    return {"peak_mib": round(peak / mib, 1), "before_step_mib": round(before / mib, 1),
            "step_mib": round((peak - before) / mib, 1), "what": kind}


def memory_in_subprocesses(names: list[str]) -> dict[str, dict]:
    """Run this script again once per variant with `--only NAME --no-memory`; collect its MEMORY line."""
    out = {}
    for name in names:
        cmd = [sys.executable, sys.argv[0], *sys.argv[1:], "--only", name, "--no-memory"]
        run = subprocess.run(cmd, capture_output=True, text=True)
        line = next((l for l in run.stdout.splitlines() if l.startswith("MEMORY ")), None)
        out[name] = json.loads(line[7:]) if line else {"error": (run.stderr.strip().splitlines() or ["no output"])[-1]}
        print(f"memory of {name}: {out[name]}", file=sys.stderr)
    return out


def report_memory_and_exit(variants: list, device: torch.device) -> None:
    """The `--only` subprocess's job: print the one variant's MEMORY line, then stop."""
    if not variants:
        raise SystemExit("no such variant")
    print("MEMORY " + json.dumps(step_memory(variants[0].step, device)))
    raise SystemExit(0)

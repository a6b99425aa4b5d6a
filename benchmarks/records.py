"""What every benchmark writes beside its printed tables: one JSON record of the run.

    write_record(args, load_before, os.getloadavg(), setup={...}, libraries=["peft"], device=device, rows=rows)

The record holds the command as typed, a note (`args.note`), the machine and its load average
before and after (a busy machine explains slow numbers), the versions of Python, torch,
transformers and the `libraries` named, the set-up, then the results; it goes to `args.out`.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import shlex
import sys
from pathlib import Path


def write_record(args, load_before, load_after, *, setup: dict, libraries: tuple[str, ...] = (), device=None,
                 **results) -> None:
    """Write the run's JSON record to `args.out` (see the module docstring)."""
    import torch

    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
               "torch_threads": torch.get_num_threads()}
    if device is not None:
        from bench_device import device_name

        machine.update(device=str(device), device_name=device_name(device),
                       cuda_device=torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    machine.update(load_average_before=[round(x, 2) for x in load_before],
                   load_average_after=[round(x, 2) for x in load_after])
    versions = {"python": platform.python_version(),
                **{name: importlib.import_module(name).__version__ for name in ("torch", "transformers", *libraries)}}
    record = {
        "command": "python " + shlex.join([str(Path(sys.argv[0]).as_posix())] + sys.argv[1:]),
        "note": args.note,
        "machine": machine,
        "versions": versions,
        "setup": setup,
        **results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {out}")

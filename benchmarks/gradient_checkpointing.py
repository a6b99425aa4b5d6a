"""Peak memory and step time of a training step with and without `train.gradient_checkpointing`.

    OMP_NUM_THREADS=1 python benchmarks/gradient_checkpointing.py [--methods lora p-tuning-v2] [--steps 3]
        [--batch 8] [--tokens 128] [--note TEXT]

The real SmolLM2-135M-Instruct (`SmolLM2-135M-Instruct`, converted once into the prompttune cache),
float32 on the CPU. Each (method, checkpointing) variant runs in its own subprocess, so one variant's
memory never counts towards another's: the child loads the model, builds the task (template
`{sentence} It was {mask}.`, verbalizer negative/positive, which SmolLM2's causal scorer reads with
one row per example and label word: `batch_shape` 2·batch × tokens; lora: rank 8 on q_proj/v_proj; p-tuning-v2:
20 prefix vectors per layer), and makes one fixed batch of `--batch` rows of exactly `--tokens`
tokens (a long text truncated to fit). Then one untimed step and `--steps` timed steps: forward,
cross-entropy on the class scores, backward, AdamW step, in train mode (dropout as in training).

Memory is the process's resident set (psutil's RSS, sampled every 2 ms by a thread while the steps
run; torch's CPU allocations are invisible to tracemalloc): "activations" = the peak during the
steps minus the RSS just before the first (model and task loaded; AdamW's state, twice the trainable
parameters, small here, comes on top in the first step). Measured from before the untimed step, since
the allocator keeps freed memory: after one step, the RSS already holds the activations' pages. Also the
process's lifetime peak (`ru_maxrss`). Time: the median wall time of a timed step.

Writes benchmarks/results/gradient_checkpointing.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import write_record  # noqa: E402

TEXT = ("the film moves slowly at first , then the story opens up into something warm , funny and sad , "
        "with actors who clearly enjoy every scene they share and a script that trusts its audience . ") * 8
OPTIONS = {"lora": {"lora_rank": 8, "lora_alpha": 16}, "p-tuning-v2": {"prompt_length": 20},
           "prefix-tuning": {"prompt_length": 20}, "prompt-tuning": {}}
TEMPLATES = {"prompt-tuning": "{soft:20} {sentence} It was {mask}."}


def child(method: str, checkpointing: bool, steps: int, batch_size: int, tokens: int) -> dict:
    """One variant in this process: the numbers as a dict (see the module docstring)."""
    import psutil
    import torch
    import torch.nn.functional as F

    from prompttune import TaskSpec, build_classifier
    from prompttune.backbones import SMOLLM2
    from prompttune.gradient_checkpointing import checkpointed

    torch.manual_seed(0)
    spec = TaskSpec(method=method, model=SMOLLM2, text_fields=["sentence"], labels=["0", "1"],
                    template=TEMPLATES.get(method, "{sentence} It was {mask}."),
                    verbalizer={"0": ["negative"], "1": ["positive"]}, max_length=tokens, options=OPTIONS[method])
    clf, _ = build_classifier(spec)
    batch = clf.collate([{"sentence": TEXT, "label": str(i % 2)} for i in range(batch_size)])
    ids = batch.get("ids")
    shape = list(ids.shape) if torch.is_tensor(ids) else None
    params = [p for p in clf.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    process = psutil.Process()

    def step() -> float:
        started = time.perf_counter()
        loss = F.cross_entropy(clf(batch).float(), batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    clf.train()
    times, peak, done = [], [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    before = process.memory_info().rss
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with checkpointed(clf.model, checkpointing):
        step()  # untimed: allocator warm-up, AdamW's state created
        for _ in range(steps):
            times.append(step())
    done.set()
    sampler.join()
    return {"method": method, "gradient_checkpointing": checkpointing, "batch_shape": shape,
            "trainable_parameters": sum(p.numel() for p in params),
            "rss_before_steps_mib": round(before / 2**20, 1), "peak_rss_during_steps_mib": round(peak[0] / 2**20, 1),
            "activations_mib": round((peak[0] - before) / 2**20, 1),
            "lifetime_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, 1),
            "step_seconds_median": round(statistics.median(times), 3), "step_seconds": [round(t, 3) for t in times]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["lora", "p-tuning-v2"], choices=sorted(OPTIONS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--note", default="")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gradient_checkpointing.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, on = args.child.split(":")
        print(json.dumps(child(method, on == "on", args.steps, args.batch, args.tokens)))
        return

    load_before = os.getloadavg()
    rows = []
    for method in args.methods:
        for on in ("off", "on"):
            command = [sys.executable, __file__, "--child", f"{method}:{on}", "--steps", str(args.steps),
                       "--batch", str(args.batch), "--tokens", str(args.tokens)]
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            if done.returncode != 0:
                sys.exit(f"{method} (checkpointing {on}) failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{method:>14}  checkpointing {on:>3}: activations {r['activations_mib']:8.1f} MiB  "
                  f"peak RSS {r['peak_rss_during_steps_mib']:8.1f} MiB  step {r['step_seconds_median']:.2f} s", flush=True)
    ratios = {}
    for method in args.methods:
        off, on = (next(r for r in rows if r["method"] == method and r["gradient_checkpointing"] is flag)
                   for flag in (False, True))
        ratios[method] = {"activations_on_over_off": round(on["activations_mib"] / off["activations_mib"], 3),
                          "step_time_on_over_off": round(on["step_seconds_median"] / off["step_seconds_median"], 3)}
        print(f"{method}: activations × {ratios[method]['activations_on_over_off']}, "
              f"step time × {ratios[method]['step_time_on_over_off']} with checkpointing")
    import torch

    write_record(args, load_before, os.getloadavg(), libraries=("peft", "psutil"),
                 setup={"model": "SmolLM2-135M-Instruct", "dtype": "float32", "device": "cpu",
                        "batch": args.batch, "tokens": args.tokens, "steps": args.steps,
                        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "options": OPTIONS},
                 device=torch.device("cpu"), rows=rows, ratios=ratios)


if __name__ == "__main__":
    main()

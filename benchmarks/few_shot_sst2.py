"""Few-shot SST-2 on the embedded all-MiniLM-L6-v2: zero-shot vs finetune vs prompt-finetune.

LM-BFF's protocol (Gao et al. 2021): K=16 examples per class for training and another 16 per
class for choosing the best epoch, 5 seeds; accuracy on held-out sentences that no run trains on.

    python benchmarks/few_shot_sst2.py [--data ../shared/data/sst2/train.tsv] [--seeds 13 21 42 87 100]
    python benchmarks/few_shot_sst2.py --random-head --methods zero-shot prompt-finetune   # control: no fitted head

Prints a markdown table of mean ± std accuracy and writes benchmarks/results/few_shot_sst2.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from prompttune.backbones import load_backbone
from prompttune.config import load_config
from prompttune.data import few_shot_split, load_examples, sample_per_class, without
from prompttune.lm_head import fit_and_save_lm_head, save_lm_head
from prompttune.recipes import run_training

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE, VERBALIZER = "{sentence} It was {mask}.", {0: "terrible", 1: "great"}
METHODS = {
    "zero-shot": {},
    "finetune": {"epochs": 20, "lr": 1e-4},
    "prompt-finetune": {"epochs": 20, "lr": 1e-4},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/sst2/train.tsv"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[13, 21, 42, 87, 100])
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--test", type=int, default=500, help="held-out examples per class")
    ap.add_argument("--head-texts", type=int, default=20000)
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--work", default=str(ROOT / "runs/bench_few_shot"))
    ap.add_argument("--random-head", action="store_true",
                    help="control: use an unfitted (random) MLM head instead of a fitted one")
    args = ap.parse_args()

    work = Path(args.work)
    examples = load_examples(args.data, ["sentence"], "label")
    test = sample_per_class(examples, args.test, seed=0)
    rest = without(examples, test)

    head = work / ("random_head" if args.random_head else "lm_head")
    if args.random_head and not (head / "head.json").is_file():
        torch.manual_seed(0)
        save_lm_head(load_backbone("all-MiniLM-L6-v2").model, head, {"random": True})
    if not (head / "head.json").is_file():
        report = fit_and_save_lm_head("all-MiniLM-L6-v2", [ex["sentence"] for ex in rest], head, max_texts=args.head_texts, held_out=1000)
        print("lm head:", json.dumps(report))
    head_report = json.loads((head / "head.json").read_text())

    results: dict[str, list[dict]] = {m: [] for m in args.methods}
    for seed in args.seeds:
        train, dev = few_shot_split(rest, args.shots, seed)
        for method in args.methods:
            if method == "zero-shot" and results[method]:
                results[method].append(results[method][0])  # no training: the same for every seed
                continue
            cfg = load_config(raw={
                "model": "all-MiniLM-L6-v2",
                "lm_head": None if method == "finetune" else str(head),
                "task": {"text_fields": ["sentence"], "shots": args.shots, "seed": seed},
                "prompt": {"template": TEMPLATE, "verbalizer": VERBALIZER} if method != "finetune" else {},
                "method": {"name": method},
                "train": {"batch_size": 8, "max_length": 64, "seed": seed, "progress": False, "checkpoint": False, **METHODS[method]},
            })
            start = time.perf_counter()
            summary = run_training(cfg, work / f"{method}-{seed}", overwrite=True, splits=(train, dev, test), log=lambda _: None)
            row = {"seed": seed, **summary["eval"], "seconds": round(time.perf_counter() - start, 1),
                   "trainable_parameters": summary["trainable_parameters"], "best_epoch": summary["best_epoch"]}
            results[method].append(row)
            print(method, json.dumps(row), flush=True)

    print(f"\nSST-2, all-MiniLM-L6-v2 + fitted MLM head ({head_report.get('metrics', head_report)}), "
          f"{args.shots} shots per class, seeds {args.seeds}, {2 * args.test} held-out sentences\n")
    print("| method | accuracy (mean ± std) | macro-F1 | trainable parameters | seconds per run |")
    print("|---|---|---|---|---|")
    for method, rows in results.items():
        acc = [r["accuracy"] for r in rows]
        f1 = [r["macro_f1"] for r in rows]
        print(f"| {method} | {statistics.mean(acc):.3f} ± {statistics.pstdev(acc):.3f} | {statistics.mean(f1):.3f} "
              f"| {rows[0]['trainable_parameters']:,} | {statistics.mean(r['seconds'] for r in rows):.0f} |")
    out = ROOT / f"benchmarks/results/few_shot_sst2{'_random_head' if args.random_head else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "lm_head": head_report, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()

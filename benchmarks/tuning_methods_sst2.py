"""Parameter-efficient methods on SST-2 with the embedded all-MiniLM-L6-v2, against full fine-tuning:
soft and deep prompts (prompt-tuning, p-tuning, prefix-tuning, p-tuning-v2) and weight-side
methods (lora, adapter, bitfit).

Two regimes, 5 seeds each: LM-BFF's few-shot protocol (16 examples per class to train, another 16
per class to pick the best epoch) and 1,000 training examples (500 per class, 100 per class dev).
Accuracy on 1,000 held-out sentences no run trains on. prompt-tuning and p-tuning read the task
through the template + verbalizer with the fitted MLM head (see lm_head_minilm.py); prefix-tuning
and p-tuning-v2 use a linear head on [CLS] (`method.head: true`, P-tuning v2's NLU setting), and so
do lora, adapter and bitfit (the setting they are compared with full fine-tuning in).

    python benchmarks/tuning_methods_sst2.py [--regimes 16 1000] [--seeds 13 21 42 87 100] [--methods ...]

A key `name:variant` is method `name` with other settings (see METHODS). Prints a markdown table (mean ± std, trainable parameters, numbers stored per task) and writes
the JSON named by --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from prompttune.config import load_config
from prompttune.data import few_shot_split, load_examples, sample_per_class, without
from prompttune.lm_head import fit_and_save_lm_head
from prompttune.recipes import run_training

ROOT = Path(__file__).resolve().parents[1]
VERBALIZER = {0: "terrible", 1: "great"}
# (prompt, method options, train settings per regime). Learning rates follow the papers' orders
# of magnitude (prompt tuning ~1e-2..3e-1, P-tuning v2 5e-3..1e-2); no per-method search was run.
METHODS = {
    "finetune": (None, {}, {16: {"epochs": 20, "lr": 1e-4}, 1000: {"epochs": 3, "lr": 5e-5}}),
    "prompt-tuning": ("{soft:10} {sentence} It was {mask}.", {},
                      {16: {"epochs": 20, "lr": 3e-2}, 1000: {"epochs": 5, "lr": 1e-2}}),
    "p-tuning": ("{soft:3} {sentence} {soft:3} It was {mask}.", {"encoder": "lstm"},
                 {16: {"epochs": 20, "lr": 3e-3}, 1000: {"epochs": 5, "lr": 1e-3}}),
    "prefix-tuning": (None, {"head": True, "prompt_length": 10},
                      {16: {"epochs": 20, "lr": 3e-3}, 1000: {"epochs": 5, "lr": 3e-3}}),
    "p-tuning-v2": (None, {"head": True, "prompt_length": 20},
                    {16: {"epochs": 20, "lr": 1e-2}, 1000: {"epochs": 5, "lr": 1e-2}}),
    # P-tuning v2 trains its prompts for many more epochs than fine-tuning (the paper: up to 100).
    "p-tuning-v2:15-epochs": (None, {"head": True, "prompt_length": 20}, {1000: {"epochs": 15, "lr": 1e-2}}),
    # Weight-side methods (issue 3), with a linear head like finetune; lrs from the papers' ranges.
    "lora": (None, {"head": True, "lora_rank": 8, "lora_alpha": 16}, {16: {"epochs": 20, "lr": 1e-3}, 1000: {"epochs": 5, "lr": 5e-4}}),
    "adapter": (None, {"head": True, "reduction_factor": 16}, {16: {"epochs": 20, "lr": 1e-3}, 1000: {"epochs": 5, "lr": 5e-4}}),
    "bitfit": (None, {"head": True}, {16: {"epochs": 20, "lr": 1e-3}, 1000: {"epochs": 5, "lr": 1e-3}}),
}


def splits(rest: list[dict], regime: int, seed: int) -> tuple[list[dict], list[dict]]:
    if regime == 16:
        return few_shot_split(rest, 16, seed)
    train = sample_per_class(rest, regime // 2, seed)
    return train, sample_per_class(without(rest, train), 100, seed + 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/sst2/train.tsv"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[13, 21, 42, 87, 100])
    ap.add_argument("--regimes", type=int, nargs="+", default=[16, 1000], help="16 = 16 shots per class; N = N examples")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--test", type=int, default=500, help="held-out examples per class")
    ap.add_argument("--work", default=str(ROOT / "runs/bench_tuning_methods"))
    ap.add_argument("--head", default=str(ROOT / "runs/bench_few_shot/lm_head"), help="fitted MLM head (made if absent)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/tuning_methods_sst2.json"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--text-field", default="sentence",
                    help="text column, e.g. review for ../shared/data/zh/waimai_10k.csv (label,review)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    work, head = Path(args.work), Path(args.head)
    field = args.text_field
    examples = load_examples(args.data, [field], "label")
    test = sample_per_class(examples, args.test, seed=0)
    rest = without(examples, test)
    if not (head / "head.json").is_file():
        fit_and_save_lm_head("all-MiniLM-L6-v2", [ex[field] for ex in rest], head, max_texts=8000, held_out=1000)

    out = Path(args.out)
    results = json.loads(out.read_text())["results"] if out.is_file() else {}
    for regime in args.regimes:
        for seed in args.seeds:
            train, dev = splits(rest, regime, seed)
            for method in args.methods:
                key = f"{method}@{regime}"
                if any(r["seed"] == seed for r in results.get(key, [])):
                    continue  # resumable: a finished (method, regime, seed) is kept
                template, options, settings = METHODS[method]
                cfg = load_config(raw={
                    "model": "all-MiniLM-L6-v2",
                    "lm_head": str(head) if template else None,
                    "task": {"text_fields": [field]},
                    "prompt": {"template": template.replace("{sentence}", "{" + field + "}"), "verbalizer": VERBALIZER}
                    if template else {},
                    "method": {"name": method.split(":")[0], **options},
                    "train": {"batch_size": 8 if regime == 16 else 16, "max_length": 64, "seed": seed,
                              "progress": False, "checkpoint": False, **settings[regime]},
                })
                start = time.perf_counter()
                summary = run_training(cfg, work / f"{method}-{regime}-{seed}", overwrite=True, splits=(train, dev, test),
                                       log=lambda _: None)
                saved = json.loads((work / f"{method}-{regime}-{seed}/config.json").read_text())
                row = {"seed": seed, **summary["eval"], "seconds": round(time.perf_counter() - start, 1),
                       "trainable_parameters": summary["trainable_parameters"], "stored_numbers": saved["stored_numbers"],
                       "artifact_bytes": (work / f"{method}-{regime}-{seed}/weights.safetensors").stat().st_size,
                       "best_epoch": summary["best_epoch"]}
                results.setdefault(key, []).append(row)
                print(key, json.dumps(row), flush=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps({"args": vars(args), "methods": {m: METHODS[m][:2] for m in METHODS},
                                           "results": results}, indent=2) + "\n")
    print_table(results)


def print_table(results: dict) -> None:
    print("\n| method | training examples | accuracy (mean ± std) | seeds | trainable parameters | numbers stored | seconds per run |")
    print("|---|---|---|---|---|---|---|")
    for key, rows in results.items():
        method, regime = key.split("@")
        acc = [r["accuracy"] for r in rows]
        n = "16 per class" if regime == "16" else regime
        print(f"| {method} | {n} | {statistics.mean(acc):.3f} ± {statistics.pstdev(acc):.3f} | {len(rows)} "
              f"| {rows[0]['trainable_parameters']:,} | {rows[0]['stored_numbers']:,} | {statistics.mean(r['seconds'] for r in rows):.0f} |")


if __name__ == "__main__":
    main()

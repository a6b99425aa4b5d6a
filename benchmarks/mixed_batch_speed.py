"""Speed of one forward pass for many tasks (`TaskPool.scores_mixed`) against one pass per task.

    python benchmarks/mixed_batch_speed.py [--reps 20] [--threads 1] [--max-batch-size 32] [--device cpu|cuda]

One batch of `--batch-size` SST-2 sentences (default 64, half per class, seed 0), max length 64, the
embedded all-MiniLM-L6-v2 with a fitted MLM head (`--lm-head`), in a `TaskPool`. Six tasks of
different methods on it, saved untrained (speed does not depend on the numbers): zero-shot,
prompt-tuning (20 soft tokens), p-tuning-v2 (20 prefixes), prefix-tuning (10), lora (r=8), adapter
(houlsby, r=16); template `{sentence} It was {mask}.`. Inference only (`no_grad`, eval mode).

Variants, each scoring every sentence once:

- mixed, shared pass: the sentences spread over the six tasks in turn, one `scores_mixed` call:
  every row with its own task's parts, chunks of `--max-batch-size` sequences ordered by length;
- mixed, grouped per task: the same rows, each task's run by its own classifier (`predict_scores`,
  batches of `--max-batch-size`), one after the other: what the pool did before shared passes;
- one task: zero-shot / one task: prompt-tuning: every sentence to that one task through the pool
  (the two ends: no part at all, and 20 extra tokens per row).

After `--warmup` untimed rounds, `--reps` rounds are timed, variants round-robin in a rotated order.
Writes benchmarks/results/mixed_batch_speed.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import write_record  # noqa: E402
from speed_soft_prompts import ROOT, Variant, common_arguments, measure, prepare, print_tables, summarize  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
TEMPLATE, VERBALIZER = "{sentence} It was {mask}.", {"0": ["terrible"], "1": ["great"]}
TASKS = {
    "zero-shot": ("zero-shot", TEMPLATE, {}),
    "prompt-tuning": ("prompt-tuning", "{soft:20} " + TEMPLATE, {}),
    "p-tuning-v2": ("p-tuning-v2", TEMPLATE, {"prompt_length": 20}),
    "prefix-tuning": ("prefix-tuning", TEMPLATE, {"prompt_length": 10}),
    "lora": ("lora", TEMPLATE, {"lora_rank": 8}),
    "adapter": ("adapter", TEMPLATE, {}),
}
RATIOS = [  # (label, numerator, denominator, target)
    ("shared_pass / grouped_per_task", "mixed, shared pass", "mixed, grouped per task", None),
    ("shared_pass / one_task_zero_shot", "mixed, shared pass", "one task: zero-shot", None),
    ("shared_pass / one_task_prompt_tuning", "mixed, shared pass", "one task: prompt-tuning", None),
]


def build_pool(args, directory: Path, device):
    from prompttune import TaskSpec, build_classifier, save_artifact
    from prompttune.serving import TaskPool

    for name, (method, template, options) in TASKS.items():
        spec = TaskSpec(method=method, model=MODEL, lm_head=args.lm_head, text_fields=["sentence"], labels=["0", "1"],
                        template=template, verbalizer=VERBALIZER, options=options, max_length=args.max_length)
        torch.manual_seed(args.seed)
        clf, fp = build_classifier(spec)
        save_artifact(directory / name, spec, clf, fp)
    pool = TaskPool(MODEL, lm_head=args.lm_head, device=str(device), dtype="float32", max_batch_size=args.max_batch_size)
    for name in TASKS:
        pool.add(directory / name, name)
    return pool


def main() -> None:
    ap = common_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]), "mixed_batch_speed.json")
    ap.set_defaults(batch_size=64)
    ap.add_argument("--lm-head", default=str(ROOT / "runs/bench_few_shot/lm_head"), help="fitted MLM head directory")
    ap.add_argument("--max-batch-size", type=int, default=32, help="sequences per forward pass (TaskPool)")
    args = ap.parse_args()

    from prompttune.evaluation import predict_scores

    device, load_before, examples = prepare(args)
    texts = [{"sentence": e["sentence"]} for e in examples]
    names = list(TASKS)
    mixed = [(names[i % len(names)], ex) for i, ex in enumerate(texts)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        pool = build_pool(args, Path(tmp), device)
        build_s = time.perf_counter() - t0

        def grouped():
            for name in names:
                rows = [ex for task, ex in mixed if task == name]
                predict_scores(pool.tasks()[names.index(name)].classifier, rows, batch_size=args.max_batch_size)

        variants = [
            Variant("mixed, shared pass", "mixed", lambda: pool.scores_mixed(mixed), 0, 0, "ours"),
            Variant("mixed, grouped per task", "mixed", grouped, 0, 0, "ours"),
            Variant("one task: zero-shot", "one task", lambda: pool.scores_mixed([("zero-shot", ex) for ex in texts]), 0, 0, "ours"),
            Variant("one task: prompt-tuning", "one task",
                    lambda: pool.scores_mixed([("prompt-tuning", ex) for ex in texts]), 0, 0, "ours"),
        ]
        t0 = time.perf_counter()
        measure(variants, args.reps, args.warmup, device)
        measure_s = time.perf_counter() - t0
    load_after = os.getloadavg()

    rows, ratios = summarize(variants, RATIOS, {})
    print_tables(args, device, load_before, load_after, rows, ratios, {})
    print("\n| variant | rows/s |\n|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {len(texts) / (r['median_ms'] / 1e3):.0f} |")
    write_record(args, load_before, load_after, libraries=("peft",), device=device, setup={
        "model": MODEL, "lm_head": args.lm_head, "rows": len(texts), "max_batch_size": args.max_batch_size,
        "max_length": args.max_length, "tasks": {k: [m, t, o] for k, (m, t, o) in TASKS.items()},
        "reps": args.reps, "warmup": args.warmup, "seed": args.seed},
        variants=rows, ratios=ratios, seconds={"build": round(build_s, 1), "measure": round(measure_s, 1)})


if __name__ == "__main__":
    main()

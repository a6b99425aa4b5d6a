"""Operator counts and self CPU time of one training step: P-tuning v2 (ours) vs PEFT prefix tuning vs the bare model.

    OMP_NUM_THREADS=1 python benchmarks/profile_deep_prompts.py [--model bert-base] [--batch-size 8] [--seq-len 90]
        [--prefix 20] [--rows one|groups] [--dtype float32|bfloat16] [--time N] [--top 25] [--out benchmarks/results/profile_deep_prompts.json]

One forward + backward (no optimizer step) of the sum of the last hidden states, on a random
BERT-base-shaped encoder (`model_shapes.py`), a batch of `--batch-size` rows of random token ids,
`--seq-len` long with the last rows padded (so the attention mask is real), under torch.profiler (CPU
activities). Variants, each on its own copy of the model:

- bare: `inputs_embeds` requiring grad (the least any prompt method pays: a backward down to the input).
- ours p-tuning-v2: `DeepPrompt(model, P)` bound (`bind`, as every task forward does), then the model.
  `--rows groups` binds two tasks' prefixes (P and P/2) to halves of the batch (the mixed-batch path).
- peft prefix: `get_peft_model(model, PrefixTuningConfig(num_virtual_tokens=P, prefix_projection=False))`.

Prints per variant the operator table (calls and self CPU ms, top `--top` by self time) and a table of
the operators that build masks and prefixes (cat, expand, full/zeros, masked_fill, arange, index, to),
whose counts show which work is done once per forward and which once per layer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_shapes import model_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WATCHED = ("aten::cat", "aten::expand", "aten::full", "aten::new_full", "aten::zeros", "aten::new_zeros", "aten::masked_fill",
           "aten::arange", "aten::index", "aten::to", "aten::_to_copy", "aten::copy_", "aten::pad", "aten::constant_pad_nd",
           "aten::add", "aten::sub", "aten::eq", "aten::le", "aten::lt", "aten::bitwise_not", "aten::where",
           "aten::masked_fill_", "aten::logical_not",
           "aten::zeros_like", "aten::stack", "aten::sum", "aten::scaled_dot_product_attention")


def batch(vocab: int, rows: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), each (rows, length): the last half of the rows padded by up to a third."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (rows, length), generator=g)
    attn = torch.ones(rows, length, dtype=torch.long)
    for r in range(rows // 2, rows):
        attn[r, length - (r - rows // 2 + 1) * length // (3 * max(1, rows - rows // 2)) - 1:] = 0
    return ids, attn


def build(variant: str, path: str, prefix: int, rows_mode: str, ids: torch.Tensor, attn: torch.Tensor,
          dtype: torch.dtype = torch.float32):
    from transformers import AutoModel

    torch.manual_seed(0)
    extra = {"add_pooling_layer": False} if "bert" in path else {}
    model = AutoModel.from_pretrained(path, dtype=dtype, **extra)
    model.requires_grad_(False).train()
    if variant == "bare":
        emb = model.get_input_embeddings()

        def step():
            x = emb(ids).detach().requires_grad_(True)
            model(inputs_embeds=x, attention_mask=attn).last_hidden_state.sum().backward()
        return step
    if variant == "ours p-tuning-v2":
        from prompttune.deep_prompts import DeepPrompt, KeyValuePrefix

        deep = DeepPrompt(model, prefix)
        other = DeepPrompt(model, max(1, prefix // 2))
        half = ids.shape[0] // 2
        groups = [(deep, torch.arange(half)), (other, torch.arange(half, ids.shape[0]))]

        def step():
            if rows_mode == "groups":
                KeyValuePrefix.bind_rows(model, groups)
            else:
                deep.bind()
            model(input_ids=ids, attention_mask=attn).last_hidden_state.sum().backward()
        return step
    from peft import PrefixTuningConfig, get_peft_model

    pm = get_peft_model(model, PrefixTuningConfig(num_virtual_tokens=prefix, prefix_projection=False,
                                                  task_type="FEATURE_EXTRACTION"))
    pm.train()

    def step():
        pm(input_ids=ids, attention_mask=attn).last_hidden_state.sum().backward()
    return step


def profile(step) -> dict[str, dict]:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    step()  # warm-up
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return {e.key: {"calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 3),
                    "cpu_total_ms": round(e.cpu_time_total / 1e3, 3)} for e in prof.key_averages()}


def time_steps(steps: dict, n: int) -> dict[str, float]:
    """Median wall ms of `n` steps per variant, run round-robin (load from other processes hits all alike)."""
    import statistics
    import time

    times = {v: [] for v in steps}
    for _ in range(n):
        for v, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[v].append((time.perf_counter() - t0) * 1e3)
    return {v: round(statistics.median(t), 3) for v, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="bert-base", help="a local model folder or a shape of model_shapes.py")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=90)
    ap.add_argument("--prefix", type=int, default=20)
    ap.add_argument("--rows", choices=["one", "groups"], default="one")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="the backbone's dtype (prompts stay float32, as prompttune trains them)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--time", type=int, default=0, help="also time this many steps per variant, round-robin, "
                    "without the profiler; prints the median ms per step and the ratios")
    ap.add_argument("--variants", nargs="+", default=["bare", "ours p-tuning-v2", "peft prefix"])
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/profile_deep_prompts.json"))
    args = ap.parse_args()
    path = model_path(args.model)
    from transformers import AutoConfig

    ids, attn = batch(AutoConfig.from_pretrained(path).vocab_size, args.batch_size, args.seq_len)
    results, steps = {}, {}
    for variant in args.variants:
        steps[variant] = build(variant, path, args.prefix, args.rows, ids, attn, getattr(torch, args.dtype))
        ops = profile(steps[variant])
        results[variant] = ops
        total = sum(o["self_cpu_ms"] for o in ops.values())
        print(f"\n### {variant}: {sum(o['calls'] for o in ops.values())} operator calls, {total:.1f} ms self CPU in all\n")
        print("| operator | calls | self CPU ms |\n|---|---|---|")
        for name, o in sorted(ops.items(), key=lambda kv: -kv[1]["self_cpu_ms"])[: args.top]:
            print(f"| {name} | {o['calls']} | {o['self_cpu_ms']:.2f} |")
    print("\n| operator | " + " | ".join(f"{v} calls | {v} self ms" for v in results) + " |")
    print("|---|" + "---|---|" * len(results))
    for op in WATCHED:
        cells = []
        for v in results:
            o = results[v].get(op, {"calls": 0, "self_cpu_ms": 0.0})
            cells += [str(o["calls"]), f"{o['self_cpu_ms']:.2f}"]
        print(f"| {op} | " + " | ".join(cells) + " |")
    print("| all operators | " + " | ".join(
        f"{sum(o['calls'] for o in r.values())} | {sum(o['self_cpu_ms'] for o in r.values()):.1f}" for r in results.values()) + " |")
    medians = time_steps(steps, args.time) if args.time else {}
    if medians:
        print("\n| variant | median ms per step | / bare | / peft prefix |\n|---|---|---|---|")
        for v, ms in medians.items():
            ratio = {d: f"{ms / medians[d]:.3f}" if d in medians else "–" for d in ("bare", "peft prefix")}
            print(f"| {v} | {ms:.2f} | {ratio['bare']} | {ratio['peft prefix']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "threads": torch.get_num_threads(),
                                          "median_ms": medians, "operators": results}, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

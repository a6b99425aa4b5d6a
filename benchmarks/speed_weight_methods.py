"""Speed of a LoRA / adapter / BitFit training step, as ratios to full fine-tuning and to plain PEFT LoRA.

    python benchmarks/speed_weight_methods.py [--reps 20] [--warmup 3] [--threads 1] [--device auto|cpu|cuda] [--note TEXT]
        [--model PATH_OR_SHAPE] [--dtype float32|bfloat16] [--quantization none|nf4] [--batch-size 16] [--seq-len N]
        [--rounds N] [--no-memory]

(`--model`, `--dtype`, `--quantization`, `--seq-len` and the peak memory column as in speed_soft_prompts.py;
the inference timings always load the backbone in float32, quantized as `--quantization` says. On a
quantized base full fine-tuning is refused (4-bit weights cannot train): its row and the ratios to it
are skipped, and PEFT LoRA's `from_pretrained` gets the same `BitsAndBytesConfig` as ours, the
classifier and pooler left unquantized as `quantization.skip_modules` leaves them.)

(The saved result was made with `python benchmarks/speed_weight_methods.py --reps 10 --threads 1
--note "..."` on a loaded 2-core machine; see the JSON's `note` and load averages.)

One fixed batch of 16 SST-2 sentences (8 per class, sampled with seed 0, the same batch as
benchmarks/speed_soft_prompts.py), max length 64, the embedded all-MiniLM-L6-v2 under a linear
classification head (AutoModelForSequenceClassification, 2 labels). Every variant is a separately
loaded copy of the model in train mode (dropout on, as in training). After `--warmup` untimed
rounds, `--reps` rounds are timed; within a round the variants run round-robin, in an order
rotated each round, so load from other processes hits all of them alike. Reported: the median
wall time of one step per variant (and its interquartile range), the ratios of medians, and the
median of the per-round ratios (num and den ran in the same round; this cancels slow load drift).

Threads: torch's default (printed; one per core). On a machine whose cores other processes are
using, pass `--threads 1` (see speed_soft_prompts.py: two OpenMP threads on two busy cores make
steps ~10x slower and bimodal).

Training variants; each step = forward + backward of cross-entropy on the logits + AdamW step
over the variant's trainable parameters:

- finetune: prompttune `method: finetune` (all weights + the new head): the denominator of
  "each method / full fine-tuning".
- ours lora: `method: lora, head: true, lora_rank: 8, lora_alpha: 16` (peft's
  `inject_adapter_in_model` on query/value; LoRA matrices + head train).
- ours adapter: `method: adapter, head: true, reduction_factor: 16` (hook-based Houlsby
  bottleneck adapters after attention and feed-forward; adapters + head train).
- ours bitfit: `method: bitfit, head: true` (every bias + head trains).
- peft lora: plain PEFT, `get_peft_model(AutoModelForSequenceClassification.from_pretrained(...,
  num_labels=2), LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query",
  "value"]))`; its trainable parameters (LoRA + the classifier, which PEFT's SEQ_CLS puts in
  `modules_to_save`). The input is tokenized exactly as prompttune's HeadClassifier does
  (`tokenizer(texts, truncation=True, max_length=64, padding=True, return_tensors="pt")`).

Inference variants (`--no-inference` skips them): forward only under `torch.no_grad()`, eval mode,
same batch. A LoRA task is built, given a non-zero update (a few AdamW steps, so merging has
something to fold), saved with `save_artifact`, and loaded with `load_artifact` twice: as saved
(`merge: false`, the LoRA layers stay) and with `merge: true` in its spec (B·A folded into the
weights, the LoRA layers removed). Compared with the bare model (`load_head_model`, no method).

Targets (from the issue): ours lora / peft lora ≤ 1.0; the ratios to finetune are reported.
Writes benchmarks/results/speed_weight_methods.json (per-variant medians, all samples, ratios,
machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import write_record  # noqa: E402
from speed_soft_prompts import (Variant, common_arguments, finish_measuring, measure, prepare, print_tables,  # noqa: E402
                                summarize, to, training_step, wanted)

ROOT = Path(__file__).resolve().parents[1]
MODEL = "all-MiniLM-L6-v2"
LABELS = ["0", "1"]
LORA = {"lora_rank": 8, "lora_alpha": 16}


def spec(model: str, method: str, max_length: int, options: dict | None = None):
    from prompttune import TaskSpec

    return TaskSpec(method=method, model=model, text_fields=["sentence"], labels=LABELS, max_length=max_length,
                    options=options or {})


def trainable(module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def build_training(args, examples: list[dict], device) -> tuple[list[Variant], dict, dict]:
    """The training variants, PEFT's errors (name: message) and the variants skipped (name: why)."""
    from prompttune.errors import ConfigError

    variants, errors, skipped = [], {}, {}
    model_dir, dtype, want = args.model_path, args.torch_dtype, wanted(args)

    def ours(name, sp):
        if not want(name):
            return None
        try:
            clf, step, batch = training_step(sp, examples, device, seed=args.seed, lr=1e-4, dtype=dtype,
                                             quantization=args.quantization)
        except ConfigError as e:  # a method that trains the base's weights, on a quantized base
            if args.quantization == "none":
                raise
            skipped[name] = f"refused on a {args.quantization} base ({e})"
            print(f"skipped {name}: {skipped[name]}", file=sys.stderr)
            return None
        n_trainable = sum(p.numel() for p in trainable(clf))
        variants.append(Variant(name, "train", step, batch["ids"].shape[1], n_trainable, "ours"))
        return clf

    def peft_lora(name):
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        from prompttune.backbones import load_tokenizer

        if not want(name):
            return None
        torch.manual_seed(args.seed)
        try:
            hf_logging.set_verbosity_error()
            quantized = {}
            if args.quantization != "none":  # the same BitsAndBytesConfig as ours, head and pooler unquantized
                from transformers import AutoConfig

                from prompttune.quantization import load_kwargs, skip_modules

                config = AutoConfig.from_pretrained(model_dir, num_labels=2)
                skip = skip_modules(AutoModelForSequenceClassification, config)
                quantized = load_kwargs(args.quantization, dtype, device, skip)
            model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2, dtype=dtype, **quantized)
            if quantized:  # the same after-load step as ours (weight layout kept, unquantized weights off the file map)
                from prompttune.quantization import prepare_quantized

                prepare_quantized(model)
            config = LoraConfig(task_type="SEQ_CLS", r=LORA["lora_rank"], lora_alpha=LORA["lora_alpha"],
                                target_modules=["query", "value"])
            pm = get_peft_model(model, config).to(device)
            pm.train()
            tok = load_tokenizer(model_dir)
            enc = tok([e["sentence"] for e in examples], truncation=True, max_length=args.max_length, padding=True,
                      return_tensors="pt")
            ids, attn = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            labels = torch.tensor([LABELS.index(str(e["label"])) for e in examples], device=device)
            params = trainable(pm)
            opt = torch.optim.AdamW(params, lr=1e-4)

            def step():
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(pm(input_ids=ids, attention_mask=attn).logits.float(), labels)
                loss.backward()
                opt.step()
                return loss

            step()  # fail here, at build time, rather than in the timed loop
            variants.append(Variant(name, "train", step, ids.shape[1], sum(p.numel() for p in params), "peft"))
            return pm, ids, attn
        except Exception as e:  # noqa: BLE001 - a PEFT failure is itself a finding, recorded verbatim
            errors[name] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
            return None

    ours("finetune", spec(model_dir, "finetune", args.max_length))
    ours("ours lora", spec(model_dir, "lora", args.max_length, {"head": True, **LORA}))
    ours("ours adapter", spec(model_dir, "adapter", args.max_length, {"head": True, "reduction_factor": 16}))
    ours("ours bitfit", spec(model_dir, "bitfit", args.max_length, {"head": True}))
    peft = peft_lora("peft lora")
    if peft is not None and args.only is None:  # same token ids as ours (HeadClassifier.collate), checked
        from prompttune import build_classifier

        ours_batch = build_classifier(spec(model_dir, "finetune", args.max_length))[0].collate(examples)
        if not torch.equal(ours_batch["ids"].to(device), peft[1]) or not torch.equal(ours_batch["attn"].to(device), peft[2]):
            print("warning: PEFT's batch differs from prompttune's", file=sys.stderr)
    return variants, errors, skipped


def build_inference(args, examples: list[dict], device) -> tuple[list[Variant], dict]:
    from prompttune import build_classifier, load_artifact, save_artifact
    from prompttune.backbones import load_head_model

    variants = []

    def timed(name, forward, width, n_params):
        @torch.no_grad()
        def step():
            return forward()

        variants.append(Variant(name, "inference", step, width, n_params, "inference"))

    # A LoRA task with a non-zero update, saved once, loaded unmerged and merged.
    torch.manual_seed(args.seed)
    model_dir = args.model_path
    sp = spec(model_dir, "lora", args.max_length, {"head": True, **LORA})
    quantized = {} if args.quantization == "none" else {"quantization": args.quantization, "device": device}
    clf, fp = build_classifier(sp, **quantized)
    batch = clf.collate(examples)
    opt = torch.optim.AdamW(trainable(clf), lr=1e-2)
    clf.train()
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(clf(batch).float(), batch["labels"]).backward()
        opt.step()
    clf.eval()
    tmp = tempfile.TemporaryDirectory(prefix="speed_weight_methods_")
    save_artifact(Path(tmp.name) / "lora", sp, clf, fp)
    merged_spec = spec(model_dir, "lora", args.max_length, {"head": True, **LORA, "merge": True})
    save_artifact(Path(tmp.name) / "lora_merged", merged_spec, clf, fp)
    unmerged, _ = load_artifact(Path(tmp.name) / "lora")
    merged, _ = load_artifact(Path(tmp.name) / "lora_merged")
    tmp.cleanup()
    with torch.no_grad():
        a, b = unmerged(batch), merged(batch)
    max_diff = (a - b).abs().max().item()
    n_lora = [sum(1 for n, _ in m.named_modules() if n.endswith("lora_A")) for m in (unmerged.model, merged.model)]

    bare = load_head_model(model_dir, 2, **quantized).eval()
    for m in (unmerged, merged, bare):
        m.to(device)
    batch = to(batch, device)
    ids, attn = batch["ids"], batch["attn"]
    width = ids.shape[1]
    timed("bare model (inference)", lambda: bare(input_ids=ids, attention_mask=attn).logits, width, 0)
    timed("ours lora unmerged (inference)", lambda: unmerged(batch), width, 0)
    timed("ours lora merged (inference)", lambda: merged(batch), width, 0)
    return variants, {"max_abs_logit_diff_merged_vs_unmerged": max_diff,
                      "lora_layers_unmerged": n_lora[0], "lora_layers_merged": n_lora[1]}


RATIOS = [  # (label, numerator, denominator, target or None)
    ("ours_lora / finetune", "ours lora", "finetune", None),
    ("ours_adapter / finetune", "ours adapter", "finetune", None),
    ("ours_bitfit / finetune", "ours bitfit", "finetune", None),
    ("peft_lora / finetune", "peft lora", "finetune", None),
    ("ours_lora / peft_lora", "ours lora", "peft lora", 1.0),
    ("inference: lora_unmerged / bare", "ours lora unmerged (inference)", "bare model (inference)", None),
    ("inference: lora_merged / bare", "ours lora merged (inference)", "bare model (inference)", None),
    ("inference: lora_merged / lora_unmerged", "ours lora merged (inference)", "ours lora unmerged (inference)", None),
]


def main() -> None:
    ap = common_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]), "speed_weight_methods.json")
    ap.add_argument("--no-inference", dest="inference", action="store_false",
                    help="skip the merged / unmerged / bare inference timings")
    args = ap.parse_args()

    device, load_before, examples = prepare(args)
    t0 = time.perf_counter()
    variants, errors, skipped = build_training(args, examples, device)
    memory = finish_measuring(args, variants, device)
    infer, merge_check = (build_inference(args, examples, device) if args.inference else ([], {}))
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    # Training and inference are timed in separate round-robins (each against its own kind).
    measure(variants, args.reps, args.warmup, device)
    if infer:
        measure(infer, args.reps, args.warmup, device)
    measure_s = time.perf_counter() - t0
    load_after = os.getloadavg()

    rows, ratios = summarize(variants + infer, RATIOS, errors)
    for name, mem in memory.items():
        rows[name]["memory"] = mem
    print_tables(args, device, load_before, load_after, rows, ratios, errors, skipped)
    if merge_check:
        print(f"\nmerge check: {merge_check}")

    write_record(args, load_before, load_after, libraries=("peft",), device=device, setup={
        "model": args.model, "model_path": args.model_path, "dtype": args.dtype, "quantization": args.quantization,
        "batch_size": args.batch_size,
        "max_length": args.max_length, "seq_len": args.seq_len, "lora": LORA, "adapter": {"kind": "houlsby", "reduction_factor": 16},
        "reps": args.reps, "warmup": args.warmup, "seed": args.seed, "sentences": [e["sentence"] for e in examples]},
        variants=rows, errors=errors, skipped=skipped, ratios=ratios, merge_check=merge_check,
        seconds={"build": round(build_s, 1), "measure": round(measure_s, 1)})


if __name__ == "__main__":
    main()

"""Speed of a prompt-tuning / P-tuning v2 training step, as ratios measured in one run on one batch.

    python benchmarks/speed_soft_prompts.py [--reps 20] [--warmup 3] [--device auto|cpu|cuda] [--note TEXT]
        [--model PATH_OR_SHAPE] [--dtype float32|bfloat16] [--quantization none|nf4] [--batch-size 16] [--seq-len N]
        [--rounds N] [--no-memory]

`--model` times any local model folder or a random shape (`model_shapes.py`: bert-base, bert-large...;
a shape's MLM head is its own, so no `--lm-head`); `--dtype bfloat16` loads every variant's frozen
backbone in bf16; `--quantization nf4` loads every variant's frozen backbone (bare, ours and PEFT's) with
its Linear weights in 4-bit NF4, through the same `BitsAndBytesConfig` (`prompttune.quantization.load_kwargs`:
double-quantized scales, computing in `--dtype`; a classification head and a pooler stay unquantized, as
`quantization.skip_modules` keeps them) and the same after-load step (`prepare_quantized`), so the bases are
quantized identically; a method that trains the base's own weights is refused on it and its row skipped.
A quantized model is quantized onto `--device` as it loads. `--seq-len` makes rows of about that many tokens. Peak memory per variant comes from
a fresh subprocess each (`bench_device.py` says what is measured on a GPU and on the CPU).

One fixed batch of 16 SST-2 sentences (8 per class, sampled with seed 0), max length 64, the
embedded all-MiniLM-L6-v2 with the fitted MLM head (runs/bench_few_shot/lm_head). Every variant is
a separately loaded copy of the same frozen backbone in train mode (dropout on, as in training),
so no variant's hooks or attention routing touch another's. After `--warmup` untimed rounds,
`--reps` rounds are timed; within a round the variants run round-robin, in an order rotated each
round, so load from other processes hits all of them alike. Reported: the median wall time of
one step per variant (and its interquartile range), the ratios of medians, and the median of the
per-round ratios (num and den ran back to back in each round; this cancels slow load drift).

Threads: torch's default (printed; one per core). On a machine whose cores other processes are
using, pass `--threads 1`: with two OpenMP threads on two busy cores every parallel op waits for a
descheduled thread and steps become ~10x slower and bimodal (seen: 3.2 s instead of 0.2 s).

Variants, verbalizer setting (template `{sentence} It was {mask}.`, words terrible/great,
loss = cross-entropy over the label words' log-probabilities at the mask):

- bare: the frozen model, forward + backward of that loss. Backward needs something that
  requires grad, so the word embeddings of the input are fed as `inputs_embeds` with
  `requires_grad`: the least any prompt method must pay (a full backward through every layer
  down to the input). No optimizer step (there is nothing to update).
- bare+20: the same with 20 ordinary tokens (literal words) in front of the sentence. A soft
  prompt makes the sequence 20 tokens longer, and attention/FFN cost grows with length; so
  ours/bare mixes "the method's overhead" with "a longer input", while ours/(bare+20) compares
  equal sequence lengths and isolates the implementation's overhead (hook, bind, optimizer).
- ours prompt-tuning: `{soft:20} {sentence} It was {mask}.` via `build_classifier`; one full
  training step = forward + backward + AdamW step over the 20 soft vectors.
- peft prompt-tuning: PEFT `PromptTuningConfig(num_virtual_tokens=20)` with task type
  FEATURE_EXTRACTION (PEFT has no masked-LM task type: `task_type=None` raises `KeyError: None`
  in `get_peft_model`), on the same backbone, same batch, forward + backward + AdamW step. PEFT
  puts the virtual tokens first, so the mask index shifts by 20. Two forms:
  - `peft prompt-tuning` (the like-for-like one, used for the ratio): PEFT wraps the encoder
    (`model.bert`) and our MLM head is applied at the mask position only, as prompttune does;
  - `peft prompt-tuning (MLM)`: PEFT wraps the whole `BertForMaskedLM`, which computes
    vocabulary logits at every position, and the label words are read at the mask; this is
    what the straightforward PEFT setup costs (informational).
- ours p-tuning-v2: 20 key/value prefixes per layer (`prompt_length: 20`), same template as bare
  (the prefix adds no tokens to the input), forward + backward + AdamW.
- peft prefix: PEFT `PrefixTuningConfig(num_virtual_tokens=20, prefix_projection=False)` (the
  P-tuning v2 form), FEATURE_EXTRACTION on `model.bert` + our head at the mask.

Head setting (P-tuning v2's NLU form: a linear head on [CLS] via AutoModelForSequenceClassification,
the sentences alone, loss = cross-entropy of the logits):

- bare head: frozen encoder, classifier trainable, `inputs_embeds` requiring grad; forward + backward.
- ours p-tuning-v2 head: `options {"head": true, "prompt_length": 20}`; forward + backward + AdamW
  over prefix + classifier.
- peft prefix head: `PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=20,
  prefix_projection=False)`; forward + backward + AdamW over prefix + classifier.

A PEFT variant that fails records its exact error in the JSON and the table instead of a time.

Targets (from the issue): ours / bare ≤ 1.10; ours / PEFT ≤ 1.0. Writes
benchmarks/results/speed_soft_prompts.json (per-variant medians, all samples, ratios, machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_device import (DTYPES, add_device_arguments, device_name, memory_in_subprocesses,  # noqa: E402
                          report_memory_and_exit, resolve_device, slug, use_tf32)
from model_shapes import model_path  # noqa: E402
from records import write_record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "all-MiniLM-L6-v2"
TEMPLATE = "{sentence} It was {mask}."
VERBALIZER = {"0": ["terrible"], "1": ["great"]}
N_SOFT = 20
# 20 ordinary words, one token each in the MiniLM (BERT uncased) vocabulary: bare+20's extra tokens.
FILLER = "this is a short movie review from the web and here is what the writer of it had to say"


def spec(model: str, method: str, template: str | None, head: str | None, max_length: int, options: dict | None = None):
    from prompttune import TaskSpec

    verbalizer = VERBALIZER if template is not None else None
    return TaskSpec(method=method, model=model, text_fields=["sentence"], labels=["0", "1"], template=template,
                    verbalizer=verbalizer, lm_head=head if template is not None else None,
                    max_length=max_length, options=options or {})


def to(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def pick_batch(data: str, n: int, seq_len: int | None = None) -> list[dict]:
    """n SST-2 rows, half per class (seed 0). With `seq_len`, row i's sentence is continued with further
    sentences up to 0.55–0.85 × seq_len words (≈ 0.65–1.0 × seq_len tokens), so a batch is about seq_len
    wide and padded like real text (cut at seq_len tokens: `--seq-len` also sets `--max-length`)."""
    import random

    from prompttune.data import load_examples

    examples = load_examples(data, ["sentence"], "label")
    rng = random.Random(0)
    per_class = {lab: [e for e in examples if e["label"] == lab] for lab in ("0", "1")}
    batch = rng.sample(per_class["0"], n // 2) + rng.sample(per_class["1"], n - n // 2)
    rng.shuffle(batch)
    if seq_len:
        sentences = [e["sentence"] for e in examples]
        for i, ex in enumerate(batch):
            words = ex["sentence"].split()
            target = int(seq_len * (0.55 + 0.3 * i / max(1, n - 1)))
            while len(words) < target:
                words += rng.choice(sentences).split()
            batch[i] = {**ex, "sentence": " ".join(words[:target])}
    return batch


# --- the variants: each is built once and returns a `step()` closure ------------------------


@dataclass
class Variant:
    """One thing timed: `step()` runs one training step (or bare forward + backward)."""

    name: str
    setting: str  # "verbalizer" or "head"
    step: Callable[[], object]
    seq_len: int
    trainable: int
    kind: str  # "bare", "ours" or "peft"
    times: list[float] = field(default_factory=list)


def training_step(sp, examples: list[dict], device, *, seed: int, lr: float, dtype: torch.dtype = torch.float32,
                  quantization: str = "none"):
    """Our task built from spec `sp` in train mode and one AdamW step on `examples` as one batch:
    (classifier, step, batch). The step is what every "ours" variant times. With a `dtype` other than
    float32 the frozen backbone is loaded in it and the method attached over it (what it trains stays as
    the method makes it); with a `quantization` other than "none" it is loaded quantized onto `device`
    (`build_classifier` raises `ConfigError` for a method that trains the base's weights)."""
    from prompttune import build_classifier
    from prompttune.backbones import load_backbone

    torch.manual_seed(seed)
    if quantization != "none":
        clf, _ = build_classifier(sp, dtype=dtype, quantization=quantization, device=device)
    else:
        backbone = None if dtype == torch.float32 else load_backbone(sp.model, lm_head=sp.lm_head, dtype=dtype)
        clf, _ = build_classifier(sp, backbone)
    clf.to(device).train()
    batch = to(clf.collate(examples), device)
    opt = torch.optim.AdamW([p for p in clf.parameters() if p.requires_grad], lr=lr)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(clf(batch).float(), batch["labels"])
        loss.backward()
        opt.step()
        return loss

    return clf, step, batch


def word_loss(verbalizer, logp: torch.Tensor, word_ids: list[list[int]], labels: torch.Tensor) -> torch.Tensor:
    first = torch.tensor([w[0] for w in word_ids], device=logp.device)  # single-token words (checked)
    return F.cross_entropy(verbalizer.class_scores(logp[:, first]), labels)


def build_variants(args, examples: list[dict], device) -> tuple[list[Variant], dict]:
    from prompttune import build_classifier
    from prompttune.backbones import lm_head_module, load_backbone, load_head_model
    from prompttune.parameters import count_parameters, freeze

    variants, errors = [], {}
    head_dir, model_dir, dtype = args.lm_head, args.model_path, args.torch_dtype
    want, quantized = wanted(args), quantized_loading(args, device)

    def ours(name, setting, sp):
        if not want(name):
            return None
        clf, step, batch = training_step(sp, examples, device, seed=args.seed, lr=1e-3, dtype=dtype,
                                         quantization=args.quantization)
        width = batch["ids1" if "ids1" in batch else "ids"].shape[1]
        variants.append(Variant(name, setting, step, width, count_parameters(clf)[0], "ours"))
        return clf

    # Reference scorer pieces (template encoding, label words, verbalizer) from a zero-shot classifier.
    zs, _ = build_classifier(spec(model_dir, "zero-shot", TEMPLATE, head_dir, args.max_length))
    word_ids = zs.scorer.word_ids
    if any(len(w) != 1 for w in word_ids):
        raise SystemExit(f"label words must be single tokens for this benchmark, got {word_ids}")
    verbalizer = zs.verbalizer
    plain = to(zs.collate(examples), device)
    zs20, _ = build_classifier(spec(model_dir, "zero-shot", FILLER + " " + TEMPLATE, head_dir, args.max_length))
    padded = to(zs20.collate(examples), device)
    del zs, zs20

    def bare(name, batch):
        if not want(name):
            return
        torch.manual_seed(args.seed)
        model = load_backbone(model_dir, lm_head=head_dir, dtype=dtype, **quantized).model.to(device)
        freeze(model)
        model.train()
        emb, head = model.get_input_embeddings(), lm_head_module(model)
        ids, attn, pos, labels = batch["ids1"], batch["attn1"], batch["pos1"][:, 0], batch["labels"]
        rows = torch.arange(ids.shape[0], device=device)

        def step():
            x = emb(ids).detach().requires_grad_(True)
            hidden = model.base_model(inputs_embeds=x, attention_mask=attn).last_hidden_state
            logp = F.log_softmax(head(hidden[rows, pos]).float(), dim=-1)
            loss = word_loss(verbalizer, logp, word_ids, labels)
            loss.backward()
            return loss

        variants.append(Variant(name, "verbalizer", step, ids.shape[1], 0, "bare"))

    def peft_verbalizer(name, config, whole_mlm: bool = False):
        from peft import get_peft_model

        if not want(name):
            return
        torch.manual_seed(args.seed)
        try:
            model = load_backbone(model_dir, lm_head=head_dir, dtype=dtype, **quantized).model.to(device)  # the head too, not only what PEFT wraps
            freeze(model)
            head = lm_head_module(model)
            pm = get_peft_model(model if whole_mlm else model.base_model, config).to(device)
            pm.train()
            head.train()
            params = [p for p in pm.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=1e-3)
            ids, attn, labels = plain["ids1"], plain["attn1"], plain["labels"]
            # Virtual tokens are prepended (prompt tuning) or live in the cache (prefix): mask index shifts only for the former.
            shift = config.num_virtual_tokens if config.peft_type.value == "PROMPT_TUNING" else 0
            pos = plain["pos1"][:, 0] + shift
            rows = torch.arange(ids.shape[0], device=device)

            def step():
                opt.zero_grad(set_to_none=True)
                out = pm(input_ids=ids, attention_mask=attn)
                if whole_mlm:
                    logp = F.log_softmax(out.logits[rows, pos].float(), dim=-1)
                else:
                    logp = F.log_softmax(head(out.last_hidden_state[rows, pos]).float(), dim=-1)
                loss = word_loss(verbalizer, logp, word_ids, labels)
                loss.backward()
                opt.step()
                return loss

            step()  # fail here, at build time, rather than in the timed loop
            variants.append(Variant(name, "verbalizer", step, ids.shape[1] + shift, sum(p.numel() for p in params), "peft"))
        except Exception as e:  # noqa: BLE001 - a PEFT failure is itself a finding, recorded verbatim
            errors[name] = f"{type(e).__name__}: {e}"
            traceback.print_exc()

    def bare_head(name):
        if not want(name):
            return
        torch.manual_seed(args.seed)
        model = load_head_model(model_dir, 2, dtype=dtype, **quantized).to(device)
        freeze(model.base_model)
        model.train()
        emb = model.get_input_embeddings()
        batch = heads_batch
        ids, attn, labels = batch["ids"], batch["attn"], batch["labels"]

        def step():
            model.zero_grad(set_to_none=True)
            x = emb(ids).detach().requires_grad_(True)
            loss = F.cross_entropy(model(inputs_embeds=x, attention_mask=attn).logits.float(), labels)
            loss.backward()
            return loss

        variants.append(Variant(name, "head", step, ids.shape[1], count_parameters(model)[0], "bare"))

    def peft_head(name, config):
        from peft import get_peft_model

        if not want(name):
            return
        torch.manual_seed(args.seed)
        try:
            pm = get_peft_model(load_head_model(model_dir, 2, dtype=dtype, **quantized), config).to(device)
            pm.train()
            params = [p for p in pm.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=1e-3)
            ids, attn, labels = heads_batch["ids"], heads_batch["attn"], heads_batch["labels"]

            def step():
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(pm(input_ids=ids, attention_mask=attn).logits.float(), labels)
                loss.backward()
                opt.step()
                return loss

            step()
            variants.append(Variant(name, "head", step, ids.shape[1], sum(p.numel() for p in params), "peft"))
        except Exception as e:  # noqa: BLE001
            errors[name] = f"{type(e).__name__}: {e}"
            traceback.print_exc()

    from peft import PrefixTuningConfig, PromptTuningConfig

    sel = set(args.settings)
    if "verbalizer" in sel:
        bare("bare", plain)
        bare("bare+20", padded)
        ours("ours prompt-tuning", "verbalizer",
             spec(model_dir, "prompt-tuning", f"{{soft:{N_SOFT}}} " + TEMPLATE, head_dir, args.max_length))
        peft_verbalizer("peft prompt-tuning", PromptTuningConfig(num_virtual_tokens=N_SOFT, task_type="FEATURE_EXTRACTION"))
        if args.peft_mlm:
            peft_verbalizer("peft prompt-tuning (MLM)",
                            PromptTuningConfig(num_virtual_tokens=N_SOFT, task_type="FEATURE_EXTRACTION"), whole_mlm=True)
        ours("ours p-tuning-v2", "verbalizer",
             spec(model_dir, "p-tuning-v2", TEMPLATE, head_dir, args.max_length, {"prompt_length": N_SOFT}))
        peft_verbalizer("peft prefix", PrefixTuningConfig(num_virtual_tokens=N_SOFT, prefix_projection=False,
                                                          task_type="FEATURE_EXTRACTION"))
    if "head" in sel:
        head_spec = spec(model_dir, "p-tuning-v2", None, head_dir, args.max_length, {"head": True, "prompt_length": N_SOFT})
        ours("ours p-tuning-v2 head", "head", head_spec)
        heads_batch = to(build_classifier(head_spec)[0].collate(examples), device)
        bare_head("bare head")
        peft_head("peft prefix head", PrefixTuningConfig(num_virtual_tokens=N_SOFT, prefix_projection=False, task_type="SEQ_CLS"))

    by = {v.name: v for v in variants}
    if "bare+20" in by and "ours prompt-tuning" in by and by["bare+20"].seq_len != by["ours prompt-tuning"].seq_len:
        print(f"warning: bare+20 has {by['bare+20'].seq_len} tokens, prompt-tuning {by['ours prompt-tuning'].seq_len}",
              file=sys.stderr)
    return variants, errors


def quantized_loading(args, device) -> dict:
    """The loader arguments (`load_backbone`, `load_head_model`) that quantize a base as `--quantization`
    says, onto `device` ({} for none)."""
    return {} if args.quantization == "none" else {"quantization": args.quantization, "device": device}


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(variants: list[Variant], reps: int, warmup: int, device) -> None:
    torch.manual_seed(0)
    n = len(variants)
    for r in range(warmup + reps):
        order = variants[r % n:] + variants[: r % n]  # rotate: no variant always runs right after another
        for v in order:
            sync(device)
            t0 = time.perf_counter()
            v.step()
            sync(device)
            if r >= warmup:
                v.times.append(time.perf_counter() - t0)


RATIOS = [  # (label, numerator, denominator, target)
    ("ours_prompt_tuning / bare", "ours prompt-tuning", "bare", 1.10),
    ("ours_prompt_tuning / bare_plus_20_tokens", "ours prompt-tuning", "bare+20", 1.10),
    ("ours_prompt_tuning / peft_prompt_tuning", "ours prompt-tuning", "peft prompt-tuning", 1.0),
    ("ours_prompt_tuning / peft_prompt_tuning_mlm_logits", "ours prompt-tuning", "peft prompt-tuning (MLM)", 1.0),
    ("ours_ptv2 / bare", "ours p-tuning-v2", "bare", 1.10),
    ("ours_ptv2 / peft_prefix", "ours p-tuning-v2", "peft prefix", 1.0),
    ("ours_ptv2_head / bare_head", "ours p-tuning-v2 head", "bare head", 1.10),
    ("ours_ptv2_head / peft_prefix_head", "ours p-tuning-v2 head", "peft prefix head", 1.0),
]


def quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def common_arguments(ap: argparse.ArgumentParser, out_name: str) -> argparse.ArgumentParser:
    """The options every speed benchmark here takes (model, batch, repetitions, device, dtype, output)."""
    ap.add_argument("--model", default=MODEL, help="a local model folder, a built-in name, or a random shape "
                    "built from a config (benchmarks/model_shapes.py: bert-base, bert-large, ...)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/sst2/train.tsv"))
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=None,
                    help="rows of about this many tokens (SST-2 sentences joined; also sets --max-length)")
    ap.add_argument("--reps", "--rounds", dest="reps", type=int, default=20,
                    help="timed rounds (each round runs every variant once)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    ap.add_argument("--seed", type=int, default=0)
    add_device_arguments(ap)
    ap.add_argument("--quantization", choices=["none", "nf4"], default="none",
                    help="the frozen backbone's weights: unquantized, or 4-bit NF4 (bitsandbytes, QLoRA's setting); "
                    "methods that train the base's weights are skipped on nf4")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave torch's default)")
    ap.add_argument("--note", default="", help="free text stored in the JSON (e.g. 'machine was loaded')")
    ap.add_argument("--out", default=None, help=f"the JSON record (default: benchmarks/results/{out_name}, with the "
                    "device, model and dtype in the name unless it is the CPU, the default model and float32)")
    ap.set_defaults(out_name=out_name)
    return ap


def prepare(args) -> tuple[torch.device, tuple[float, float, float], list[dict]]:
    """Threads, device, dtype and model as asked (set on `args`), the load average before, and the fixed batch."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quantization != "none":
        from prompttune.errors import ConfigError
        from prompttune.quantization import check_quantization

        try:
            check_quantization(args.quantization)
        except ConfigError as e:
            raise SystemExit(f"--quantization: {e}") from None
    device = resolve_device(args.device)
    use_tf32(device)
    args.model_path, args.torch_dtype, args.device_name = model_path(args.model), DTYPES[args.dtype], device_name(device)
    if args.seq_len:
        args.max_length = args.seq_len
    if args.out is None:
        stem = args.out_name.removesuffix(".json")
        if device.type != "cpu" or args.model != MODEL or args.dtype != "float32" or args.quantization != "none":
            stem += f"_{slug(args.device_name)}_{slug(Path(args.model).name)}_{args.dtype}"
        if args.quantization != "none":
            stem += f"_{args.quantization}"
        args.out = str(ROOT / "benchmarks/results" / f"{stem}.json")
    return device, os.getloadavg(), pick_batch(args.data, args.batch_size, args.seq_len)


def wanted(args):
    """Which variants to build: all, or the one a memory subprocess measures (`--only`)."""
    return lambda name: args.only is None or args.only == name


def finish_measuring(args, variants: list[Variant], device) -> dict:
    """In a `--only` subprocess: report that variant's memory and exit. Otherwise, with `--memory`, each
    variant's peak memory from fresh subprocesses ({} without)."""
    if args.only is not None:
        report_memory_and_exit(variants, device)
    return memory_in_subprocesses([v.name for v in variants]) if args.memory else {}


def summarize(variants: list, ratio_specs, errors: dict) -> tuple[dict, dict]:
    """Per-variant medians/IQRs and the (label, num, den, target) ratios; target None = no target."""
    rows, medians = {}, {}
    for v in variants:
        med = statistics.median(v.times)
        q1, q3 = quartiles(v.times)
        medians[v.name] = med
        rows[v.name] = {"setting": v.setting, "kind": v.kind, "median_ms": round(med * 1e3, 2),
                        "q1_ms": round(q1 * 1e3, 2), "q3_ms": round(q3 * 1e3, 2), "reps": len(v.times),
                        "seq_len": v.seq_len, "trainable_parameters": v.trainable,
                        "times_ms": [round(t * 1e3, 2) for t in v.times]}
    by = {v.name: v for v in variants}
    ratios = {}
    for label, num, den, target in ratio_specs:
        if num in medians and den in medians:
            r = medians[num] / medians[den]
            # Both ran in every round, one right after the other: the per-round ratio cancels slow load drift.
            paired = statistics.median(a / b for a, b in zip(by[num].times, by[den].times, strict=True))
            ratios[label] = {"ratio": round(r, 3), "paired_ratio": round(paired, 3), "target": target,
                             "meets_target": None if target is None else r <= target}
        elif num in medians and den in errors:
            ratios[label] = {"ratio": None, "target": target, "error": f"{den}: {errors[den]}"}
    return rows, ratios


def print_tables(args, device, load_before, load_after, rows: dict, ratios: dict, errors: dict,
                 skipped: dict | None = None) -> None:
    """The run's conditions, the per-variant table and the ratio table, in markdown; `skipped`: variants
    not run (name: why), e.g. full fine-tuning on a quantized base."""
    import peft
    import transformers

    print(f"\ntorch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
          f"device {device} ({args.device_name}), model {args.model}, backbone {args.dtype}, quantization "
          f"{args.quantization}, torch threads "
          f"{torch.get_num_threads()}, {args.reps} reps after {args.warmup} warm-up rounds, batch {args.batch_size}, "
          f"max length {args.max_length}; load average {load_before[0]:.2f} -> {load_after[0]:.2f}\n")
    print("| variant | setting | tokens | trainable params | median ms/step | IQR ms | reps | peak MiB | step MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        mem = r.get("memory", {})
        peak, grew = (f"{mem['peak_mib']:.0f}", f"{mem['step_mib']:.0f}") if "peak_mib" in mem else ("–", "–")
        print(f"| {name} | {r['setting']} | {r['seq_len']} | {r['trainable_parameters']:,} | {r['median_ms']:.1f} | "
              f"{r['q1_ms']:.1f}–{r['q3_ms']:.1f} | {r['reps']} | {peak} | {grew} |")
    for name, err in errors.items():
        print(f"| {name} | – | – | – | error: `{err}` | – | – | – | – |")
    for name, why in (skipped or {}).items():
        print(f"| {name} | – | – | – | skipped: {why} | – | – | – | – |")
    what = next((r["memory"]["what"] for r in rows.values() if "what" in r.get("memory", {})), None)
    if what:
        print(f"\npeak MiB: {what}, one step after a warm-up step, each variant alone in a fresh process; "
              "step MiB: that peak minus the memory held just before the step")
    print("\n| ratio | of medians | median per-round ratio | target | meets |")
    print("|---|---|---|---|---|")
    for label, r in ratios.items():
        target = "–" if r["target"] is None else f"≤ {r['target']:.2f}"
        if r["ratio"] is None:
            print(f"| {label} | error: `{r['error']}` | – | {target} | |")
            continue
        meets = "–" if r["meets_target"] is None else ("yes" if r["meets_target"] else "**no**")
        print(f"| {label} | {r['ratio']:.3f} | {r['paired_ratio']:.3f} | {target} | {meets} |")


def main() -> None:
    ap = common_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]), "speed_soft_prompts.json")
    ap.add_argument("--lm-head", default=None, help="fitted MLM head directory (default: runs/bench_few_shot/lm_head "
                    "for the default model, whose checkpoint has none; the model's own head otherwise)")
    ap.add_argument("--settings", nargs="+", default=["verbalizer", "head"], choices=["verbalizer", "head"])
    ap.add_argument("--no-peft-mlm", dest="peft_mlm", action="store_false",
                    help="skip PEFT prompt tuning on the whole masked LM (vocabulary logits at every position)")
    args = ap.parse_args()
    if args.lm_head is None and args.model == MODEL:
        args.lm_head = str(ROOT / "runs/bench_few_shot/lm_head")

    device, load_before, examples = prepare(args)
    t0 = time.perf_counter()
    variants, errors = build_variants(args, examples, device)
    build_s = time.perf_counter() - t0
    memory = finish_measuring(args, variants, device)
    t0 = time.perf_counter()
    measure(variants, args.reps, args.warmup, device)
    measure_s = time.perf_counter() - t0
    load_after = os.getloadavg()

    rows, ratios = summarize(variants, RATIOS, errors)
    for name, mem in memory.items():
        rows[name]["memory"] = mem
    print_tables(args, device, load_before, load_after, rows, ratios, errors)

    write_record(args, load_before, load_after, libraries=("peft",), device=device, setup={
        "model": args.model, "model_path": args.model_path, "dtype": args.dtype, "quantization": args.quantization,
        "lm_head": args.lm_head,
        "batch_size": args.batch_size, "max_length": args.max_length, "seq_len": args.seq_len, "template": TEMPLATE,
        "verbalizer": VERBALIZER, "soft_tokens": N_SOFT, "filler_for_bare_plus_20": FILLER,
        "reps": args.reps, "warmup": args.warmup, "seed": args.seed, "sentences": [e["sentence"] for e in examples]},
        variants=rows, errors=errors, ratios=ratios,
        seconds={"build": round(build_s, 1), "measure": round(measure_s, 1)})


if __name__ == "__main__":
    main()

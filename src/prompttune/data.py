"""Task data: reading `.tsv`, `.csv`, `.json`, `.jsonl` files and saved Hugging Face datasets,
inputs given as strings (`--text`), and few-shot sampling.

An example is a plain dict of column → value; the label sits under "label" (renamed from the
configured label column), text fields keep their names.

Every error about a row says where the row is. In a text file that is `FILE:LINE`, the physical
line where the row starts, counted from 1 (a TSV/CSV header is line 1; blank lines count), so an
editor jumps to it. Where there are no lines to count, rows are counted from 1: `FILE, item N` for
the N-th object of a JSON array, `DIR, row N` for a saved dataset.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import random
import re
import unicodedata
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

from .errors import DataError, PromptTuneError
from .verbalizers import label_key


class Row(NamedTuple):
    """One row of a data file and where it is, for error messages."""

    values: dict
    where: str
    """E.g. 'data/train.tsv:8' (the row's first line), 'data/train.json, item 3', 'data/hf, row 3'."""


def read_utf8(path: str | Path, error: type[PromptTuneError] = DataError) -> str:
    """The text of a UTF-8 file (a leading byte-order mark is dropped).

    Raises `error` naming the file, and for bytes that are not UTF-8 the line they are on.

    Example:
        >>> read_utf8("latin1.tsv")
        DataError: latin1.tsv:3: not UTF-8 text (byte 0xe9); re-encode the file as UTF-8, e.g. from Latin-1: ...
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise error(f"cannot read {str(path)!r}: {e.strerror}") from None
    return decode_utf8(data, str(path), error, fixed=str(path.with_suffix(".utf8" + path.suffix)))


def decode_utf8(data: bytes, name: str, error: type[PromptTuneError] = DataError, *, fixed: str = "fixed.txt") -> str:
    """`data` (the bytes of the file or stream `name`) as text, a leading byte-order mark dropped.

    Raises `error` naming `name` and the line of the first byte that is not UTF-8, with the command
    that re-encodes it (into `fixed`).
    """
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise error(f"{name}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); re-encode the file as UTF-8, "
                    f"e.g. from Latin-1: iconv -f latin1 -t utf-8 {name} > {fixed}") from None


def read_rows(path: str | Path) -> list[Row]:
    """All rows of a data file (or saved `datasets` directory), each with where it is.

    A `.json` file is a JSON array of objects or JSON lines (one object per line), told apart by its
    first character; a `.jsonl` file is JSON lines. Raises `DataError` for a file that does not exist,
    is not UTF-8, or is malformed (a TSV/CSV row whose cells do not match the header, a line that
    is not a JSON object), naming the file and the line.

    Example:
        >>> rows = read_rows("../shared/data/sst2/train.tsv")
        >>> sorted(rows[0].values), rows[0].where
        (['label', 'sentence'], '../shared/data/sst2/train.tsv:2')
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {str(path)!r} does not exist")
    if path.is_dir():
        return _read_hf_dataset(path)
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv"):
        return _read_delimited(path, read_utf8(path), tsv=suffix == ".tsv")
    if suffix == ".jsonl":
        return _read_json_lines(path, read_utf8(path))
    if suffix == ".json":
        return _read_json(path, read_utf8(path))
    raise DataError(f"cannot read {str(path)!r}: expected a .tsv, .csv, .json or .jsonl file or a saved Hugging Face "
                    "dataset directory")


def _read_delimited(path: Path, text: str, *, tsv: bool) -> list[Row]:
    """Rows of a TSV (GLUE style: no quoting, a sentence may start with a quote character) or CSV
    (quoted cells) file; every row must have one cell per header column, and a CSV quote must close."""
    csv.field_size_limit(1 << 24)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if tsv else ",",
                        quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
    name, header, rows, line, start = str(path), None, [], 1, 1
    try:
        for cells in reader:
            start, line = line, reader.line_num + 1  # the row's first line, the next row's
            where = f"{name}:{start}"
            if not cells:  # a blank line
                continue
            if header is None:
                header = _header(cells, where)
            elif len(cells) != len(header):
                raise DataError(f"{where}: the row has {len(cells)} cell(s), the header has {len(header)} – "
                                + _cell_count_hint(len(cells) < len(header), tsv))
            else:
                rows.append(Row(dict(zip(header, cells)), where))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: not valid {'TSV' if tsv else 'CSV'} ({e})") from None
    if not tsv and reader.line_num > start and _quote_left_open(text, start):
        raise DataError(f"{path}:{start}: a double quote opened in this row is never closed, so the rest of the file "
                        'became one cell; close it, or write a quote inside a quoted cell as ""')
    return rows


def _quote_left_open(text: str, line: int) -> bool:
    """Whether the CSV row starting at `line` runs to the end of `text` inside a double quote (the
    csv module, not strict, reads all of it into one cell)."""
    rest = "".join(list(io.StringIO(text, newline=""))[line - 1:])
    try:
        list(csv.reader(io.StringIO(rest, newline=""), strict=True))
    except csv.Error as e:
        return "unexpected end of data" in str(e)
    return False


def _header(cells: list[str], where: str) -> list[str]:
    """The column names of a TSV/CSV header line; a name given twice is an error."""
    twice = sorted({c for c in cells if cells.count(c) > 1})
    if twice:
        raise DataError(f"{where}: the header names column(s) {twice} more than once")
    return cells


def _cell_count_hint(fewer: bool, tsv: bool) -> str:
    """The likely cause of a row with too few or too many cells."""
    if tsv:
        return "a missing tab?" if fewer else "a tab inside a text?"
    return "a missing comma?" if fewer else "a comma inside a text that is not in double quotes?"


def _read_json(path: Path, text: str) -> list[Row]:
    """A `.json` file: a JSON array of objects (it starts with '['), else JSON lines."""
    if text.lstrip().startswith("["):
        return _read_json_array(path, text)
    if text.strip().count("\n") and _is_one_json_object(text):
        raise DataError(f"{path}: the file is one JSON object; expected a JSON array of objects ([{{...}}, {{...}}]) "
                        "or one object per line (JSON lines)")
    return _read_json_lines(path, text)


def _is_one_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


def parse_json(text: str, where: str, *, line: int | None = None):
    """`json.loads(text)`, with every way JSON text can be refused as one `DataError` naming `where`
    (`FILE:LINE` from the decoder's line unless `line` is given): bad syntax, numbers of more than
    4,300 digits (Python's limit), nesting deeper than Python's recursion limit."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}:{line or e.lineno}: not valid JSON ({e.msg})") from None
    except ValueError as e:
        raise DataError(f"{where}{f':{line}' if line else ''}: not valid JSON ({e})") from None
    except RecursionError:
        raise DataError(f"{where}{f':{line}' if line else ''}: JSON nested too deeply to read") from None


def _read_json_array(path: Path, text: str) -> list[Row]:
    items = parse_json(text, str(path))
    return [Row(_json_object(item, f"{path}, item {n}"), f"{path}, item {n}") for n, item in enumerate(items, 1)]


def _read_json_lines(path: Path, text: str) -> list[Row]:
    rows = []
    for n, line in enumerate(io.StringIO(text, newline=None), 1):
        if line.strip():
            value = parse_json(line, str(path), line=n)
            rows.append(Row(_json_object(value, f"{path}:{n}"), f"{path}:{n}"))
    return rows


_JSON_KINDS = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def _json_kind(value) -> str:
    """What a JSON value is, in words: 'a list', 'a string', ..."""
    return _JSON_KINDS.get(type(value), type(value).__name__)


def _json_object(value, where: str) -> dict:
    """`value` if it is a JSON object (a row), else a `DataError` naming what it is."""
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected a JSON object, got {_json_kind(value)}")
    return value


def _read_hf_dataset(path: Path) -> list[Row]:
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError:
        raise DataError(f"{str(path)!r} is a directory; reading saved datasets needs `pip install datasets`") from None
    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"{str(path)!r} is not a saved Hugging Face dataset ({' '.join(str(e).split())}); a data path "
                        "is a .tsv, .csv, .json or .jsonl file or a directory written by Dataset.save_to_disk") from None
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise DataError(f"{str(path)!r} holds splits {list(ds)}; point at one split's directory")
        ds = ds["train"]
    return [Row(values, f"{path}, row {n}") for n, values in enumerate(ds.to_list(), 1)]


def load_examples(path: str | Path, text_fields: list[str], label_field: str | None = "label", *,
                  labels: list[str] | None = None) -> list[dict]:
    """Examples with the text fields and (if `label_field`) a "label", every row checked.

    Raises `DataError` naming the file and the row's line for a missing column, a row whose text
    fields are all empty, an empty label, and (when `labels` is given) a label not among `labels`.

    Example:
        >>> load_examples("train.tsv", ["sentence"], "label", labels=["0", "1"])[0]
        {'sentence': 'a gripping film', 'label': '1'}
        >>> load_examples("bad.tsv", ["sentence"], "label", labels=["0", "1"])
        DataError: bad.tsv:7: label '2' is not one of the task's labels ['0', '1']
    """
    return examples_from_rows(read_rows(path), str(path), text_fields, label_field, labels=labels)


def examples_from_rows(rows: list[Row], path: str, text_fields: list[str], label_field: str | None = "label", *,
                       labels: list[str] | None = None) -> list[dict]:
    """`load_examples` of rows already read (`read_rows(path)`); the same checks and errors.

    A text column may hold a chat conversation (a list of {"role", "content"} messages, as in chat
    `messages` data): the field's text is the last user turn, the turns before it go under
    `HISTORY`, and an assistant reply at the end is the label (see `conversation`); such rows need
    no label column."""
    if not rows:
        raise DataError(f"data file {path!r} has no rows")
    chats = any(isinstance(rows[0].values.get(f), list) for f in text_fields)
    wanted = list(text_fields) + ([label_field] if label_field and not chats else [])
    missing = [c for c in wanted if c not in rows[0].values]
    if missing:
        raise DataError(f"data file {path!r} has no column(s) {missing}; its columns are {list(rows[0].values)}")
    return [_example(row, text_fields, label_field, labels, wanted) for row in rows]


HISTORY = "history"
"""The example key that holds a conversation's turns before its last user turn (see `conversation`)."""


def _example(row: Row, text_fields: list[str], label_field: str | None, labels: list[str] | None,
             wanted: list[str]) -> dict:
    """One row as an example (see `load_examples`); `wanted` = the columns every row must have."""
    lacking = [c for c in wanted if c not in row.values]
    if lacking:  # JSON rows need not share the first row's keys
        raise DataError(f"{row.where}: the row has no column(s) {lacking}")
    example, reply, chat = _read_fields(row.values, text_fields, row.where, "column")
    if not any(has_text(example[f]) for f in text_fields):
        raise DataError(f"{row.where}: the text column(s) {list(text_fields)} are empty; fill in the row or remove it")
    if label_field and label_field in row.values:
        example["label"] = _label(row.values[label_field], row.where, label_field, labels)
    elif chat and (label_field or reply is not None):  # the reply is the target (or, to generate from, the reference)
        if reply is None:
            raise DataError(f"{row.where}: the conversation ends with a user turn; a training or evaluation row needs "
                            "the assistant's reply as its last message")
        if not reply.strip():
            raise DataError(f"{row.where}: the assistant's reply (the conversation's last message) is empty")
        example["label"] = unicode_text(reply, f"{row.where}: the assistant's reply")
    elif label_field:
        raise DataError(f"{row.where}: the row has no column(s) {[label_field]}")
    return example


def _read_fields(values: dict, fields: list[str], where: str, noun: str) -> tuple[dict, str | None, bool]:
    """(the text fields of `values` as an example, a conversation's reply or None, whether a field held a
    conversation): a text field may hold a chat conversation (see `conversation`), read into the field
    (its last user turn) and `HISTORY` (the turns before it, where there are any)."""
    example, reply, chat = {}, None, False
    for f in fields:
        value = values.get(f)
        if isinstance(value, list) and (not value or isinstance(value[0], dict)):  # messages, not a list of texts
            if chat:
                raise DataError(f"{where}: two {noun}s hold conversations; a task reads at most one")
            history, example[f], reply = conversation(value, f"{where}: {noun} {f!r}")
            if history:
                example[HISTORY] = history
            chat = True
        else:
            example[f] = _text(value, f"{where}: {noun} {f!r}")
    return example, reply, chat


_ROLE = re.compile(r"[A-Za-z0-9_-]+")
"""What a message's role may be: a name, which a chat template writes into the conversation as text."""


def conversation(messages: list, where: str) -> tuple[list[dict], str, str | None]:
    """A chat conversation (`[{"role": "user", "content": "..."}, ...]`) split as a generation task
    reads it: (the turns before the last user turn, that turn's content, the assistant's reply after
    it or None). Only "role" and "content" of each message are kept.

    Raises `DataError` naming `where` and the message for an empty list, a message that is not an
    object or lacks a text role or content, a role that is not a name (letters, digits, _ and -:
    a chat template writes it as text, so "<|im_start|>" there would become markup), and a conversation whose last user turn is not last or
    followed only by the assistant's reply.

    Example:
        >>> conversation([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], "chat.jsonl:1")
        ([], 'Hi', 'Hello!')
    """
    if not messages:
        raise DataError(f"{where} holds an empty conversation; give at least a user message")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not m["role"].strip():
            raise DataError(f"{where}: message {i} is not an object with a text \"role\" (e.g. "
                            '{"role": "user", "content": "..."})')
        if not _ROLE.fullmatch(m["role"]):  # the chat template writes the role as its own text: no markup in it
            raise DataError(f"{where}: message {i} has role {m['role']!r}; a role is a name of letters, digits, '_' "
                            "and '-' (user, assistant, system, tool...)")
        if not isinstance(m.get("content"), str):
            raise DataError(f"{where}: message {i} ({m['role']}) has no text \"content\"")
        turns.append({"role": m["role"], "content": unicode_text(m["content"], f"{where}: message {i}")})
    reply = turns.pop()["content"] if turns[-1]["role"] == "assistant" and len(turns) > 1 else None
    if turns[-1]["role"] != "user":
        raise DataError(f"{where}: the conversation must end with a user message, or a user message and the assistant's "
                        f"reply; it ends with {[t['role'] for t in turns[-2:]] + (['assistant'] if reply is not None else [])}")
    return turns[:-1], turns[-1]["content"], reply


def _text(value, what: str) -> str:
    """A text cell as a string: null is empty, a number becomes its digits, a list or object is an error."""
    if isinstance(value, (list, dict)):
        raise DataError(f"{what} holds {_json_kind(value)}, expected text")
    return unicode_text("" if value is None else str(value), what)


def unicode_text(text: str, what: str) -> str:
    """`text` if it is valid Unicode; raises `DataError` naming `what` for a lone surrogate (a JSON
    escape like \\ud800 without its pair, or bytes of another encoding passed on a command line)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"{what} holds text that is not valid Unicode ({text[e.start:e.end]!a} at character {e.start}); "
                        "write it as UTF-8") from None
    return text


def _label(value, where: str, field: str, labels: list[str] | None) -> str:
    """A label cell as its key (`verbalizers.label_key`); empty, or not among `labels`, is an error."""
    if isinstance(value, (list, dict)):
        raise DataError(f"{where}: label column {field!r} holds {_json_kind(value)}, expected a label")
    key = "" if value is None else unicode_text(label_key(value), f"{where}: label column {field!r}")
    if not key:
        raise DataError(f"{where}: label column {field!r} is empty")
    if labels is not None and key not in labels:
        raise DataError(f"{where}: label {key!r} is not one of the task's labels {list(labels)}")
    return key


def examples_from_texts(texts: list[str], fields: list[str], *, name: str = "input") -> list[dict]:
    """Inputs given as strings (a command line's `--text`, a request's texts) as examples of a task that
    reads `fields`.

    On a task with one field, an input is its literal text, unless it is a JSON object that has
    that field. On several fields, an input is a JSON object with those fields (other keys are
    ignored). Raises `DataError` naming the input (as `name` and its value) when it is empty or only
    whitespace (on several fields: all of them), or not such a JSON object.

    Example:
        >>> examples_from_texts(["a gripping film", '{"sentence": "{braces} too"}'], ["sentence"])
        [{'sentence': 'a gripping film'}, {'sentence': '{braces} too'}]
        >>> examples_from_texts([""], ["sentence"], name="--text")
        DataError: --text '' has no text (empty, or only whitespace or invisible characters)
    """
    return [_example_from_text(text, fields, name) for text in texts]


def examples_from_lines(text: str, fields: list[str], *, source: str = "<stdin>") -> list[dict]:
    """Inputs one per line (`prompttune predict --data -`), each read as `examples_from_texts` reads a
    string: the text itself on a one-field task, a JSON object with the fields on several. Blank
    lines are skipped; an error names the line as `source:LINE`.

    Example:
        >>> examples_from_lines('a gripping film\n\n{"sentence": "dull"}\n', ["sentence"])
        [{'sentence': 'a gripping film'}, {'sentence': 'dull'}]
    """
    lines = enumerate(io.StringIO(text, newline=None), 1)
    return [_example_from_text(line.rstrip("\n"), fields, f"{source}:{n}") for n, line in lines if line.strip()]


def _example_from_text(text: str, fields: list[str], name: str) -> dict:
    what = f"{name} {text!r}"
    obj = _json_object_in(text)
    literal = len(fields) == 1 and (obj is None or fields[0] not in obj)
    if literal:
        example = {fields[0]: unicode_text(text, what)}
    elif obj is None:
        shape = json.dumps({f: "..." for f in fields})
        raise DataError(f"{what} is not a JSON object; this task reads fields {fields}: give each input as '{shape}'")
    else:
        missing = [f for f in fields if f not in obj]
        if missing:
            raise DataError(f"{what} lacks field(s) {missing}; the task reads {fields}")
        example, reply, _ = _read_fields(obj, fields, what, "field")  # a field may hold a chat conversation
        if reply is not None:
            example["label"] = reply
    if not any(has_text(example[f]) for f in fields):
        raise DataError(f"{what} has no text (empty, or only whitespace or invisible characters)" if literal else
                        f"{what}: the field(s) {fields} are all empty or only whitespace; give text in at least one")
    return example


def has_text(text: str) -> bool:
    """Whether `text` has a visible character: not only whitespace, control characters (NUL...) and
    invisible format characters (zero-width space, joiners, byte-order mark), which tokenizers drop.

    Example:
        >>> has_text(" \u200b\x00"), has_text("ok")
        (False, True)
    """
    return any(not ch.isspace() and unicodedata.category(ch) not in ("Cc", "Cf") for ch in text)


def _json_object_in(text: str) -> dict | None:
    """The JSON object `text` holds, or None when it holds none (plain text, other JSON)."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


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


def held_out_split(examples: list[dict], fraction: float, seed: int, *, by_class: bool = True) -> tuple[list[dict], list[dict]]:
    """(rest, held out): `fraction` of the examples set aside, drawn with `seed`; per label when
    `by_class` (each label keeps its share, rounded, at least one example of a label with two or
    more), else over the distinct inputs (a generation task's targets are not classes): every row
    of an input (E2E's several references of one meaning representation) goes to the same side,
    so no evaluated input was seen in training. Both keep the examples' order in the file.

    Example:
        >>> rest, held = held_out_split(load_examples("train.tsv", ["sentence"]), 0.2, seed=13)
        >>> len(held) / (len(rest) + len(held))
        0.2
    """
    rng = random.Random(seed)
    unit = id if by_class else input_key  # what is held out: an example, or an input with all its rows
    groups = ([[id(ex) for ex in g] for g in by_label(examples).values()] if by_class
              else [list(dict.fromkeys(input_key(ex) for ex in examples))])
    held = set()
    for group in groups:
        n = round(len(group) * fraction)
        n = min(max(n, 1), len(group) - 1) if len(group) > 1 else 0
        held.update(rng.sample(group, n))
    if not held:
        raise DataError(f"task.eval_split {fraction} of {len(examples)} example(s) leaves no evaluation set")
    return [ex for ex in examples if unit(ex) not in held], [ex for ex in examples if unit(ex) in held]


def input_key(example: dict) -> str:
    """What identifies an example's input: every key but "label", as JSON. Rows with the same key
    are one input with several references (E2E), split and scored together.

    Example:
        >>> input_key({"mr": "name: Aromi", "label": "Aromi is a pub."}) == input_key({"mr": "name: Aromi", "label": "x"})
        True
    """
    return json.dumps({k: v for k, v in example.items() if k != "label"}, sort_keys=True, ensure_ascii=False)


def few_shot_split(examples: list[dict], k: int, seed: int) -> tuple[list[dict], list[dict]]:
    """K per class for training and another disjoint K per class for development (LM-BFF)."""
    train = sample_per_class(examples, k, seed)
    dev = sample_per_class(examples, k, seed + 1, exclude=train)
    return train, dev

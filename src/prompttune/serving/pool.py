"""A task pool: one loaded backbone, any number of saved tasks beside it.

`TaskPool` is what `prompttune serve` runs on, and a Python API of its own: load the frozen model
once, `add` task artifacts made on it, and `predict` / `predict_mixed` / `generate`.

    >>> pool = TaskPool("runs/bert-base", device="cpu")
    >>> pool.add("runs/sst2-prompt-tuning", name="sst2")
    >>> pool.add("runs/agnews-p-tuning-v2", name="news")
    >>> pool.predict_mixed([("sst2", {"sentence": "a gripping film"}), ("news", {"text": "stocks fell"})])
    [Prediction(label='1', probabilities={...}), Prediction(label='business', ...)]

Memory. A task whose artifact holds only what it adds to the model (soft prompts, prefixes,
adapters, LoRA matrices, a classification head) is built on the pool's backbone and costs what it
adds (`TaskInfo.added_bytes`: its stored numbers, plus an in-context task's demonstration
keys/values, computed once). LoRA updates stay unmerged in the pool, `merge: true` or not (merging
would change the weights every task reads; scores agree with the merged task's to float tolerance).
A head task's classification model is built over the backbone's own modules (only its head, e.g.
BERT's pooler and classifier, is its own). A task that changes the backbone's own weights
(prompt-finetune, finetune, bitfit: its artifact stores some of them) gets its own copy of the model,
and `tasks()` states that copy's size (`own_model_bytes`).

Batching. `predict_mixed` runs every task that scores label words on the shared masked or causal
LM in one forward pass (`mixed_batch.shared_pass`: each row with its own task's parts and reads);
tasks with a pass of their own (a classification head, a seq2seq scorer, a model copy) run theirs,
one per task. Chain-of-thought tasks generate their reasoning per task first, then join the pass.

All public methods are thread-safe: one lock serialises changes to the pool and forward passes
(a server's batcher calls `predict_mixed` from one worker thread; hot loads come from others).
"""

from __future__ import annotations

import functools
import gc
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..artifacts import WEIGHTS, lm_head_location, load_artifact, read_saved, trained_dtype
from ..backbones import CHECKPOINT_KEYS, Backbone, compare_fingerprints, load_backbone, place_on
from ..data import examples_from_texts
from ..devices import dtype_name, resolve_device, resolve_dtype, to_device
from ..errors import ConfigError, ModelError
from ..evaluation import predict_scores
from ..model_parts import bind_bare, detach_parts
from ..parameters import freeze
from ..quantization import check_quantization
from .mixed_batch import Job, shared_pass

TASK_NAME = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
"""What a task may be called (it is part of URLs: /v1/tasks/{task}/predict)."""
TASK_NAME_RULE = "letters, digits, '.', '_', '-', '+'; at most 64, starting with a letter or digit"
"""`TASK_NAME` in words, for the errors that refuse a name."""
@dataclass
class Prediction:
    """One input's label and the probability of every label (summing to 1)."""

    label: str
    probabilities: dict[str, float]


@dataclass
class TaskInfo:
    """What `GET /v1/tasks` lists about a task."""

    name: str
    path: str
    method: str | list[str]
    template: str | None
    labels: list[str]
    text_fields: list[str]
    generation: bool
    stored_numbers: int
    """Numbers the artifact stores beside the shared model."""
    bytes: int
    """Size of the artifact's weights file on disk."""
    own_model_bytes: int = 0
    """Memory of a model copy this task needs because it changes the backbone's own weights (0 = shares it)."""
    added_bytes: int = 0
    """Memory the task adds beside the shared model: what it stores, and what it computes once (an
    in-context task's demonstration keys/values)."""
    trained_dtype: str = "float32"
    """The dtype of the model's weights the task was trained in (its config.json `dtype`); it runs in the pool's."""
    classifier: nn.Module | None = field(default=None, repr=False)

    def public(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "classifier"}


class TaskPool:
    """One frozen backbone in memory; many small tasks on it.

    `model` is the hub id or local path of the backbone (as in the tasks' `config.json`), or None
    to take it from the first task added. `max_batch_size` bounds the sequences of one forward pass.
    `quantization` (none, nf4, fp4, int8; `prompttune.quantization`) stores the backbone's Linear
    weights in 4 or 8 bits; None: as the first task added records (its `config.json`), or none for a
    `model` given. Tasks trained on a base quantized otherwise load with a note on stderr.
    Raises `ModelError` if the model cannot be loaded, `ConfigError` for a bad quantization.
    """

    def __init__(self, model: str | None = None, *, device: str = "auto", dtype: str = "auto",
                 model_kind: str | None = None, lm_head: str | None = None, max_batch_size: int = 32,
                 quantization: str | None = None):
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be a whole number ≥ 1, got {max_batch_size!r}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.quantization = None if quantization is None else check_quantization(quantization)
        self.max_batch_size = max_batch_size
        self._lock = threading.RLock()
        self._tasks: dict[str, TaskInfo] = {}
        self.backbone: Backbone | None = None
        if model is not None:
            self._load_backbone(model, model_kind, lm_head)

    def _load_backbone(self, model: str, kind: str | None, lm_head: str | None, quantization: str = "none") -> None:
        self.quantization = self.quantization or quantization
        backbone = load_backbone(model, kind=kind, lm_head=lm_head, dtype=self.dtype, quantization=self.quantization,
                                 device=self.device)
        place_on(backbone.model, self.device)  # (a quantized base was placed as it loaded)
        self.backbone = backbone
        self._checkpoint = backbone.fingerprint()
        # The backbone's own weights, by the names an artifact would store them under (before tasks wrap modules).
        self._own_names = frozenset(f"model.{n}" for n, _ in backbone.model.named_parameters())

    # --- tasks ----------------------------------------------------------------------------

    def add(self, path: str | Path, name: str | None = None) -> TaskInfo:
        """Load the task artifact at `path` as `name` (default: the directory's name).

        Raises `ArtifactError` (not an artifact, corrupt, does not fit its method), `ModelError` (made
        for another backbone) or `ConfigError` (the name is taken); the pool is unchanged then.
        """
        path = Path(path)
        name = name or path.resolve().name
        if not re.fullmatch(TASK_NAME, name):
            raise ConfigError(f"{name!r} cannot be a task name ({TASK_NAME_RULE})")
        with self._lock:
            if name in self._tasks:
                raise ConfigError(f"a task named {name!r} is already loaded; remove it first or choose another name")
            config, weights = read_saved(path)  # checked against its checksum before anything is built
            if self.backbone is None:
                self._load_backbone(config["model"], config.get("model_kind"), lm_head_location(config, path),
                                    config.get("quantization", "none"))
            # One checkpoint for every task, whatever class the task loads it as (a head task's
            # fingerprint is of its classification model).
            made_on = config["backbone"]
            try:
                compare_fingerprints({k: made_on[k] for k in CHECKPOINT_KEYS if k in made_on} | {"name": made_on.get("name")},
                                     self._checkpoint)
            except ModelError as e:  # named: the pool may be loading many
                raise ModelError(f"{path}: {e}") from None
            shares = self._own_names.isdisjoint(weights)
            held = _storages(self.backbone.model, *(info.classifier for info in self._tasks.values()))
            # A task with its own model copy gets the pool's dtype too (a shared one has the backbone's).
            classifier, config = load_artifact(path, self.backbone if shares else None, saved=(config, weights),
                                               dtype=self.dtype, quantization=self.quantization)
            del weights
            added = sum(size for ptr, size in _storages(classifier).items() if ptr not in held)
            classifier.to(self.device)
            freeze(classifier)  # served, never trained: and a later task's build must see nothing of it trainable
            info = TaskInfo(name=name, path=str(path.resolve()), method=config["method"], template=config.get("template"),
                            labels=list(config["labels"]), text_fields=list(config["text_fields"]),
                            generation=bool(config.get("generation")), stored_numbers=int(config.get("stored_numbers", 0)),
                            bytes=(path / WEIGHTS).stat().st_size, classifier=classifier,
                            own_model_bytes=0 if shares else _model_bytes(classifier.model), added_bytes=added if shares else 0,
                            trained_dtype=dtype_name(trained_dtype(config)))
            self._tasks[name] = info
        release_freed_memory()
        return info

    def remove(self, name: str) -> None:
        """Unload task `name`, freeing what it put on the shared model (e.g. its LoRA adapter name).
        Raises `KeyError` if there is none."""
        with self._lock:
            info = self._task(name)
            del self._tasks[name]
            if info.own_model_bytes == 0:
                detach_parts(info.classifier)
                bind_bare(self.backbone.model)  # nothing of the task stays bound
        release_freed_memory()

    def tasks(self) -> list[TaskInfo]:
        with self._lock:
            return list(self._tasks.values())

    def _task(self, name: str) -> TaskInfo:
        try:
            return self._tasks[name]
        except KeyError:
            raise KeyError(f"no task named {name!r}; loaded: {sorted(self._tasks)}") from None

    # --- running --------------------------------------------------------------------------

    def predict(self, name: str, examples: list[str | dict]) -> list[Prediction]:
        """Label and probabilities for each example: a dict of the task's text fields, or a string (the
        text of a one-field task, or a JSON object with the fields, as `prompttune predict --text`)."""
        return self.predict_mixed([(name, ex) for ex in examples])

    def predict_mixed(self, items: list[tuple[str, str | dict]]) -> list[Prediction]:
        """Predictions for (task name, example) pairs of any tasks, in order (see `scores_mixed`)."""
        with self._lock:
            scores = self.scores_mixed(items)
            return [_prediction(self._tasks[name].labels, s) for (name, _), s in zip(items, scores)]

    @torch.no_grad()
    def scores_mixed(self, items: list[tuple[str, str | dict]]) -> list[torch.Tensor]:
        """Class scores (n_classes,) for (task name, example) pairs of any tasks, in order: what the task
        loaded on its own computes (`load_artifact(path)` + `predict_scores`), to float tolerance.

        Every task whose rows can share the backbone's forward pass joins one (chunked by
        `max_batch_size`); the others run their own. Raises `KeyError` for an unknown task,
        `ConfigError` for a generation task."""
        with self._lock:
            rows: dict[str, list[int]] = {}
            for i, (name, _) in enumerate(items):
                if self._task(name).generation:
                    raise ConfigError(f"task {name!r} generates text: use generate (or /v1/completions)")
                rows.setdefault(name, []).append(i)
            out: list[torch.Tensor | None] = [None] * len(items)
            jobs, joined = [], []
            for name, indices in rows.items():
                info = self._tasks[name]
                clf = info.classifier
                examples = [_example(items[i][1], info.text_fields) for i in indices]
                if clf.model is self.backbone.model:
                    batch = to_device(clf.collate(examples), self.device)
                    reads = clf.reads(batch)
                    if reads is not None:
                        jobs.append(Job(clf.parts(), reads))
                        joined.append((clf, indices, batch))
                        continue
                scores = predict_scores(clf, examples, batch_size=self.max_batch_size)
                _place(out, indices, scores)
            logps = shared_pass(self.backbone.model, jobs, pad_id=self.backbone.tokenizer.pad_token_id,
                                max_batch_size=self.max_batch_size)
            for (clf, indices, batch), task_logps in zip(joined, logps):
                _place(out, indices, clf.scores_from(batch, task_logps).float().cpu())
            return out

    def generate(self, name: str, examples: list[dict], *, max_new_tokens: int = 20, **generate_kwargs) -> list[str]:
        """Text the task's model writes after each example's prompt (see `prompttune.generation.generate`)."""
        from ..generation import generate

        with self._lock:
            info = self._task(name)
            return generate(info.classifier, examples, max_new_tokens=max_new_tokens, **generate_kwargs)

    def generate_ids(self, name: str, prompts: list[list[int]], **generate_kwargs) -> list[list[int]]:
        """New token ids after each prompt given as ids (`generation.prompt_ids`, `chat_prompt_ids`); see
        `prompttune.generation.generate_ids`. Raises `KeyError` for an unknown task."""
        from ..generation import generate_ids

        with self._lock:
            return generate_ids(self._task(name).classifier, prompts, **generate_kwargs)


@functools.cache
def _libc():
    """The C library, looked up once (`find_library` runs `ldconfig`), or None where there is none."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None


def release_freed_memory() -> None:
    """Hand memory freed by a load back to the operating system. Building a head task reads a whole
    classification model before keeping only its head, and glibc's allocator keeps what was freed
    in the process (resident, unused) unless asked: `malloc_trim(0)`. A no-op where there is no glibc."""
    gc.collect()
    try:
        _libc().malloc_trim(0)
    except AttributeError:  # no C library, or one without malloc_trim
        pass


def _example(given: str | dict, fields: list[str]) -> dict:
    """An input as the task reads it: a dict of its text fields (a "label" key is left out), or a
    string, read as `prompttune predict --text` reads one (`data.examples_from_texts`)."""
    if isinstance(given, str):
        return examples_from_texts([given], fields, name="text")[0]
    return {k: v for k, v in given.items() if k != "label"}


def _place(out: list, indices: list[int], scores: torch.Tensor) -> None:
    """Put the rows of `scores` (n, classes) at `indices` of `out`."""
    for i, row in zip(indices, scores):
        out[i] = row


def _prediction(labels: list[str], scores: torch.Tensor) -> Prediction:
    probs = scores.softmax(-1)
    return Prediction(labels[int(probs.argmax())], dict(zip(labels, probs.tolist())))


def _storages(*modules: nn.Module) -> dict[int, int]:
    """{data pointer: bytes} of the parameters and buffers of `modules`. A task adds the ones the pool
    did not hold before it: what its artifact stores (LoRA matrices included, though peft puts them in
    the shared model's modules), an in-context task's demonstration keys/values, a head task's pooler
    (BERT's, from the checkpoint: a masked-LM backbone has none to share)."""
    return {t.data_ptr(): t.numel() * t.element_size()
            for m in modules for t in (*m.parameters(), *m.buffers())}


def _model_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())

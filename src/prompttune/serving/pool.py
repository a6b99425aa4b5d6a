"""A task pool: one loaded backbone, any number of saved tasks beside it.

`TaskPool` is what `prompttune serve` runs on, and a Python API of its own: load the frozen model
once, `add` task artifacts made on it, and `predict` / `predict_mixed` / `generate`.

    >>> pool = TaskPool("runs/bert-base", device="cpu")
    >>> pool.add("runs/sst2-prompt-tuning", name="sst2")
    >>> pool.add("runs/agnews-p-tuning-v2", name="news")
    >>> pool.predict_mixed([("sst2", "a gripping film"), ("news", "stocks fell")])
    [Prediction(label='1', probabilities={...}), Prediction(label='business', ...)]

A task whose artifact holds only what it adds to the model (soft prompts, prefixes, adapters,
heads) shares the pool's backbone and costs its artifact's size in memory. A task that changes
the backbone's own weights (prompt-finetune, finetune, bitfit) gets its own copy of the model,
and `tasks()` states that copy's size (`own_model_bytes`).

All public methods are thread-safe: one lock serialises changes to the pool and forward passes
(a server's batcher calls `predict_mixed` from one worker thread; hot loads come from others).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..artifacts import WEIGHTS, load_artifact, read_config
from ..backbones import Backbone, load_backbone
from ..errors import ArtifactError, ConfigError
from ..evaluation import predict_scores
from ..parameters import count_parameters

DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """`auto` = the first GPU when there is one, else the CPU; `cpu`, `cuda`, `cuda:N` as given.

    Raises `ConfigError` for a device name torch does not know or a GPU that is not there."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: this machine has no CUDA GPU")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` = bfloat16 on a GPU that supports it, float32 otherwise (what tasks train in)."""
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if dtype == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return DTYPES[dtype]


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
    classifier: nn.Module | None = field(default=None, repr=False)

    def public(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "classifier"}


class TaskPool:
    """One frozen backbone in memory; many small tasks on it.

    `model` is the hub id or local path of the backbone (as in the tasks' `config.json`), or None
    to take it from the first task added. Raises `ModelError` if it cannot be loaded.
    """

    def __init__(self, model: str | None = None, *, device: str = "auto", dtype: str = "auto",
                 model_kind: str | None = None, lm_head: str | None = None):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self._lock = threading.RLock()
        self._tasks: dict[str, TaskInfo] = {}
        self.backbone: Backbone | None = None
        if model is not None:
            self._load_backbone(model, model_kind, lm_head)

    def _load_backbone(self, model: str, kind: str | None, lm_head: str | None) -> None:
        backbone = load_backbone(model, kind=kind, lm_head=lm_head, dtype=self.dtype)
        backbone.model.to(self.device)
        self.backbone = backbone

    # --- tasks ----------------------------------------------------------------------------

    def add(self, path: str | Path, name: str | None = None) -> TaskInfo:
        """Load the task artifact at `path` as `name` (default: the directory's name).

        Raises `ArtifactError` (not an artifact, corrupt, made for another backbone) or
        `ConfigError` (the name is taken); the pool is unchanged then.
        """
        path = Path(path)
        name = name or path.resolve().name
        with self._lock:
            if name in self._tasks:
                raise ConfigError(f"a task named {name!r} is already loaded; remove it first or choose another name")
            config = read_config(path)
            if self.backbone is None:
                self._load_backbone(config["model"], config.get("model_kind"), config.get("lm_head"))
            shares = shares_backbone(path, config, self.backbone)
            classifier, config = load_artifact(path, self.backbone if shares else None)
            classifier.to(self.device)
            own = 0 if shares else _model_bytes(classifier.model)
            info = TaskInfo(name=name, path=str(path.resolve()), method=config["method"], template=config.get("template"),
                            labels=list(config["labels"]), text_fields=list(config["text_fields"]),
                            generation=bool(config.get("generation")), stored_numbers=int(config.get("stored_numbers", 0)),
                            bytes=(path / WEIGHTS).stat().st_size, own_model_bytes=own, classifier=classifier)
            self._tasks[name] = info
            return info

    def remove(self, name: str) -> None:
        """Unload task `name`. Raises `KeyError` if there is none."""
        with self._lock:
            self._task(name)
            del self._tasks[name]

    def tasks(self) -> list[TaskInfo]:
        with self._lock:
            return list(self._tasks.values())

    def _task(self, name: str) -> TaskInfo:
        try:
            return self._tasks[name]
        except KeyError:
            raise KeyError(f"no task named {name!r}; loaded: {sorted(self._tasks)}") from None

    # --- running --------------------------------------------------------------------------

    def predict(self, name: str, examples: list[dict]) -> list[Prediction]:
        """Label and probabilities for each example (a dict of the task's text fields)."""
        return self.predict_mixed([(name, ex) for ex in examples])

    def predict_mixed(self, items: list[tuple[str, dict]]) -> list[Prediction]:
        """Predictions for (task name, example) pairs of any tasks, in order.

        Raises `KeyError` for an unknown task, `ConfigError` for a generation task."""
        with self._lock:
            groups: dict[str, list[int]] = {}
            for i, (name, _) in enumerate(items):
                info = self._task(name)
                if info.generation:
                    raise ConfigError(f"task {name!r} generates text: use generate (or /v1/completions)")
                groups.setdefault(name, []).append(i)
            out: list[Prediction | None] = [None] * len(items)
            for name, rows in groups.items():
                info = self._tasks[name]
                probs = predict_scores(info.classifier, [items[i][1] for i in rows]).softmax(-1)
                for i, p in zip(rows, probs):
                    out[i] = Prediction(info.labels[int(p.argmax())], dict(zip(info.labels, p.tolist())))
            return out

    def generate(self, name: str, examples: list[dict], *, max_new_tokens: int = 20, **generate_kwargs) -> list[str]:
        """Text the task's model writes after each example's prompt (see `prompttune.generation.generate`)."""
        from ..generation import generate

        with self._lock:
            info = self._task(name)
            return generate(info.classifier, examples, max_new_tokens=max_new_tokens, **generate_kwargs)


def shares_backbone(path: Path, config: dict, backbone: Backbone) -> bool:
    """Whether the task saved at `path` can run on `backbone` as loaded: it needs no model of another
    architecture (a classification head model), stores none of the backbone's own weights (they
    would overwrite the shared ones), and does not rewrite the backbone's modules (peft's LoRA layers)."""
    from safetensors import safe_open

    if _uses_head(config):
        return False
    with safe_open(str(path / WEIGHTS), framework="pt") as f:
        names = set(f.keys())
    own = {f"model.{n}" for n, _ in backbone.model.named_parameters()}
    return not (names & own) and not any(".lora_" in n for n in names)


def _uses_head(config: dict) -> bool:
    from ..methods import MethodOptions, get_method

    fields = MethodOptions.__dataclass_fields__
    return get_method(config["method"]).uses_head(MethodOptions(**{k: v for k, v in config.get("options", {}).items() if k in fields}))


def _model_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())

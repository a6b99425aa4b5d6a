"""The training loop, visible top to bottom (nanoGPT's `train.py` in spirit).

Built on `accelerate`, so the same loop runs on CPU, one GPU or several. Only parameters a
method marked trainable are optimised. Each epoch ends with an evaluation on the dev set; the
best epoch's parameters are kept. A checkpoint (safetensors + JSON, never pickle) after each epoch
lets a run resume where it stopped, with the same data order.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .errors import ConfigError
from .evaluation import evaluate
from .files import write_json, write_safetensors
from .parameters import trainable_state_dict


@dataclass
class TrainConfig:
    """How to train. Every field can be set from YAML (`train.lr: 1e-5`) or `--set train.lr=1e-5`."""

    epochs: int = 10
    """Passes over the training examples."""
    lr: float = 1e-5
    """Peak learning rate of AdamW (linear warm-up, then linear decay to 0)."""
    batch_size: int = 8
    eval_batch_size: int = 32
    max_length: int = 128
    """Longest token sequence; only the text fields are truncated to fit."""
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    """Fraction of the steps spent warming the learning rate up from 0."""
    max_grad_norm: float = 1.0
    seed: int = 42
    """Seeds parameter init, data order and dropout: equal seeds give equal runs."""
    progress: bool = True
    """Show progress bars."""
    checkpoint: bool = True
    """Write a resume checkpoint (weights + optimizer state) after each epoch; off saves disk I/O
    for large models in runs that will not be resumed."""

    def __post_init__(self):
        """Refuse values the loop cannot train with, naming the key: whole numbers < 1, a learning rate
        ≤ 0, NaN or ±inf anywhere, a warm-up fraction outside [0, 1], a seed NumPy cannot take."""
        import math

        for name in ("epochs", "batch_size", "eval_batch_size", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"train.{name} must be a positive whole number, got {value!r}")
        for name, expected, within in (
            ("lr", "a finite number > 0", lambda v: v > 0),
            ("weight_decay", "a finite number ≥ 0", lambda v: v >= 0),
            ("warmup_ratio", "a fraction of the steps in [0, 1]", lambda v: 0 <= v <= 1),
            ("max_grad_norm", "a finite number ≥ 0 (0 = no clipping)", lambda v: v >= 0),
        ):
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and within(value)):
                raise ConfigError(f"train.{name} must be {expected}, got {value!r}")
        # Epoch e is seeded with seed * 1000 + e, and NumPy takes seeds up to 2**32 - 1.
        largest_seed = (2**32 - self.epochs) // 1000
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= largest_seed:
            raise ConfigError(f"train.seed must be a whole number from 0 to {largest_seed}, got {self.seed!r}")


@dataclass
class TrainResult:
    best_epoch: int | None = None
    best_dev: dict | None = None
    history: list[dict] = field(default_factory=list)
    steps: int = 0


def train(
    classifier: nn.Module,
    train_examples: list[dict],
    dev_examples: list[dict] | None,
    config: TrainConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train the classifier's trainable parameters with cross-entropy over its class scores (or, for a
    text generator, its LM loss).

    The best epoch is the one with the highest dev accuracy (lowest dev loss among ties; a
    generation task has only the loss).

    Example:
        >>> clf, _ = build_classifier(TaskSpec(method="p-tuning-v2", ...))
        >>> result = train(clf, train_examples, dev_examples, TrainConfig(epochs=5, lr=1e-5))
        >>> result.best_dev["accuracy"]
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_linear_schedule_with_warmup

    params = [p for p in classifier.parameters() if p.requires_grad]
    result = TrainResult()
    if not params or not train_examples:
        return result
    accelerator = Accelerator()
    decay = [p for p in params if p.ndim >= 2]  # no weight decay on biases and norms
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=config.lr
    )
    steps_per_epoch = -(-len(train_examples) // config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total), total)
    model, optimizer = accelerator.prepare(classifier, optimizer)

    start_epoch, best_state = 0, None
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    if resume and ckpt and (ckpt / "state.json").exists():
        start_epoch, best_state = _load_checkpoint(ckpt, classifier, optimizer, scheduler, result)

    for epoch in range(start_epoch, config.epochs):
        # The order and the dropout masks depend on (seed, epoch) only, so a resumed run sees the
        # same batches and trains to the same weights as an uninterrupted one.
        set_seed(config.seed * 1000 + epoch)
        order = random.Random(config.seed * 1000 + epoch).sample(train_examples, len(train_examples))
        loader = accelerator.prepare_data_loader(DataLoader(order, batch_size=config.batch_size, collate_fn=classifier.collate))
        model.train()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not (config.progress and accelerator.is_main_process))
        losses = []
        for batch in bar:
            out = model(batch)
            # A classifier returns class scores; a text generator returns its LM loss (a scalar).
            loss = out if out.ndim == 0 else F.cross_entropy(out.float(), batch["labels"])
            accelerator.backward(loss)
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            result.steps += 1
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        record = {"epoch": epoch + 1, "train_loss": sum(losses) / len(losses)}
        if dev_examples:
            dev = evaluate(classifier, dev_examples, batch_size=config.eval_batch_size)
            record.update({f"dev_{k}": v for k, v in dev.items() if k in ("accuracy", "loss")})
            # A few-shot dev set (32 examples) ties often; the lower loss breaks the tie.
            # (A generation task has no accuracy: its dev loss alone decides.)
            key = lambda d: (d.get("accuracy", 0.0), -d["loss"])  # noqa: E731
            if result.best_dev is None or key(dev) > key(result.best_dev):
                result.best_epoch, result.best_dev = epoch + 1, dev
                best_state = {k: v.clone() for k, v in trainable_state_dict(classifier).items()}
        result.history.append(record)
        if config.progress and accelerator.is_main_process:
            tqdm.write("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        if ckpt:
            _save_checkpoint(ckpt, epoch + 1, classifier, optimizer, scheduler, result, best_state)

    if best_state is not None:
        classifier.load_state_dict(best_state, strict=False)
    return result


def _save_checkpoint(directory: Path, epoch, classifier, optimizer, scheduler, result, best_state) -> None:
    tensors = {f"param.{k}": v for k, v in trainable_state_dict(classifier).items()}
    if best_state is not None:
        tensors.update({f"best.{k}": v for k, v in best_state.items()})
    opt = optimizer.state_dict()
    scalars = {}
    for idx, state in opt["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    write_safetensors(directory / "state.safetensors", tensors)
    write_json(
        directory / "state.json",
        {
            "epoch": epoch,
            "result": asdict(result),
            "param_groups": opt["param_groups"],
            "optimizer_scalars": scalars,
            "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
        },
    )


def _load_checkpoint(directory: Path, classifier, optimizer, scheduler, result) -> tuple[int, dict | None]:
    meta = json.loads((directory / "state.json").read_text())
    tensors = load_file(str(directory / "state.safetensors"))
    classifier.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("param.")}, strict=False)
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    for k, v in meta["optimizer_scalars"].items():
        idx, key = k.split(".", 1)
        state.setdefault(int(idx), {})[key] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict({**meta["scheduler"], "lr_lambdas": [None] * len(optimizer.param_groups)})
    saved = meta["result"]
    result.best_epoch, result.best_dev, result.history, result.steps = (
        saved["best_epoch"], saved["best_dev"], saved["history"], saved["steps"]
    )
    return meta["epoch"], best

"""The training loop, visible top to bottom (nanoGPT's `train.py` in spirit).

Built on `accelerate`, so the same loop runs on CPU, one GPU or several. Only parameters a
method marked trainable are optimised. Each epoch ends with an evaluation on the dev set; the
best epoch's parameters are kept, and with `early_stopping_patience` the run stops once that many
epochs in a row have not improved on it. With `report_to: tensorboard`, loss, learning rate and dev
numbers go to accelerate's TensorBoard tracker as they are computed. A checkpoint (safetensors +
JSON, never pickle) after each epoch lets a run resume where it stopped, with the same data order.

Under `accelerate launch` with N processes (data parallel, `processes`), `batch_size` stays the global
batch: each process takes every N-th example of it (`batch_share`) and weights its loss by its share of
the batch's loss terms, so the averaged gradient is the one a single process computes on the whole batch,
whatever the batch and data sizes. Only the main process evaluates on dev (the others receive its
numbers) and writes checkpoints.

A checkpoint records what defines its run (`run_record`: the TrainConfig, a digest of the data,
the trainable parameters' names and shapes, and what the caller adds – `prompttune train` adds
the rest of the run config and the backbone's fingerprint). Resuming compares that record with
the run at hand and refuses another run (`check_same_run`): continuing it would silently mix two.
Only the keys in `RESUME_TOLERATED` may differ, since they cannot change what is trained.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .backbones import input_device, is_dispatched, map_devices
from .devices import MIXED_PRECISION, check_mixed_precision, check_training_dtypes, resolve_device
from .errors import ArtifactError, ConfigError
from .evaluation import evaluate
from .files import file_sha256, json_writer, read_json_object, safetensors_writer, write_together
from .gradient_checkpointing import checkpointed
from .parameters import trainable_bytes, trainable_state_dict
from .processes import check_launch, launched
from .progress import bar_off

CHECKPOINT_TENSORS, CHECKPOINT_STATE = "state.safetensors", "state.json"
CHECKPOINT_FILES = (CHECKPOINT_STATE, CHECKPOINT_TENSORS)
"""A checkpoint's files, in the order they are removed: without `state.json` there is no checkpoint,
so a run killed between the two removals leaves none rather than a split pair."""
RESUME_TOLERATED = ("train.progress", "train.eval_batch_size", "train.checkpoint", "train.report_to",
                    "train.gradient_checkpointing", "device_map", "max_memory", "task.eval", "decoding.max_new_tokens",
                    "decoding.num_beams", "decoding.stop")
"""Keys of a run's record that may differ when it is resumed: how it is shown, how dev batches are
sized, whether more checkpoints are written, where the numbers are logged, whether activations are
recomputed and where the model is placed (same numbers: a run that ran out of memory resumes with less), the data
evaluated after training, and how text is generated (a checkpoint written before runs had `decoding` lacks them)."""
RECORDED_LATER = {"model_dtype": "float32", "train.mixed_precision": "no", "quantization": "none"}
"""Keys a run's record gained after checkpoints were first written, with what a run recorded without
them trained with: resuming such a checkpoint compares that."""
REPORT_TO = ("none", "tensorboard")
"""Where `train.report_to` sends the numbers of a run as it trains (through accelerate's trackers)."""
TRACKER_RUN = "train"
"""The run name under the logging directory: TensorBoard's event files go to LOG_DIR/train/."""


@dataclass
class TrainConfig:
    """How to train. Every field can be set from YAML (`train.lr: 1e-5`) or `--set train.lr=1e-5`."""

    epochs: int = 10
    """Passes over the training examples."""
    lr: float = 1e-5
    """Peak learning rate of AdamW (linear warm-up, then linear decay to 0)."""
    batch_size: int = 8
    """Examples per optimizer step, over all processes: under `accelerate launch` with N processes each
    takes every N-th example of the batch, so the same config trains the same weights on 1 or N."""
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
    early_stopping_patience: int | None = None
    """Stop after this many epochs in a row without a better dev score (the best epoch's weights
    are kept either way); needs dev data. null = run every epoch."""
    report_to: str = "none"
    """none, or tensorboard: log loss, learning rate and dev numbers with accelerate's TensorBoard
    tracker (`prompttune train` writes them to OUT/logs/train/; needs the tensorboard package)."""
    gradient_checkpointing: bool = False
    """Recompute each transformer block's activations in the backward pass instead of keeping them:
    less memory for about one more forward pass per step; the same gradients (`gradient_checkpointing`).
    Only while training: the saved task and later inference run the plain model."""
    mixed_precision: str | bool = "no"
    """no, bf16 or fp16: run the forward pass under accelerate's autocast in that precision (the
    weights stay in `model_dtype`, the loss in float32). fp16 needs a GPU; bf16 runs on the CPU too.
    (YAML reads an unquoted `no` as false: that is no too.)"""

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
        patience = self.early_stopping_patience
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
            raise ConfigError(f"train.early_stopping_patience must be a positive whole number of epochs or null, "
                              f"got {patience!r}")
        if not isinstance(self.gradient_checkpointing, bool):
            raise ConfigError(f"train.gradient_checkpointing must be true or false, got {self.gradient_checkpointing!r}")
        if self.mixed_precision is False:  # `mixed_precision: no`, unquoted
            self.mixed_precision = "no"
        if isinstance(self.mixed_precision, bool) or self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"train.mixed_precision must be one of {list(MIXED_PRECISION)}, got {self.mixed_precision!r}")
        if self.report_to not in REPORT_TO:
            raise ConfigError(f"train.report_to must be one of {list(REPORT_TO)}, got {self.report_to!r}")
        if self.report_to == "tensorboard":
            try:
                import tensorboard  # noqa: F401  (accelerate's tracker writes through torch.utils.tensorboard)
            except ImportError:
                raise ConfigError("train.report_to: tensorboard needs the tensorboard package: "
                                  "pip install 'prompttune[tensorboard]'") from None


@dataclass
class TrainResult:
    best_epoch: int | None = None
    best_dev: dict | None = None
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    stopped_early: bool = False
    """Whether `early_stopping_patience` ended the run before `epochs`."""
    seconds: float = 0.0
    """Wall-clock seconds spent training and evaluating on dev, summed over the resumes of a run."""


def train(
    classifier: nn.Module,
    train_examples: list[dict],
    dev_examples: list[dict] | None,
    config: TrainConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    run: dict | None = None,
    log_dir: str | Path | None = None,
    device: torch.device | None = None,
) -> TrainResult:
    """Train the classifier's trainable parameters with cross-entropy over its class scores (or, for a
    text generator, its LM loss).

    The best epoch is the one with the highest dev accuracy (lowest dev loss among ties; a
    generation task has only the loss). With `config.early_stopping_patience` N, the run ends after N
    epochs in a row that do not beat the best one (`result.stopped_early`). With `checkpoint_dir`
    and `config.checkpoint`, a checkpoint is written there after each epoch; `resume` continues from
    the one there. `run` is what else defines the run (JSON values), recorded in the checkpoint with
    the rest of `run_record`. With `config.report_to: tensorboard`, each step's loss and learning
    rate and each epoch's dev numbers are logged under `log_dir/train/`. `device` is where it trains
    (None: accelerate's choice, the GPU when there is one; `devices.resolve_device` gives one): the
    CPU makes accelerate run there, `cuda:N` selects that GPU for a single process (under `accelerate
    launch` each process takes its own). `config.mixed_precision` is accelerate's autocast.

    Raises `ConfigError` when `resume` finds no checkpoint or one of another run (naming the keys that
    differ, old → new), for early stopping without dev examples, for a tracker without `log_dir` and
    for fp16 mixed precision on the CPU or over float16 weights that train (accelerate's gradient
    scaler needs float32 ones); `ArtifactError` for a checkpoint whose two files do not belong together.

    Example:
        >>> clf, _ = build_classifier(TaskSpec(method="p-tuning-v2", ...))
        >>> result = train(clf, train_examples, dev_examples, TrainConfig(epochs=5, lr=1e-5))
        >>> result.best_dev["accuracy"]
    """
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list, set_seed
    from transformers import get_linear_schedule_with_warmup

    if config.early_stopping_patience is not None and not dev_examples:
        raise ConfigError("train.early_stopping_patience needs dev data to tell an improvement: set task.dev "
                          "(or task.shots, which draws a dev set from train)")
    if config.report_to != "none" and log_dir is None:
        raise ConfigError(f"train.report_to: {config.report_to} needs a directory for its logs")
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    identity = run_record(classifier, train_examples, dev_examples, config, run) if ckpt is not None else None
    saved = None
    if resume:
        saved = resumable_checkpoint(ckpt)
        check_same_run(saved["run"], identity, ckpt)
    params = [p for p in classifier.parameters() if p.requires_grad]
    result = TrainResult()
    if not params or not train_examples:
        return result
    tracking = config.report_to != "none"
    accelerator = Accelerator(**_placement(device, config.mixed_precision, params),
                              **({"log_with": config.report_to, "project_dir": str(log_dir)} if tracking else {}))
    check_launch(accelerator.state, config.checkpoint and ckpt is not None or resume)
    rank, processes, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None and plugin.is_auto("train_micro_batch_size_per_gpu"):  # DeepSpeed asks; no loader tells it
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = -(-config.batch_size // processes)
    decay = [p for p in params if p.ndim >= 2]  # no weight decay on biases and norms
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=config.lr
    )
    steps_per_epoch = -(-len(train_examples) // config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total), total)
    # A model placed by a device map (naive model parallelism, or a quantized base, which bitsandbytes
    # places on one device as it loads) stays where the map put it: accelerate moves neither it nor the
    # batches, which go to the device of its input embeddings instead.
    backbone = getattr(classifier, "model", classifier)
    dispatched = is_dispatched(backbone)
    if map_devices(backbone) > 1 and accelerator.num_processes > 1:
        raise ConfigError(f"device_map spreads one model over the devices of one process; it cannot train in "
                          f"{accelerator.num_processes} processes: launch one process, or drop device_map")
    model, optimizer = accelerator.prepare(classifier, optimizer, device_placement=[not dispatched, not dispatched])
    device = input_device(backbone) if dispatched else accelerator.device  # where each batch goes

    start_epoch, best_state = 0, None
    if saved is not None:
        start_epoch, best_state = _load_checkpoint(ckpt, saved, classifier, optimizer, scheduler, result)
    if tracking:
        accelerator.init_trackers(TRACKER_RUN)
    started, seconds_before = time.perf_counter(), result.seconds

    # Checkpointing is on for the epochs only (the dev evaluation inside runs without gradients, where it
    # does nothing); the model leaves `train` as it came.
    with checkpointed(backbone, config.gradient_checkpointing):
        for epoch in range(start_epoch, config.epochs):
            # `epoch` epochs are done; a resumed run that had already run out of patience stops here too.
            patience = config.early_stopping_patience
            if patience is not None and result.best_epoch is not None and epoch - result.best_epoch >= patience:
                result.stopped_early = True
                break
            # The order and the dropout masks depend on (seed, epoch) only, so a resumed run sees the
            # same batches and trains to the same weights as an uninterrupted one.
            set_seed(config.seed * 1000 + epoch)
            order = random.Random(config.seed * 1000 + epoch).sample(train_examples, len(train_examples))
            model.train()
            # Global batches, of which this process takes its share (not accelerate's prepared loader: its
            # split_batches needs a batch size divisible by N and pads the last batch with repeated examples).
            # Iterated once (a DataLoader draws a seed from torch's generator per iterator, and tqdm.auto
            # would make two), so the dropout masks follow the seed as they always have.
            shares = DataLoader(order, batch_size=config.batch_size, collate_fn=lambda rows: batch_share(rows, rank, processes))
            bar = tqdm(iter(shares), total=len(shares), desc=f"epoch {epoch + 1}/{config.epochs}",
                       disable=bar_off(config.progress and main))
            losses = []
            for rows, weight in bar:
                batch = {k: v.to(device) for k, v in classifier.collate(rows).items()}
                loss, terms = mean_loss(classifier, model(batch), batch)
                # DDP averages the processes' gradients: scaled by this process's share of the batch's loss
                # terms (× N), the average is the gradient of the whole batch's mean loss, as on one process.
                terms *= weight
                batch_terms = accelerator.reduce(torch.tensor(terms, device=accelerator.device), "sum").item()
                loss = loss * (terms * processes / max(batch_terms, 1))
                if not loss.requires_grad:
                    names = [n for n, p in classifier.named_parameters() if p.requires_grad]
                    raise ConfigError(f"the loss does not depend on any of the {len(names)} trainable parameter(s) "
                                      f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}): the method as configured "
                                      "trains something the forward pass never uses (e.g. LoRA target_modules the model "
                                      "does not call)")
                accelerator.backward(loss)
                if config.max_grad_norm:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(accelerator.reduce(loss.detach(), "mean").item())  # the whole batch's mean loss
                if not math.isfinite(losses[-1]):  # diverged: stop before a NaN artifact is saved
                    raise ConfigError(f"training diverged: the loss is {losses[-1]} at epoch {epoch + 1}, step "
                                      f"{result.steps + 1}; nothing was saved (lower train.lr, or train in float32: "
                                      "model_dtype: float32)")
                result.steps += 1
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if tracking:
                    accelerator.log({"train/loss": losses[-1], "train/lr": scheduler.get_last_lr()[0]}, step=result.steps)
            record = {"epoch": epoch + 1, "train_loss": sum(losses) / len(losses)}
            if dev_examples:
                # The main process evaluates; every process takes its numbers, so all choose the same best
                # epoch and stop at the same one (their weights are equal: the gradients are averaged).
                dev = evaluate(classifier, dev_examples, batch_size=config.eval_batch_size) if main else None
                dev = broadcast_object_list([dev])[0]
                record.update({f"dev_{k}": v for k, v in dev.items() if k in ("accuracy", "loss")})
                # A few-shot dev set (32 examples) ties often; the lower loss breaks the tie.
                # (A generation task has no accuracy: its dev loss alone decides.)
                key = lambda d: (d.get("accuracy", 0.0), -d["loss"])  # noqa: E731
                if result.best_dev is None or key(dev) > key(result.best_dev):
                    result.best_epoch, result.best_dev = epoch + 1, dev
                    best_state = {k: v.clone() for k, v in trainable_state_dict(classifier).items()}
            result.history.append(record)
            if tracking:
                accelerator.log({"train/epoch_loss": record["train_loss"],
                                 **{f"dev/{k[4:]}": v for k, v in record.items() if k.startswith("dev_")}}, step=result.steps)
            result.seconds = round(seconds_before + time.perf_counter() - started, 3)
            if config.progress and main:
                tqdm.write("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            if ckpt is not None and config.checkpoint and main:
                _save_checkpoint(ckpt, epoch + 1, classifier, optimizer, scheduler, result, best_state, identity)

    if tracking:
        accelerator.end_training()
    # Mixed precision wrapped the classifier's forward in autocast: take it off, so the trained task
    # computes what it computes once saved and loaded.
    accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    if best_state is not None:
        classifier.load_state_dict(best_state, strict=False)
    return result


def mean_loss(classifier: nn.Module, out: torch.Tensor, batch: dict) -> tuple[torch.Tensor, int]:
    """The loss the trainer minimises for `batch` and how many terms it is the mean of: for a classifier
    (`out`: (B, n_classes) class scores) the cross-entropy averaged over its B rows; for a text generator
    (`out`: its LM loss, a scalar) that loss, averaged over its target tokens (`loss_terms`)."""
    if out.ndim == 0:
        return out, classifier.loss_terms(batch)
    # (The labels go where the scores are: with a device map, the last layer's device.)
    return F.cross_entropy(out.float(), batch["labels"].to(out.device)), len(out)


def batch_share(batch: list[dict], rank: int, processes: int) -> tuple[list[dict], int]:
    """The examples of a global batch that process `rank` of `processes` trains on, and the weight of its
    loss: every `processes`-th example from its rank on, weight 1. A process left without an example (a
    last batch smaller than the number of processes) gets the batch's first one with weight 0: it still
    runs forward and backward, so the gradient averaging every process takes part in goes through,
    but adds nothing.

    Example:
        >>> batch_share([a, b, c], 1, 2)
        ([b], 1)
        >>> batch_share([a], 1, 2)
        ([a], 0)
    """
    share = batch[rank::processes]
    return (share, 1) if share else (batch[:1], 0)


def _placement(device: torch.device | None, mixed_precision: str, params: list[nn.Parameter]) -> dict:
    """The `Accelerator` arguments that put a run on `device` in `mixed_precision` (see `train`).

    Raises `ConfigError` for fp16 on the CPU, and for float16 weights of the model trained with Adam
    (`devices.check_training_dtypes`, which `prompttune train` applies before the model loads)."""
    if device is None:
        device = resolve_device("auto")
    check_mixed_precision(mixed_precision, device)
    half = sum(p.numel() for p in params if p.dtype == torch.float16)
    check_training_dtypes(torch.float16 if half else torch.float32, mixed_precision, half)
    if not launched():
        # accelerate keeps one state per process and refuses an Accelerator with other settings than the
        # first one's (cpu, mixed_precision): a single process starts each of its runs afresh (a run after
        # another in one Python session, prompt transfer's brief run, the demo's rows).
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # accelerate's single process trains on the current GPU ("cuda")
    return {"cpu": device.type == "cpu", "mixed_precision": mixed_precision}


# --- checkpoints: what a run records, and resuming only the same run --------------------------


def run_record(classifier: nn.Module, train_examples: list[dict], dev_examples: list[dict] | None,
               config: TrainConfig, run: dict | None = None) -> dict:
    """What defines a training run, as JSON values: `run` (what the caller adds), the TrainConfig
    under "train", a digest of the train and dev examples under "data", and the trainable
    parameters' names and shapes under "parameters".

    Example:
        >>> run_record(clf, train_ex, dev_ex, TrainConfig(lr=1e-3))["train"]["lr"]
        0.001
    """
    record = {
        **(run or {}),
        "train": asdict(config),
        "data": data_record(train_examples, dev_examples),
        "parameters": {n: list(p.shape) for n, p in classifier.named_parameters() if p.requires_grad},
    }
    return json.loads(json.dumps(record, default=str))  # as it reads back from state.json (tuples → lists...)


def data_record(train_examples: list[dict], dev_examples: list[dict] | None) -> dict:
    """The "data" section of a run's record: a digest of its train and dev examples."""
    return {"train": examples_digest(train_examples), "dev": examples_digest(dev_examples or [])}


def examples_digest(examples: list[dict]) -> str:
    """'8 examples, sha256 1f0c…': equal for equal examples in equal order."""
    text = json.dumps(examples, sort_keys=True, ensure_ascii=False, default=str)
    return f"{len(examples)} examples, sha256 {hashlib.sha256(text.encode()).hexdigest()[:16]}"


def check_same_run(recorded: dict, current: dict, source: Path) -> None:
    """Refuse to resume the checkpoint in `source` for another run.

    Compares the sections of `current` (a `run_record`, or part of one) with the checkpoint's
    record, key by dotted key; keys in `RESUME_TOLERATED` may differ.

    Raises `ConfigError`: "cannot resume runs/x/checkpoint: it was written by another run
    (train.lr: 0.001 → 0.002, task.shots: 16 → 8)".
    """
    old, new = _flatten({section: recorded.get(section) for section in current}), _flatten(current)
    old.update({k: v for k, v in RECORDED_LATER.items() if k in new and old.get(k) is None})
    differ = [k for k in {**new, **old} if k not in RESUME_TOLERATED and old.get(k) != new.get(k)]
    if differ:
        shown = ", ".join(f"{k}: {_brief(old.get(k))} → {_brief(new.get(k))}" for k in differ[:8])
        more = f" and {len(differ) - 8} more" if len(differ) > 8 else ""
        raise ConfigError(f"cannot resume {source}: it was written by another run ({shown}{more}); resume with the "
                          "settings it was started with, or start over")


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _brief(value) -> str:
    text = "(none)" if value is None else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


_STATE_SHAPE = {"epoch": int, "result": dict, "run": dict, "param_groups": list, "optimizer_scalars": dict,
                "scheduler": dict, "tensors_sha256": str}
_RESULT_SHAPE = {"history": list, "steps": int}


def _shape_errors(obj: dict, shape: dict[str, type], where: str = "") -> list[str]:
    """'key (what it is, expected what)' for each key of `shape` that `obj` lacks or holds with another type."""
    return [f"{where}{key} ({type(obj[key]).__name__ if key in obj else 'missing'}, expected {kind.__name__})"
            for key, kind in shape.items() if not isinstance(obj.get(key), kind)]


def read_checkpoint(directory: Path) -> dict | None:
    """The checkpoint's state (its `state.json`) after checking that `state.safetensors` is the file
    it was written with; None if `directory` holds no checkpoint.

    Raises `ArtifactError` for an unreadable state or a tensors file from another save.
    """
    state_path, tensors_path = directory / CHECKPOINT_STATE, directory / CHECKPOINT_TENSORS
    if not state_path.is_file():
        return None
    state = read_json_object(state_path, ArtifactError)
    if "run" not in state or "tensors_sha256" not in state:
        raise ArtifactError(f"{state_path} does not record its run and tensors (written by an older prompttune?); "
                            "it cannot be resumed safely: start over (train --overwrite)")
    wrong = _shape_errors(state, _STATE_SHAPE) or _shape_errors(state["result"], _RESULT_SHAPE, "result.")
    if wrong:
        raise ArtifactError(f"{state_path} is malformed: {', '.join(wrong)}; it cannot be resumed: start over "
                            "(train --overwrite)")
    if not tensors_path.is_file() or file_sha256(tensors_path) != state["tensors_sha256"]:
        raise ArtifactError(f"{tensors_path} does not match the checksum in {CHECKPOINT_STATE}: the files come from "
                            "different saves (a file copied in by hand?); it cannot be resumed: start over (train --overwrite)")
    return state


def resumable_checkpoint(directory: Path | None) -> dict:
    """The state of the checkpoint in `directory` that a resumed run continues (see `read_checkpoint`).

    Raises `ConfigError` if there is none: "nothing to resume: runs/x/checkpoint holds no checkpoint".
    """
    if directory is None:
        raise ConfigError("nothing to resume: no checkpoint directory was given")
    state = read_checkpoint(directory)
    if state is None:
        raise ConfigError(f"nothing to resume: {directory} holds no checkpoint (no {CHECKPOINT_STATE})")
    return state


def epochs_done(state: dict) -> str:
    """'epoch 3 of 5 done' for a checkpoint's state."""
    return f"epoch {state['epoch']} of {state['run']['train']['epochs']} done"


def checkpoint_bytes(classifier: nn.Module) -> int:
    """About the bytes of one checkpoint: the trainable parameters, Adam's two moments of each, and
    the best epoch's copy (4 × the trainable parameters' bytes; the JSON beside them is small)."""
    return 4 * trainable_bytes(classifier)


def _save_checkpoint(directory: Path, epoch, classifier, optimizer, scheduler, result, best_state, identity) -> None:
    """Write state.safetensors and state.json (with the tensors' checksum and the run's record) together."""
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
    state = {
        "epoch": epoch,
        "run": identity,
        "result": asdict(result),
        "param_groups": opt["param_groups"],
        "optimizer_scalars": scalars,
        "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
    }

    def write_state(path: Path) -> None:  # the checksum of the tensors just staged beside it
        json_writer({**state, "tensors_sha256": file_sha256(path.with_name(CHECKPOINT_TENSORS))})(path)

    write_together(directory, {CHECKPOINT_TENSORS: safetensors_writer(tensors), CHECKPOINT_STATE: write_state})


def _load_checkpoint(directory: Path, meta: dict, classifier, optimizer, scheduler, result) -> tuple[int, dict | None]:
    tensors = load_file(str(directory / CHECKPOINT_TENSORS))
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
    seconds = saved.get("seconds")  # absent from checkpoints written before it was recorded: counted from 0
    result.seconds = float(seconds) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else 0.0
    return meta["epoch"], best

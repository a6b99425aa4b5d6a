"""Recipes: a run config in, a trained task artifact out (torchtune's recipe/component split).

`run_training` is what `prompttune train` does: read data, draw the few-shot sample, build the
classifier, train, save, evaluate. Benchmarks and the demo call it too, so every number they
report comes from the same code path users run.

The output directory is held for the whole run (`outputs.claim_output`): locked, checked writable
before the model loads, and checked for free space before training. A task artifact there is
replaced only with `overwrite`; a checkpoint of an interrupted run is continued only with
`resume` (and only by the same run: `training.check_same_run`) or discarded with `overwrite`.

Under `accelerate launch` with several processes (`processes`), only the main process claims the
folder and writes in it; the others wait until it holds the folder, train their share, and return
the summary without saving or evaluating (they have no "eval").
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
from pathlib import Path

import torch
from accelerate.utils import set_seed

from . import __version__
from .artifacts import CONFIG, EVAL, PLOT, WEIGHTS, save_artifact
from .backbones import place_on
from .config import RunConfig
from .data import few_shot_split, held_out_split, load_examples, sample_per_class
from .devices import DTYPES, check_mixed_precision, check_training_dtypes, dtype_name, resolve_device, resolve_dtype
from .errors import ConfigError, DataError, OutputError
from .evaluation import evaluate
from .files import discard, path_sha256, remove_empty_dirs, remove_staging_leftovers, write_json, write_together
from .lm_head import COPY_INFO, COPY_WEIGHTS
from .methods import get_method, method_list
from .outputs import claim_output, json_marked, require_free_space
from .parameters import count_parameters, trainable_bytes
from .processes import is_main_process, launch_mixed_precision, process_count, wait_for_everyone
from .reports import headline, training_plot_writer
from .task import TaskSpec, build_classifier
from .training import (CHECKPOINT_FILES, CHECKPOINT_STATE, RESUME_TOLERATED, TRACKER_RUN, TrainResult, check_same_run,
                       checkpoint_bytes, data_record, epochs_done, examples_digest, read_checkpoint, resumable_checkpoint,
                       train)
from .verbalizers import parse_verbalizer

CHECKPOINT = "checkpoint"
LOGS = "logs"
"""Where `train.report_to` trackers write in the output directory (TensorBoard: logs/train/events.out.tfevents.*)."""
TRAIN_FILES = (CONFIG, WEIGHTS, EVAL, PLOT, COPY_WEIGHTS, COPY_INFO)
"""What `train` writes in its output directory, besides its checkpoint folder and its logs (the last
two: the copy of a fitted head)."""
TRACKER_FILES = "events.out.tfevents.*"
"""TensorBoard's event files: a run started over (--overwrite) removes those of the run it replaces."""


def is_artifact(directory: Path) -> bool:
    """Whether `directory/config.json` was written by prompttune (not, say, a model's own config)."""
    return json_marked(directory / CONFIG, "prompttune_version")


def task_labels(cfg: RunConfig, train_examples: list[dict]) -> list[str]:
    """The class order: the verbalizer's, else `task.labels`, else the sorted labels of train."""
    if cfg.prompt.verbalizer is not None:
        return list(parse_verbalizer(cfg.prompt.verbalizer).labels)
    if cfg.task.labels:
        return [str(label) for label in cfg.task.labels]
    if not train_examples:
        raise ConfigError("cannot tell the label set: give task.labels, a prompt.verbalizer or task.train")
    return sorted({ex["label"] for ex in train_examples})


def load_splits(cfg: RunConfig) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, dev, eval) examples; with task.shots, K per class for train and for dev.

    With task.eval_split, the evaluation set is carved from train first (`data.held_out_split`,
    per label), and dev and the few-shot sample are drawn from the rest: the three are disjoint.

    Every row's label is checked as it is read, so an unknown one is named with its file and line
    before anything is sampled or trained: against the verbalizer's or task.labels' labels, else
    (a head method) dev's and eval's against those train has.
    """
    t = cfg.task
    configured = not t.generation and (cfg.prompt.verbalizer is not None or bool(t.labels))
    labels = task_labels(cfg, []) if configured else None
    read = lambda path, fields, labels: load_examples(path, fields, t.label_field, labels=labels) if path else []  # noqa: E731
    # Few-shot chain-of-thought demonstrations carry their reasoning; queries do not.
    cot = [cfg.method.reasoning_field] if cfg.method.chain_of_thought == "few-shot" else []
    train_all = read(t.train, [*t.text_fields, *cot], labels)
    if labels is None and train_all and not t.generation:
        labels = task_labels(cfg, train_all)
    dev, test = read(t.dev, t.text_fields, labels), read(t.eval, t.text_fields, labels)
    if t.eval_split is not None:
        train_all, test = held_out_split(train_all, t.eval_split, t.seed, by_class=not t.generation)
        test = [{k: ex[k] for k in (*t.text_fields, "label") if k in ex} for ex in test]  # queries carry no reasoning
    if t.shots is None:
        return train_all, dev, test
    if dev:
        return sample_per_class(train_all, t.shots, t.seed), sample_per_class(dev, t.shots, t.seed + 1), test
    return (*few_shot_split(train_all, t.shots, t.seed), test)


def run_training(cfg: RunConfig, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False, splits=None,
                 log=None, device: str = "auto") -> dict:
    """Train the configured task, save it to `out_dir`, evaluate on task.eval; return a summary.

    `device` (auto | cpu | cuda | cuda:N, `devices.resolve_device`) is where it trains and evaluates;
    the model is loaded in `cfg.model_dtype` (auto resolved for that device, and recorded so).

    `splits` = (train, dev, eval) example lists replaces reading task.train/dev/eval. `resume`
    continues the run whose checkpoint is in `out_dir/checkpoint`; `overwrite` replaces a task
    artifact in `out_dir` (and discards an interrupted run's checkpoint) instead of refusing.

    Raises `OutputError` (the directory is in use, unwritable, too full, or holds an artifact or a
    checkpoint that the flags do not allow to replace) and `ConfigError` (nothing to resume, a
    checkpoint of another run, a device that is not there, fp16 mixed precision on the CPU) before the
    model loads; `OutputError` if a write fails later.

    Launched as several processes, only the main one claims `out_dir`, logs and writes; each other
    process waits until the main one holds the folder, trains its share, and returns the summary
    without "eval" (see `processes`).

    Example:
        >>> summary = run_training(load_config("configs/demo.yaml"), "runs/demo")
        >>> summary["eval"]["accuracy"]
    """
    main = is_main_process()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    place = resolve_device(device)
    # `auto` as this machine resolves it, and the launcher's precision where the config asks for none: the
    # checkpoint's run record and the artifact name what was used.
    precision = launch_mixed_precision(cfg.train.mixed_precision)
    check_mixed_precision(precision, place)
    cfg = dataclasses.replace(cfg, model_dtype=dtype_name(resolve_dtype(cfg.model_dtype, place, key="model_dtype")),
                              train=dataclasses.replace(cfg.train, mixed_precision=precision))
    check_training_dtypes(DTYPES[cfg.model_dtype], precision, trained=0)  # before the model loads
    if not main:
        log = lambda msg: None  # noqa: E731  (the main process tells what the run does, once)
    train_ex, dev_ex, test_ex = splits if splits is not None else load_splits(cfg)
    files = data_files(cfg) if splits is None else {}
    labels = [] if cfg.task.generation else task_labels(cfg, train_ex)
    for name, examples in (("train", train_ex), ("dev", dev_ex), ("eval", test_ex)) if labels else ():
        unknown = sorted({ex["label"] for ex in examples} - set(labels))
        if unknown:
            raise DataError(f"the {name} data has label(s) {unknown} that the task does not know; task labels: {labels}")
    spec = task_spec(cfg, labels, train_ex)
    if not main:
        wait_for_everyone()  # until the main process holds the folder (if it fails, the launcher ends this one)
        return _train_and_save(cfg, spec, Path(out_dir), (train_ex, dev_ex, test_ex), resume=resume, log=log, files=files,
                               device=place)
    # A resume replaces the artifact its run may have saved before; an interrupted run's checkpoint is
    # refused below with its own message (pass --resume or --overwrite), which covers the artifact too.
    interrupted = (Path(out_dir) / CHECKPOINT / CHECKPOINT_STATE).is_file()
    with claim_output(out_dir, owned=TRAIN_FILES, what="a task artifact", overwrite=overwrite or resume or interrupted,
                      is_ours=is_artifact) as out:
        _check_checkpoint(cfg, out / CHECKPOINT, (train_ex, dev_ex), resume=resume, overwrite=overwrite, log=log)
        wait_for_everyone()  # the others start once the folder is held and checked
        return _train_and_save(cfg, spec, out, (train_ex, dev_ex, test_ex), resume=resume, log=log, files=files,
                               device=place)


def task_spec(cfg: RunConfig, labels: list[str], train_examples: list[dict]) -> TaskSpec:
    """The task a run config defines (what its artifact's `config.json` stores), with `labels` (the
    class order, `task_labels`; none for a generation task) and the training examples (the pool
    demonstrations are drawn from)."""
    return TaskSpec(
        method=cfg.method.name,
        model=_absolute_if_local(cfg.model),
        text_fields=list(cfg.task.text_fields),
        labels=labels,
        template=cfg.prompt.template,
        verbalizer=parse_verbalizer(cfg.prompt.verbalizer).to_config() if cfg.prompt.verbalizer is not None else None,
        word_score=cfg.prompt.word_score,
        model_kind=cfg.model_kind,
        lm_head=_absolute_if_local(cfg.lm_head),
        max_length=cfg.train.max_length,
        options=cfg.method.options(),
        generation=cfg.task.generation,
        demonstrations=_demonstrations(cfg, train_examples),
        chat_template=None if cfg.prompt.chat_template == "auto" else cfg.prompt.chat_template,
        response_only_loss=cfg.task.response_only_loss,
        decoding=cfg.decoding.to_dict(),
    )


def _check_checkpoint(cfg: RunConfig, ckpt: Path, splits: tuple, *, resume: bool, overwrite: bool, log) -> None:
    """Before the model loads: `resume` needs a checkpoint of this very run, config and data (and
    says what it resumes); otherwise an interrupted run's checkpoint is refused, or with `overwrite`
    discarded. Staging folders a killed checkpoint save left are removed (the run holds `ckpt`'s
    parent, so no save into it is running)."""
    remove_staging_leftovers(ckpt)
    if resume:
        state = resumable_checkpoint(ckpt)
        check_same_run(state["run"], {**_run_config(cfg), "data": data_record(splits[0], splits[1])}, ckpt)
        log(f"resuming {ckpt}: {epochs_done(state)}")
    elif overwrite:
        # The replaced run's tracker logs go only where prompttune's own run was (its artifact or
        # checkpoint): event files under another tool's logs/train are not ours to delete.
        replaced_ours = is_artifact(ckpt.parent) or read_checkpoint(ckpt) is not None
        discard(ckpt, CHECKPOINT_FILES)  # the replaced run's
        if replaced_ours:
            logs = ckpt.parent / LOGS / TRACKER_RUN
            discard(logs, [p.name for p in logs.glob(TRACKER_FILES)])
            remove_empty_dirs([logs.parent])
    elif (state := read_checkpoint(ckpt)) is not None:
        raise OutputError(f"{ckpt.parent} holds the checkpoint of an interrupted run ({epochs_done(state)}): pass --resume "
                          "to continue it, or --overwrite to start over")


def _train_and_save(cfg: RunConfig, spec: TaskSpec, out: Path, splits: tuple, *, resume: bool, log,
                    files: dict[str, dict], device) -> dict:
    """Build, train (checkpointing into out/checkpoint), save the artifact, evaluate; return the summary.
    `files`: the data files the splits were read from (`data_files`), for the training record. In a
    process other than the main one of a launch: build and train only, and return the summary."""
    method = get_method(cfg.method.name)
    train_ex, dev_ex, test_ex = splits
    set_seed(cfg.train.seed)  # soft prompts, LoRA and adapters are initialised here: make it repeatable
    classifier, fp = build_classifier(spec, head_seed=cfg.train.seed, **load_settings(cfg, device))
    place_on(classifier, device)  # a method that trains nothing (zero-shot, in-context) is evaluated there too
    trainable, total = count_parameters(classifier)
    if trainable and not train_ex:
        raise ConfigError(f"method {method.name!r} trains {trainable:,} parameters: set task.train to a data file")
    # The most the run adds at once: the artifact (at most the trainable parameters) and, while a
    # checkpoint is replaced, the old and the new one.
    if cfg.train.checkpoint:
        require_free_space(out, trainable_bytes(classifier) + 2 * checkpoint_bytes(classifier),
                           "the task artifact and two checkpoints of weights, Adam moments and the best epoch")
    else:
        require_free_space(out, trainable_bytes(classifier), "the task artifact")
    transfer = None
    if cfg.method.init_from == "most_similar":
        classifier, transfer = _start_from_most_similar(cfg, spec, fp, classifier, train_ex, log, device)
    half = sum(p.numel() for p in classifier.parameters() if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16))
    check_training_dtypes(DTYPES[cfg.model_dtype], cfg.train.mixed_precision, half)
    log(f"method {method.name}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%); "
        f"{len(train_ex)} train / {len(dev_ex)} dev / {len(test_ex)} eval examples; {run_setting(cfg, device)}")
    if half:
        log(f"note: method {method.name} trains {half:,} of the model's own weights in {cfg.model_dtype} (model_dtype): "
            "Adam's small updates round away there; model_dtype: float32 with train.mixed_precision: bf16 keeps them in "
            "float32")
    ckpt = out / CHECKPOINT
    result = train(classifier, train_ex, dev_ex, cfg.train, checkpoint_dir=ckpt, resume=resume,
                   run={**_run_config(cfg), "backbone": fp}, log_dir=out / LOGS, device=device)
    summary = {"method": method.name, "trainable_parameters": trainable, "total_parameters": total,
               "best_epoch": result.best_epoch, "best_dev": result.best_dev, "history": result.history,
               "stopped_early": result.stopped_early, "seconds": round(result.seconds, 3)}
    if not spec.generation:  # what `eval`'s majority baseline is the majority of
        summary["train_label_counts"] = {label: sum(ex["label"] == label for ex in train_ex) for label in spec.labels}
    if transfer is not None:
        summary["transfer"] = transfer
    if cfg.task.eval_split is not None:
        summary["eval_split"] = {"fraction": cfg.task.eval_split, "seed": cfg.task.seed, "from": cfg.task.train,
                                 "examples": len(test_ex)}
    if not is_main_process():
        return summary  # the main process saves and evaluates the weights every process holds
    record = {**summary, **training_record(cfg, splits, result, files)}
    save_artifact(out, spec, classifier, fp, extra={"training": record, "label_field": cfg.task.label_field},
                  mixed_precision=cfg.train.mixed_precision)
    if result.history:
        write_together(out, {PLOT: training_plot_writer(result.history, result.best_epoch)})
    # The run finished and its result is saved: the resume checkpoint (optimizer state, several
    # times the artifact's size) has no further use. Files of anyone else in the folder stay.
    discard(ckpt, CHECKPOINT_FILES)
    if test_ex:
        summary["eval"] = evaluate(classifier, test_ex, batch_size=cfg.train.eval_batch_size, progress=cfg.train.progress,
                                   details=True, train_counts=summary.get("train_label_counts"), decoding=cfg.decoding)
        write_json(out / EVAL, summary["eval"])
        log(f"eval: {json.dumps(headline(summary['eval']))}")
    return summary


def data_files(cfg: RunConfig) -> dict[str, dict]:
    """Each of task.train/dev/eval the config names: {"path": absolute path, "sha256": `path_sha256`}.
    Taken right after the files are read, so the checksums are of what was read."""
    return {split: {"path": str(Path(path).resolve()), "sha256": path_sha256(path)}
            for split in ("train", "dev", "eval") if (path := getattr(cfg.task, split))}


def training_record(cfg: RunConfig, splits: tuple, result: TrainResult, files: dict[str, dict]) -> dict:
    """How a task was trained, for its `config.json` (`training`, beside the summary and the per-epoch
    `history`): the train.* settings that shape the weights (as a checkpoint records them, less those
    `RESUME_TOLERATED` names), the few-shot sample (`task.shots`, `task.seed`), each split's file
    (`files`, from `data_files`; path and sha256 null for examples given otherwise) and a digest of
    its examples (as a checkpoint records train and dev), the library versions, and the wall-clock
    seconds of training.

    Example:
        >>> training_record(cfg, (train_ex, dev_ex, test_ex), result, data_files(cfg))["data"]["train"]
        {'path': '/data/sst2/train.tsv', 'sha256': '9c1e…', 'examples': '32 examples, sha256 1f0c…'}
    """
    examples = {**data_record(splits[0], splits[1]), "eval": examples_digest(splits[2])}
    no_file = {"path": None, "sha256": None}
    return {
        "train": {k: v for k, v in dataclasses.asdict(cfg.train).items() if f"train.{k}" not in RESUME_TOLERATED},
        "sample": {"shots": cfg.task.shots, "seed": cfg.task.seed},
        "data": {split: {**files.get(split, no_file), "examples": examples[split]} for split in ("train", "dev", "eval")},
        "versions": library_versions(),
    }


def library_versions() -> dict[str, str | None]:
    """The versions of Python and of the libraries a task's numbers depend on (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"prompttune": __version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate", "safetensors"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def run_setting(cfg: RunConfig, device: torch.device) -> str:
    """How the run computes, in words: 'bfloat16 on cuda:0, nf4 base, bf16 mixed precision, gradient
    checkpointing, 2 processes' (only what is not the plain default)."""
    parts = [f"{cfg.model_dtype} on {device if cfg.device_map is None else f'device_map {cfg.device_map}'}"]
    if cfg.quantization != "none":
        parts.append(f"{cfg.quantization} base")
    if cfg.train.mixed_precision != "no":
        parts.append(f"{cfg.train.mixed_precision} mixed precision")
    if cfg.train.gradient_checkpointing:
        parts.append("gradient checkpointing")
    if (n := process_count()) > 1:
        parts.append(f"{n} processes, batch {cfg.train.batch_size} across them")
    return ", ".join(parts)


def load_settings(cfg: RunConfig, device: torch.device) -> dict:
    """How the run's model loads, as `build_classifier` takes it: its dtype (`model_dtype`, resolved), its
    device_map and max_memory, its quantization, and the device a quantized base is quantized onto."""
    return {"dtype": DTYPES[cfg.model_dtype], "device_map": cfg.device_map, "max_memory": cfg.max_memory,
            "quantization": cfg.quantization, "device": device}


def _run_config(cfg: RunConfig) -> dict:
    """The whole resolved run config as JSON values: what a checkpoint records of its run."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def _demonstrations(cfg: RunConfig, train_ex: list[dict]) -> list[dict] | None:
    """What the task keeps of its training data to write into inputs: in-context's K
    demonstrations (chosen now, in order), or the pool LM-BFF demonstrations are drawn from."""
    names = method_list(cfg.method.name)
    keep = [*cfg.task.text_fields, "label", cfg.method.reasoning_field]
    slim = lambda examples: [{k: ex[k] for k in keep if k in ex} for ex in examples]  # noqa: E731
    if "in-context" in names:
        from .in_context import choose_context

        k = cfg.method.context_examples
        return slim(choose_context(train_ex, k, cfg.train.seed)) if k else []
    return slim(train_ex) if cfg.method.demonstrations else None


def _start_from_most_similar(cfg: RunConfig, spec: TaskSpec, fp: dict, classifier, train_ex: list[dict], log, device):
    """SPoT's retrieval: train briefly, find the closest stored prompt, restart from it."""
    from .prompt_bank import init_from_artifact, most_similar

    brief = dataclasses.replace(cfg.train, epochs=cfg.method.transfer_epochs, checkpoint=False,
                                early_stopping_patience=None, report_to="none")
    train(classifier, train_ex, None, brief, device=device)
    found = most_similar(classifier, cfg.method.prompt_bank, fp)
    set_seed(cfg.train.seed)
    fresh, _ = build_classifier(spec, head_seed=cfg.train.seed, **load_settings(cfg, device))
    place_on(fresh, device)
    if found is None:
        log(f"prompt bank {cfg.method.prompt_bank}: no prompt of this method and shape on this backbone; starting fresh")
        return fresh, {"from": None}
    path, similarity = found
    init_from_artifact(fresh, path, fp)
    log(f"prompt transfer: starting from {path} (cosine similarity {similarity:.3f} after {brief.epochs} brief epoch(s))")
    return fresh, {"from": str(path), "cosine": round(similarity, 4)}


def _absolute_if_local(path: str | None) -> str | None:
    """A local path is stored absolute, so the artifact loads from any working directory."""
    return str(Path(path).resolve()) if path and Path(path).exists() else path

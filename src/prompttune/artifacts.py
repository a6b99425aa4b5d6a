"""Task artifacts: a directory with `config.json` and `weights.safetensors`.

`config.json` holds the task spec (method, template, verbalizer, labels...), the base
backbone's fingerprint, the parameter counts and the weights' checksum; `weights.safetensors`
holds only what the method trained (nothing for zero-shot). The two files are replaced together
(`files.write_together`: weights, then the config that names their checksum), and reading them
gives a consistent pair or an error. Saving is a read of the classifier: P-tuning's encoder and
prefix-tuning's MLP are evaluated into the vectors they compute, and training can go on
unchanged. Loading is strict (every saved key and shape must match what the method trains) and
refuses a backbone other than the one the task was made for.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from . import __version__
from .backbones import Backbone, compare_fingerprints
from .errors import ArtifactError, PromptTuneError
from .files import file_sha256, json_writer, read_json_object, safetensors_writer, write_together
from .model_parts import ModelPart, detach_parts
from .parameters import count_parameters, trainable_state_dict
from .scoring import WORD_SCORES
from .task import TaskSpec, build_classifier

CONFIG, WEIGHTS = "config.json", "weights.safetensors"
EVAL = "eval.json"
"""An evaluation of the saved task (`train` writes it); a new save removes the one of the task it replaces."""


def save_artifact(directory: str | Path, spec: TaskSpec, classifier: nn.Module, base_fingerprint: dict, extra: dict | None = None) -> Path:
    """Write the task to `directory` (created if needed), replacing a task saved there; return the
    directory. The classifier is only read: it trains on unchanged after a save.

    Raises `OutputError` if the files cannot be written (the previous ones then stay as they were).

    Example:
        >>> clf, fp = build_classifier(spec)
        >>> save_artifact("runs/sst2", spec, clf, fp)
    """
    directory = Path(directory)
    weights = stored_state_dict(classifier)
    trainable, total = count_parameters(classifier)
    stored = sum(t.numel() for t in weights.values())
    config = {
        "prompttune_version": __version__,
        **spec.to_dict(),
        "backbone": base_fingerprint,
        # Counted as a reload has them: the stored (folded) form, not P-tuning's encoder.
        "trainable_parameters": stored,
        "total_parameters": total - trainable + stored,
        # What this task costs beside the shared model: the numbers it stores, and their share.
        "stored_numbers": stored,
        "fraction_of_backbone": stored / count_parameters(classifier.model)[1],
        **(extra or {}),
    }

    def write_config(path: Path) -> None:  # the checksum of the weights just staged beside it
        json_writer({**config, "weights": {"file": WEIGHTS, "sha256": file_sha256(path.with_name(WEIGHTS)),
                                           "tensors": len(weights)}})(path)

    # One metadata key: safetensors writes several in a varying order, and equal saves should be equal bytes.
    write_together(directory, {WEIGHTS: safetensors_writer(weights, {"format": "pt"}), CONFIG: write_config},
                   replaces=[EVAL])
    return directory


def stored_state_dict(classifier: nn.Module) -> dict[str, torch.Tensor]:
    """What an artifact stores: the trainable parameters by name, each part's in its stored form
    (`ModelPart.stored`: P-tuning's encoder and prefix-tuning's MLP replaced by the vectors they
    compute, under the names `build_classifier(spec, folded=True)` gives them; LoRA matrices under
    peft's "default" adapter name). A read: the classifier, its parameters and their flags are unchanged.

    Example:
        >>> sorted(stored_state_dict(p_tuning_clf))     # trains soft.encoder.*; stores:
        ['soft.vectors']
    """
    state = trainable_state_dict(classifier)
    for name, part in classifier.named_children():
        if isinstance(part, ModelPart):
            state = part.stored(state, name)
    return state


def _texts(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# What each key of config.json must hold to rebuild the task: (check, what it should be).
_CONFIG_KEYS = {
    "method": (lambda v: isinstance(v, str) or (_texts(v) and bool(v)), "a method name or a list of them"),
    "model": (lambda v: isinstance(v, str) and bool(v), "a model id or path"),
    "text_fields": (lambda v: _texts(v) and bool(v), "a non-empty list of column names"),
    "labels": (_texts, "a list of labels"),
    "template": (lambda v: v is None or isinstance(v, str), "a template or null"),
    "verbalizer": (lambda v: v is None or (isinstance(v, dict) and all(_texts(w) for w in v.values())),
                   "an object of label → list of words, or null"),
    "word_score": (lambda v: v in WORD_SCORES, f"one of {list(WORD_SCORES)}"),
    "max_length": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a whole number ≥ 1"),
    "options": (lambda v: isinstance(v, dict), "an object of method options"),
    "generation": (lambda v: isinstance(v, bool), "true or false"),
    "demonstrations": (lambda v: v is None or (isinstance(v, list) and all(isinstance(d, dict) for d in v)),
                       "a list of examples or null"),
    "backbone": (lambda v: isinstance(v, dict) and all(isinstance(v.get(k), str) for k in ("name", "kind", "embedding_sha256")),
                 "the backbone's fingerprint (name, kind, embedding_sha256...)"),
    "weights": (lambda v: isinstance(v, dict) and isinstance(v.get("sha256"), str), "the weights file's sha256"),
}
_REQUIRED = ("method", "model", "text_fields", "labels", "backbone", "weights")


def read_config(directory: str | Path) -> dict:
    """An artifact's `config.json`, checked key by key (a hand-edited file is refused naming the key).

    Raises `ArtifactError`: "runs/x/config.json: key 'labels' holds 5, expected a list of labels".
    """
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise ArtifactError(f"{str(directory)!r} is not a task artifact: it has no {CONFIG}")
    config = read_json_object(path, ArtifactError)
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise ArtifactError(f"{path} lacks the key(s) {missing}; was it written by prompttune?")
    for key, (ok, what) in _CONFIG_KEYS.items():
        if key in config and not ok(config[key]):
            raise ArtifactError(f"{path}: key {key!r} holds {json.dumps(config[key])[:80]}, expected {what}")
    if not config["labels"] and not config.get("generation"):
        raise ArtifactError(f"{path}: key 'labels' is empty; a classification task needs its labels")
    return config


def spec_from_config(config: dict) -> TaskSpec:
    fields = TaskSpec.__dataclass_fields__
    return TaskSpec(**{k: v for k, v in config.items() if k in fields})


def load_artifact(directory: str | Path, backbone: Backbone | None = None) -> tuple[nn.Module, dict]:
    """Rebuild a saved task: (classifier ready for prediction, its config).

    On a given `backbone` (shared with other tasks) a `merge: true` LoRA task stays unmerged:
    merging would change the weights every task on the backbone reads (the scores agree to float
    tolerance). Raises `ArtifactError` for a task that cannot be rebuilt or whose weights do not fit it,
    `ModelError` for one made for another backbone; a given backbone then keeps nothing of the task.

    Example:
        >>> clf, config = load_artifact("runs/sst2")
        >>> evaluate(clf, examples)["accuracy"]
    """
    directory = Path(directory)
    config, weights = read_saved(directory)
    spec = spec_from_config(config)
    try:
        classifier, fp = build_classifier(spec, backbone, folded=True)
    except PromptTuneError as e:
        raise ArtifactError(f"cannot rebuild the task saved in {str(directory)!r}: {e}") from e
    try:
        compare_fingerprints(config["backbone"], fp)
        load_trainable(classifier, weights, source=str(directory / WEIGHTS))
    except Exception:
        detach_parts(classifier)
        raise
    if spec.method_options().merge and backbone is None:
        from .methods.lora import merge_lora

        merge_lora(classifier.model)
    classifier.eval()
    return classifier, config


def read_saved(directory: str | Path, *, attempts: int = 5, wait_s: float = 0.02) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, weights) of a saved task, as one consistent pair: the weights are read once, and
    their bytes must have the checksum the config names.

    A save replaces the weights first and the config right after, so a reader between the two sees
    the new weights with the old config; it reads the config again (`attempts` times, `wait_s`
    apart) before concluding that the files come from different saves.

    Raises `ArtifactError` for a missing or unreadable file, or a pair that does not match.

    Example:
        >>> config, weights = read_saved("runs/sst2")
    """
    directory = Path(directory)
    weights_path = directory / WEIGHTS
    for attempt in range(attempts):
        if attempt:
            time.sleep(wait_s)
        config = read_config(directory)
        if not weights_path.is_file():
            raise ArtifactError(f"{str(directory)!r} has {CONFIG} but no {WEIGHTS}")
        data = weights_path.read_bytes()
        if hashlib.sha256(data).hexdigest() == config.get("weights", {}).get("sha256"):
            try:
                return config, load_safetensors(data)
            except SafetensorError as e:
                raise ArtifactError(f"{weights_path} is not a readable safetensors file: {e}") from None
    raise ArtifactError(
        f"{weights_path} does not match the checksum in {CONFIG}: the files come from different saves "
        "(an interrupted save, or a file copied in by hand)"
    )


def load_trainable(classifier: nn.Module, weights: dict, *, source: str) -> None:
    """Load saved trainable parameters strictly: same names, same shapes, nothing left out. Each part
    first maps its saved names to the task's own (`ModelPart.loaded`)."""
    for name, part in classifier.named_children():
        if isinstance(part, ModelPart):
            weights = part.loaded(weights, name)
    expected = trainable_state_dict(classifier)
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ArtifactError(
            f"{source} does not fit the task's method: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for name, tensor in weights.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ArtifactError(
                f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)}"
            )
    classifier.load_state_dict(weights, strict=False)

"""Task artifacts: a directory with `config.json` and `weights.safetensors`.

`config.json` holds the task spec (method, template, verbalizer, labels...), the base
backbone's fingerprint, the parameter counts and the weights' checksum; `weights.safetensors`
holds only what the method trained (nothing for zero-shot). Both files are written atomically;
loading is strict (every saved key and shape must match what the method trains) and refuses a
backbone other than the one the task was made for.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from . import __version__
from .backbones import Backbone, compare_fingerprints
from .deep_prompts import DeepPrompt
from .errors import ArtifactError, PromptTuneError
from .files import file_sha256, write_json, write_safetensors
from .parameters import count_parameters, trainable_state_dict
from .soft_prompts import SoftPrompt
from .task import TaskSpec, build_classifier

CONFIG, WEIGHTS = "config.json", "weights.safetensors"


def save_artifact(directory: str | Path, spec: TaskSpec, classifier: nn.Module, base_fingerprint: dict, extra: dict | None = None) -> Path:
    """Write the task to `directory` (created if needed); return the directory.

    Example:
        >>> clf, fp = build_classifier(spec)
        >>> save_artifact("runs/sst2", spec, clf, fp)
    """
    directory = Path(directory)
    fold_prompts(classifier)
    weights = trainable_state_dict(classifier)
    trainable, total = count_parameters(classifier)
    stored = sum(t.numel() for t in weights.values())
    write_safetensors(directory / WEIGHTS, weights, metadata={"format": "pt", "prompttune": __version__})
    config = {
        "prompttune_version": __version__,
        **spec.to_dict(),
        "backbone": base_fingerprint,
        "trainable_parameters": trainable,
        "total_parameters": total,
        # What this task costs beside the shared model: the numbers it stores, and their share.
        "stored_numbers": stored,
        "fraction_of_backbone": stored / count_parameters(classifier.model)[1],
        "weights": {"file": WEIGHTS, "sha256": file_sha256(directory / WEIGHTS), "tensors": len(weights)},
        **(extra or {}),
    }
    write_json(directory / CONFIG, config)
    return directory


def fold_prompts(classifier: nn.Module) -> None:
    """Fold training-only reparameterizations (P-tuning's encoder, prefix-tuning's MLP) into the
    vectors they compute; the classifier's outputs do not change."""
    for module in list(classifier.modules()):
        if isinstance(module, (SoftPrompt, DeepPrompt)):
            module.fold()


def read_config(directory: str | Path) -> dict:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise ArtifactError(f"{str(directory)!r} is not a task artifact: it has no {CONFIG}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON: {e}") from None
    missing = [k for k in ("method", "model", "text_fields", "labels", "backbone") if k not in config]
    if missing:
        raise ArtifactError(f"{path} lacks the key(s) {missing}; was it written by prompttune?")
    return config


def spec_from_config(config: dict) -> TaskSpec:
    fields = TaskSpec.__dataclass_fields__
    return TaskSpec(**{k: v for k, v in config.items() if k in fields})


def load_artifact(directory: str | Path, backbone: Backbone | None = None) -> tuple[nn.Module, dict]:
    """Rebuild a saved task: (classifier ready for prediction, its config).

    Example:
        >>> clf, config = load_artifact("runs/sst2")
        >>> evaluate(clf, examples)["accuracy"]
    """
    directory = Path(directory)
    config = read_config(directory)
    weights_path = directory / WEIGHTS
    if not weights_path.is_file():
        raise ArtifactError(f"{str(directory)!r} has {CONFIG} but no {WEIGHTS}")
    if file_sha256(weights_path) != config.get("weights", {}).get("sha256"):
        raise ArtifactError(
            f"{weights_path} does not match the checksum in {CONFIG}: the files come from different saves "
            "(an interrupted save, or a file copied in by hand)"
        )
    spec = spec_from_config(config)
    try:
        classifier, fp = build_classifier(spec, backbone, folded=True)
    except PromptTuneError as e:
        raise ArtifactError(f"cannot rebuild the task saved in {str(directory)!r}: {e}") from e
    compare_fingerprints(config["backbone"], fp)
    try:
        weights = load_file(str(weights_path))
    except SafetensorError as e:
        raise ArtifactError(f"{weights_path} is not a readable safetensors file: {e}") from None
    load_trainable(classifier, weights, source=str(weights_path))
    if spec.method_options().merge:
        from .methods.lora import merge_lora

        merge_lora(classifier.model)
    classifier.eval()
    return classifier, config


def load_trainable(classifier: nn.Module, weights: dict, *, source: str) -> None:
    """Load saved trainable parameters strictly: same names, same shapes, nothing left out."""
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

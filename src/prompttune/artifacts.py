"""Task artifacts: a directory with `config.json` and `weights.safetensors`.

`config.json` holds the task spec (method, template, verbalizer, labels, the method options that
differ from their defaults...), the base backbone's fingerprint, the parameter counts, the weights'
checksum and, for a trained task, how it was trained (`training`); `weights.safetensors` holds only
what the method trained (nothing for zero-shot). A task on a fitted MLM head carries a copy of it
(`lm_head.safetensors` + `lm_head.json`), named in `config.json` relative to the artifact, so the
folder is self-contained: it can be moved or copied and loads the same. The files are replaced
together (`files.write_together`: the head, the weights, then the config that names their
checksum), and reading them gives a consistent pair or an error. Saving is a read of the classifier: P-tuning's encoder and
prefix-tuning's MLP are evaluated into the vectors they compute, and training can go on
unchanged. Loading is strict (every saved key and shape must match what the method trains) and
refuses a backbone other than the one the task was made for.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from . import __version__
from .backbones import EMBEDDING_DIGESTS, KINDS, Backbone, compare_fingerprints, place_on
from .devices import DTYPES, MIXED_PRECISION, dtype_name, model_device
from .errors import ArtifactError, ModelError, PromptTuneError
from .files import file_sha256, json_writer, read_json_object, safetensors_writer, write_together
from .lm_head import COPY_INFO, COPY_WEIGHTS, head_copy
from .methods import MethodOptions
from .model_parts import ModelPart, detach_parts
from .parameters import count_parameters, trainable_state_dict
from .quantization import QUANTIZATIONS, note_difference, quantization_of
from .scoring import WORD_SCORES
from .task import TaskSpec, build_classifier
from .training import TrainConfig

CONFIG, WEIGHTS = "config.json", "weights.safetensors"
EVAL = "eval.json"
"""An evaluation of the saved task (`train` writes it); a new save removes the one of the task it replaces."""
PLOT = "training.png"
"""The training run's loss and dev accuracy per epoch (`train` writes it); not part of the task (loading
never reads it), and a new save removes the one of the task it replaces."""


def save_artifact(directory: str | Path, spec: TaskSpec, classifier: nn.Module, base_fingerprint: dict, extra: dict | None = None,
                  *, mixed_precision: str = "no") -> Path:
    """Write the task to `directory` (created if needed), replacing a task saved there; return the
    directory. The classifier is only read: it trains on unchanged after a save. `config.json` records
    the dtype it was trained in (`dtype`: the model's weights' dtype and `mixed_precision`, the
    autocast it trained under), and `weights.safetensors` holds the trained tensors as they are: what a
    method added in float32, the model's own weights a method trains in the model's dtype. A task on a fitted
    head (`spec.lm_head`) gets a copy of the head's files, checked against its checksum, and
    `config.json` names the copy (`lm_head.safetensors`), not the place it was copied from.

    Raises `OutputError` if the files cannot be written (the previous ones then stay as they were),
    `ModelError` if the head's files cannot be read or do not match their checksum.

    Example:
        >>> clf, fp = build_classifier(spec)
        >>> save_artifact("runs/sst2", spec, clf, fp)
    """
    directory = Path(directory)
    weights = stored_state_dict(classifier)
    trainable, total = count_parameters(classifier)
    stored = sum(t.numel() for t in weights.values())
    head = head_copy(spec.lm_head) if spec.lm_head is not None else {}
    chat = getattr(classifier, "chat", None)  # a generation task's chat template (`chat.ChatFormat`), if it uses one
    config = {
        "prompttune_version": __version__,
        **spec.to_dict(),
        "lm_head": COPY_WEIGHTS if head else None,
        "dtype": {"model_dtype": dtype_name(model_dtype(classifier)), "mixed_precision": mixed_precision},
        # What `auto` chose, and which template: the reload renders prompts exactly as training did.
        "chat_template": chat is not None,
        **({"chat_template_sha256": chat.sha256} if chat is not None else {}),
        "backbone": base_fingerprint,
        # For information: the task loads on the base quantized otherwise too (`quantization.note_difference`).
        "quantization": quantization_of(classifier.model),
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
    # A replaced task's head copy goes when the new task has none.
    write_together(directory, {**head, WEIGHTS: safetensors_writer(weights, {"format": "pt"}), CONFIG: write_config},
                   replaces=[EVAL, PLOT, *([] if head else [COPY_WEIGHTS, COPY_INFO])])
    return directory


def lm_head_location(config: dict, directory: str | Path) -> str | None:
    """Where the fitted head of the task saved in `directory` is: its copy inside the artifact (the
    relative name `config.json` holds), or the absolute path older artifacts recorded (they load as
    they did, while the head is still there). None for a task without a fitted head.

    Example:
        >>> lm_head_location(read_config("runs/sst2"), "runs/sst2")
        'runs/sst2/lm_head.safetensors'
    """
    head = config.get("lm_head")
    return None if head is None else str(Path(directory) / head)  # an absolute path stays as it is


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


def _whole(value, least: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _train_settings(value) -> str | None:
    """Why `training.train` cannot be the settings of a run (`TrainConfig`'s own checks), or None."""
    if not isinstance(value, dict):
        return "not an object"
    unknown = sorted(set(value) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        return f"unknown key(s) {unknown}"
    try:
        TrainConfig(**value)
    except PromptTuneError as e:
        return str(e)
    return None


def _decoding_settings(value) -> str | None:
    """Why `decoding` cannot be a task's decoding settings (`generation.Decoding`'s own checks), or None."""
    from .generation import Decoding

    try:
        Decoding.from_dict(value)
    except PromptTuneError as e:
        return str(e)
    return None


_SHA256 = re.compile(r"[0-9a-f]{64}")
_DTYPE_NAMES = [name for name in DTYPES if name != "auto"]
_OPTION_NAMES = frozenset(MethodOptions.__dataclass_fields__)

# What each key of config.json must hold to rebuild the task: (check, what it should be).
_CONFIG_KEYS = {
    "method": (lambda v: isinstance(v, str) or (_texts(v) and bool(v)), "a method name or a list of them"),
    "model": (lambda v: isinstance(v, str) and bool(v), "a model id or path"),
    "text_fields": (lambda v: _texts(v) and bool(v), "a non-empty list of column names"),
    "labels": (_texts, "a list of labels"),
    "template": (lambda v: v is None or isinstance(v, str), "a template or null"),
    "verbalizer": (lambda v: v is None or (isinstance(v, dict) and all(_texts(w) for w in v.values())),
                   "an object of label → list of words, or null"),
    "model_kind": (lambda v: v is None or v in KINDS, f"one of {', '.join(KINDS)}, or null"),
    "lm_head": (lambda v: v is None or (isinstance(v, str) and bool(v)),
                f"the fitted head's file in the artifact ({COPY_WEIGHTS!r}) or null"),
    "word_score": (lambda v: v in WORD_SCORES, f"one of {list(WORD_SCORES)}"),
    "max_length": (lambda v: _whole(v, 1), "a whole number ≥ 1"),
    "options": (lambda v: isinstance(v, dict) and set(v) <= _OPTION_NAMES,
                f"an object of method options ({', '.join(sorted(_OPTION_NAMES))})"),
    "generation": (lambda v: isinstance(v, bool), "true or false"),
    "chat_template": (lambda v: isinstance(v, bool), "true or false"),
    "response_only_loss": (lambda v: isinstance(v, bool), "true or false"),
    "chat_template_sha256": (lambda v: isinstance(v, str) and bool(_SHA256.fullmatch(v)), "64 hex digits"),
    "demonstrations": (lambda v: v is None or (isinstance(v, list) and all(isinstance(d, dict) for d in v)),
                       "a list of examples or null"),
    "quantization": (lambda v: v in QUANTIZATIONS, f"one of {', '.join(QUANTIZATIONS)}"),
    "backbone": (lambda v: isinstance(v, dict) and all(isinstance(v.get(k), str) for k in ("name", "kind"))
                 and any(isinstance(v.get(k), str) for k in EMBEDDING_DIGESTS),
                 f"the backbone's fingerprint (name, kind, one of {', '.join(EMBEDDING_DIGESTS)}...)"),
    "dtype": (lambda v: isinstance(v, dict) and set(v) == {"model_dtype", "mixed_precision"}
              and v["model_dtype"] in _DTYPE_NAMES and v["mixed_precision"] in MIXED_PRECISION,
              f"an object {{model_dtype: one of {', '.join(_DTYPE_NAMES)}, mixed_precision: one of "
              f"{', '.join(MIXED_PRECISION)}}}"),
    "weights": (lambda v: isinstance(v, dict) and isinstance(v.get("sha256"), str), "the weights file's sha256"),
    "training": (lambda v: isinstance(v, dict), "an object recording how the task was trained"),
    "decoding": (lambda v: _decoding_settings(v) is None, lambda v: f"decoding settings ({_decoding_settings(v)})"),
}
_REQUIRED = ("method", "model", "text_fields", "labels", "backbone", "weights")

_DATA_KEYS = {
    "path": (lambda v: v is None or isinstance(v, str), "the data file's absolute path or null"),
    "sha256": (lambda v: v is None or (isinstance(v, str) and bool(_SHA256.fullmatch(v))), "64 hex digits or null"),
    "examples": (lambda v: isinstance(v, str), "a digest of the examples ('8 examples, sha256 …')"),
}
# What each key of config.json's `training` must hold (`recipes.training_record`); those it lacks are
# absent from artifacts written before it recorded them.
_TRAINING_KEYS = {
    "train": (lambda v: _train_settings(v) is None, lambda v: f"the train.* settings of a run ({_train_settings(v)})"),
    "sample": (lambda v: isinstance(v, dict) and (v.get("shots") is None or _whole(v["shots"], 1)) and _whole(v.get("seed"), 0),
               "an object {shots: a whole number ≥ 1 or null, seed: a whole number ≥ 0}"),
    "data": (lambda v: isinstance(v, dict) and all(isinstance(d, dict) for d in v.values()),
             "an object of train/dev/eval → {path, sha256, examples}"),
    "versions": (lambda v: isinstance(v, dict) and all(x is None or isinstance(x, str) for x in v.values()),
                 "an object of library → version"),
    "seconds": (lambda v: _number(v) and v >= 0, "a number of seconds ≥ 0"),
    "history": (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v), "a list of per-epoch records"),
    "best_epoch": (lambda v: v is None or _whole(v, 1), "a whole number ≥ 1 or null"),
    "best_dev": (lambda v: v is None or isinstance(v, dict), "an object of dev metrics or null"),
}


def _check_keys(path: Path, obj: dict, table: dict, where: str = "") -> None:
    """Refuse the first key of `obj` named in `table` whose value fails its check, naming the dotted
    key. `table`: key → (check, what it should be: text, or a function of the value giving it)."""
    for key, (ok, what) in table.items():
        if key in obj and not ok(obj[key]):
            expected = what(obj[key]) if callable(what) else what
            raise ArtifactError(f"{path}: key {where + key!r} holds {json.dumps(obj[key])[:80]}, expected {expected}")


def read_config(directory: str | Path) -> dict:
    """An artifact's `config.json`, checked key by key (a hand-edited file is refused naming the key).

    Raises `ArtifactError`: "runs/x/config.json: key 'labels' holds 5, expected a list of labels"
    (nested keys by their dotted name: "key 'training.data.train.sha256' holds ...").
    """
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise ArtifactError(f"{str(directory)!r} is not a task artifact: it has no {CONFIG}")
    config = read_json_object(path, ArtifactError)
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise ArtifactError(f"{path} lacks the key(s) {missing}; was it written by prompttune?")
    _check_keys(path, config, _CONFIG_KEYS)
    training = config.get("training", {})
    _check_keys(path, training, _TRAINING_KEYS, "training.")
    for split, record in training.get("data", {}).items():
        _check_keys(path, record, _DATA_KEYS, f"training.data.{split}.")
    if not config["labels"] and not config.get("generation"):
        raise ArtifactError(f"{path}: key 'labels' is empty; a classification task needs its labels")
    verbalizer = config.get("verbalizer")
    if verbalizer is not None and config["labels"] and list(verbalizer) != config["labels"]:
        raise ArtifactError(f"{path}: key 'verbalizer' has label words for {list(verbalizer)} but the task's labels are "
                            f"{config['labels']}: every label needs its words, in the labels' order")
    return config


def spec_from_config(config: dict, directory: str | Path) -> TaskSpec:
    """The spec of the task saved in `directory` with this config, its fitted head located
    (`lm_head_location`); method options it does not store take their defaults."""
    fields = TaskSpec.__dataclass_fields__
    spec = TaskSpec(**{k: v for k, v in config.items() if k in fields})
    spec.lm_head = lm_head_location(config, directory)
    return spec


def load_artifact(directory: str | Path, backbone: Backbone | None = None, *,
                  saved: tuple[dict, dict[str, torch.Tensor]] | None = None, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None, quantization: str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild a saved task: (classifier ready for prediction, its config).

    The model is loaded in `dtype` (default: the dtype the task was trained in, `trained_dtype`) and
    the classifier put on `device` (default: the CPU); on a given `backbone` the task takes the
    backbone's dtype and device. Loading in another dtype than the trained one is allowed: the saved tensors are cast to
    the dtype of what they load into (`dtype_note` says so in words). A bfloat16 task loaded in
    bfloat16 has exactly the tensors it was saved with.

    On a given `backbone` (shared with other tasks) a `merge: true` LoRA task stays unmerged:
    merging would change the weights every task on the backbone reads (the scores agree to float
    tolerance). Without a `backbone`, the base loads quantized as `quantization` says (default: as the
    task's base was, `config.json`'s `quantization`); a task loaded on a base quantized otherwise than
    in training (or not at all) says so in one line on stderr. `saved` is the checked (config, weights) pair `read_saved(directory)` gave a caller
    that already read it (the task pool), so the weights are not read and hashed again. Raises `ArtifactError` for a task that cannot be rebuilt or whose weights do not fit it,
    `ModelError` for one made for another backbone; a given backbone then keeps nothing of the task.

    Example:
        >>> clf, config = load_artifact("runs/sst2")
        >>> evaluate(clf, examples)["accuracy"]
        >>> clf, config = load_artifact("runs/sst2", device="cuda", dtype=torch.bfloat16)
    """
    directory = Path(directory)
    config, weights = saved if saved is not None else read_saved(directory)
    spec = spec_from_config(config, directory)
    if dtype is None and backbone is None:
        dtype = trained_dtype(config)
    try:
        classifier, fp = build_classifier(spec, backbone, folded=True, dtype=dtype, device=device,
                                          quantization=quantization or config.get("quantization", "none"))
    except PromptTuneError as e:
        raise ArtifactError(f"cannot rebuild the task saved in {str(directory)!r}: {e}") from e
    try:
        compare_fingerprints(config["backbone"], fp)
        _same_chat_template(config, classifier, directory)
        load_trainable(classifier, weights, source=str(directory / WEIGHTS))
    except Exception:
        detach_parts(classifier)
        raise
    note_difference(config.get("quantization", "none"), quantization_of(classifier.model), f"the task in {str(directory)!r}")
    if spec.method_options().merge and backbone is None:
        from .methods.lora import merge_lora

        merge_lora(classifier.model)
    # What the task adds is built on the CPU (its saved form): it goes where the model is.
    # (A quantized base was quantized onto `device` as it loaded, and is not moved.)
    place = model_device(backbone.model) if backbone is not None else device
    if place is not None:
        place_on(classifier, place)
    classifier.eval()
    return classifier, config


def trained_dtype(config: dict) -> torch.dtype:
    """The dtype of the model's weights a saved task was trained in (its config's `dtype.model_dtype`;
    float32 for a task saved before it was recorded)."""
    return DTYPES[config.get("dtype", {}).get("model_dtype", "float32")]


def model_dtype(classifier: nn.Module) -> torch.dtype:
    """The dtype of a task's model: that of its input embeddings (a quantized or mixed model's linear
    layers may hold other types; the embeddings are the weights' dtype)."""
    return classifier.model.get_input_embeddings().weight.dtype


def dtype_note(directory: str | Path, trained: torch.dtype, loaded: torch.dtype) -> str | None:
    """A line saying that the task saved in `directory` was trained in another dtype (`trained`, see
    `trained_dtype`) than the one its model is loaded in (`loaded`, see `model_dtype`), or None when they
    agree.

    Example:
        >>> dtype_note("runs/x", torch.bfloat16, torch.float32)
        'note: runs/x was trained in bfloat16; loaded in float32'
    """
    if trained == loaded:
        return None
    return f"note: {directory} was trained in {dtype_name(trained)}; loaded in {dtype_name(loaded)}"


def _same_chat_template(config: dict, classifier: nn.Module, directory: Path) -> None:
    """Refuse a task trained in a chat template the model's tokenizer no longer has (edited, replaced):
    its prompts would render otherwise than in training. Raises `ModelError` naming both checksums."""
    saved, chat = config.get("chat_template_sha256"), getattr(classifier, "chat", None)
    if saved is not None and chat is not None and chat.sha256 != saved:
        raise ModelError(f"the task saved in {str(directory)!r} was trained with another chat template than the one "
                         f"model {config['model']!r} has now (sha256 {saved[:12]}… then, {chat.sha256[:12]}… now): its "
                         "prompts would render differently; restore the template or train the task again")


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

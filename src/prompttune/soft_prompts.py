"""Soft tokens: trainable vectors that stand in a template where words would (`{soft}`, `{soft:N}`,
`{soft:"words"}`), for prompt tuning (Lester et al. 2021) and P-tuning (Liu et al. 2021).

How they reach the model: the template renders the k-th soft token as the id V + k, where V is
the number of rows of the model's input embedding table (no real token has such an id). A hook on
that embedding module looks these ids up in the prompt's table instead. So the ids alone describe
an input: padding, truncation, batching, the scorers, `generate` and the key/value cache all work
unchanged, and the model is not edited (on T5 the shared table also embeds decoder ids, which are
always < V and pass through untouched).
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ConfigError, ModelError, TemplateError
from .prompt_encoders import PromptEncoder
from .templates import Soft, Template, soft_init_ids, soft_words

_STATE = "_prompttune_soft"  # attribute on the input embedding module: {"table": bound (n, dim) table, "pending": [...]}
INITS = ("vocab", "random")


def _before(module: nn.Embedding, args):
    ids, state = args[0], getattr(module, _STATE)
    if state["table"] is None:  # no soft prompt bound: nothing to look for (and no device sync)
        state["pending"].append(None)
        return None
    rows, cols = (ids >= module.num_embeddings).nonzero(as_tuple=True)
    if rows.numel() == 0:  # e.g. T5's decoder ids through the shared table
        state["pending"].append(None)
        return None
    index = ids[rows, cols] - module.num_embeddings
    if int(index.max()) >= state["table"].shape[0]:
        raise TemplateError(f"the input has soft token #{int(index.max())} but the bound soft prompt has "
                            f"{state['table'].shape[0]} vectors")
    state["pending"].append((rows, cols, index))
    return (ids.clamp(max=module.num_embeddings - 1), *args[1:])


def _after(module: nn.Embedding, args, output):
    state = getattr(module, _STATE)
    pending = state["pending"].pop()
    if pending is None:
        return None
    rows, cols, index = pending
    # Write only the soft positions (index_put), so the backward pass touches only those rows.
    return output.index_put((rows, cols), state["table"][index].to(output.dtype))


def install_soft_embedding(model: nn.Module) -> dict:
    """Hook the model's input embedding so ids ≥ V read the bound soft table; return the shared
    state ({"table": ...}) that `bind` sets. Idempotent.

    Every embedding module that shares the input table is hooked (T5's encoder keeps its own
    module over the shared weight).
    """
    weight = model.get_input_embeddings().weight
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding) and m.weight is weight]
    state = next((getattr(m, _STATE) for m in tables if hasattr(m, _STATE)), None)
    if state is None:
        # A plain dict: a Parameter set as a module attribute would become one of the model's own.
        state = {"table": None, "pending": [], "dim": weight.shape[1]}
    for m in tables:
        if not hasattr(m, _STATE):
            setattr(m, _STATE, state)
            m.register_forward_pre_hook(_before)
            m.register_forward_hook(_after)
    return state


def clear_soft(model: nn.Module) -> None:
    """Unbind the soft table a task sharing this model left bound (no-op if none was installed)."""
    state = getattr(model.get_input_embeddings(), _STATE, None)
    if state is not None:
        state["table"] = None


def initial_vectors(template: Template, model: nn.Module, tokenizer, how: str = "vocab") -> torch.Tensor:
    """Starting vectors for the template's soft tokens, (n, dim).

    `{soft:"words"}` starts from those words' embeddings; other soft tokens start from the
    embeddings of sampled vocabulary tokens (`vocab`, Lester et al. 2021 §3.2: better than random)
    or from a normal with the embedding table's own spread (`random`).
    """
    if how not in INITS:
        raise ConfigError(f"method.init must be one of {list(INITS)}, got {how!r}")
    weight = model.get_input_embeddings().weight.detach().float()
    parts = []
    segments = [s for s in template.segments if isinstance(s, Soft)]
    for seg, words in zip(segments, soft_words(template)):
        if words is not None:
            parts.append(weight[torch.tensor(soft_init_ids(tokenizer, words))])
        elif how == "vocab":
            low = min(1000, weight.shape[0] // 2)  # skip special/unused rows at the start of vocabularies
            parts.append(weight[torch.randint(low, weight.shape[0], (seg.n,))])
        else:
            parts.append(torch.randn(seg.n, weight.shape[1]) * weight.std() + weight.mean())
    if not parts:
        raise TemplateError(
            f"template {template.source!r} has no soft tokens for this method to train; add some, e.g. "
            "'{soft:10} {sentence} It was {mask}.'"
        )
    return torch.cat(parts).clone()


class SoftPrompt(nn.Module):
    """The vectors that fill a template's soft tokens: a plain table, or a P-tuning encoder's output.

    Example:
        >>> soft = SoftPrompt(model, initial_vectors(template, model, tok))            # prompt tuning
        >>> soft = SoftPrompt(model, initial_vectors(template, model, tok), "lstm")    # P-tuning
        >>> soft.bind()          # before each forward pass of the model
    """

    def __init__(self, model: nn.Module, init: torch.Tensor, encoder: str | None = None):
        super().__init__()
        self._state = install_soft_embedding(model)
        if init.shape[1] != self._state["dim"]:
            raise ModelError(f"soft vectors of size {init.shape[1]} do not fit embeddings of size {self._state['dim']}")
        if encoder is None:
            self.vectors = nn.Parameter(init)
        else:
            self.encoder = PromptEncoder(encoder, init)

    @property
    def n(self) -> int:
        return (self.vectors if hasattr(self, "vectors") else self.encoder.embedding).shape[0]

    def table(self) -> torch.Tensor:
        return self.vectors if hasattr(self, "vectors") else self.encoder()

    def bind(self) -> None:
        self._state["table"] = self.table()

    def stored_state(self) -> dict[str, torch.Tensor]:
        """What a saved task keeps of this prompt: {"vectors": (n, dim)}, the encoder's output when
        there is one (what `SoftPrompt(..., encoder=None)` of a reloaded task holds). A read: the
        module, and what trains, are unchanged."""
        with torch.no_grad():
            return {"vectors": self.table().detach()}

"""Soft tokens: trainable vectors that stand in a template where words would (`{soft}`, `{soft:N}`,
`{soft:"words"}`), for prompt tuning (Lester et al. 2021) and P-tuning (Liu et al. 2021).

How they reach the model: the template renders the k-th soft token as the id V + k, where V is
the number of rows of the model's input embedding table (no real token has such an id). A hook on
that embedding module looks these ids up in the bound table instead. So the ids alone describe
an input: padding, truncation, batching, the scorers, `generate` and the key/value cache all work
unchanged, and the model is not edited (on T5 the shared table also embeds decoder ids, which are
always < V and pass through untouched).

Several tasks in one batch (`SoftPrompt.bind_rows` with row groups): their tables are bound one after
the other, and each row's soft ids are read from its own task's table (the row's base in the bound
table is added to k). Every task keeps rendering its tokens as V + k, so nothing is re-rendered or
allocated when tasks share a model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .backbones import input_device
from .errors import ConfigError, ModelError, TemplateError
from .model_parts import ModelPart, Rows, kind_state, replace_child_state, row_count
from .prompt_encoders import PromptEncoder
from .templates import Soft, Template, soft_init_ids, soft_words

_STATE = "_prompttune_soft"  # attribute on the input embedding module: the shared state (`install_soft_embedding`)
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
    if state["rows"] is None:  # one table for every row
        if int(index.max()) >= state["table"].shape[0]:
            raise TemplateError(f"the input has soft token #{int(index.max())} but the bound soft prompt has "
                                f"{state['table'].shape[0]} vectors")
    else:  # each row reads its own task's slice of the bound table
        base, count = state["rows"]
        if ids.shape[0] != base.shape[0]:
            raise ModelError(f"soft prompts were bound for a batch of {base.shape[0]} rows, got {ids.shape[0]}")
        if bool((index >= count[rows]).any()):
            raise TemplateError("a row has more soft tokens than its task's soft prompt has vectors")
        index = index + base[rows]
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
    """Hook the model's input embedding so ids ≥ V read the bound soft table; return the shared state
    ({"table": (n, dim) or None, "rows": None or each row's (base, count) in it, ...}). Idempotent.

    Every embedding module that shares the input table is hooked (T5's encoder keeps its own
    module over the shared weight).
    """

    def new() -> dict:
        weight = model.get_input_embeddings().weight
        tables = [m for m in model.modules() if isinstance(m, nn.Embedding) and m.weight is weight]
        state = next((getattr(m, _STATE) for m in tables if hasattr(m, _STATE)), None)
        if state is None:
            # A plain dict: a Parameter set as a module attribute would become one of the model's own.
            state = {"table": None, "rows": None, "pending": [], "dim": weight.shape[1]}
        for m in tables:
            if not hasattr(m, _STATE):
                setattr(m, _STATE, state)
                m.register_forward_pre_hook(_before)
                m.register_forward_hook(_after)
        return state

    return kind_state(model, SoftPrompt, new)


def clear_soft(model: nn.Module) -> None:
    """Unbind the soft table a task sharing this model left bound (no-op if none was installed)."""
    state = kind_state(model, SoftPrompt)
    if state is not None:
        state["table"], state["rows"] = None, None


def initial_vectors(template: Template, model: nn.Module, tokenizer, how: str = "vocab") -> torch.Tensor:
    """Starting vectors for the template's soft tokens, (n, dim), float32, on the model's device.

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
            parts.append(weight[torch.tensor(soft_init_ids(tokenizer, words), device=weight.device)])
        elif how == "vocab":
            low = min(1000, weight.shape[0] // 2)  # skip special/unused rows at the start of vocabularies
            parts.append(weight[torch.randint(low, weight.shape[0], (seg.n,)).to(weight.device)])
        else:  # drawn on the CPU (the same vectors from one seed on any device), then put beside the weights
            parts.append(torch.randn(seg.n, weight.shape[1]).to(weight.device) * weight.std() + weight.mean())
    if not parts:
        raise TemplateError(
            f"template {template.source!r} has no soft tokens for this method to train; add some, e.g. "
            "'{soft:10} {sentence} It was {mask}.'"
        )
    return torch.cat(parts).clone()


class SoftPrompt(nn.Module, ModelPart):
    """The vectors that fill a template's soft tokens: a plain table, or a P-tuning encoder's output.

    Example:
        >>> soft = SoftPrompt(model, initial_vectors(template, model, tok))            # prompt tuning
        >>> soft = SoftPrompt(model, initial_vectors(template, model, tok), "lstm")    # P-tuning
        >>> soft.bind()          # what a task's forward does (`models.bind_prompts`)
    """

    def __init__(self, model: nn.Module, init: torch.Tensor, encoder: str | None = None):
        super().__init__()
        self._model = (model,)  # a tuple: the backbone is not a submodule of the prompt
        dim = install_soft_embedding(model)["dim"]
        if init.shape[1] != dim:
            raise ModelError(f"soft vectors of size {init.shape[1]} do not fit embeddings of size {dim}")
        if encoder is None:
            self.vectors = nn.Parameter(init)
        else:
            self.encoder = PromptEncoder(encoder, init)
        self.to(input_device(model))  # where the embeddings it fills are (a dispatched model is not moved later)

    @property
    def n(self) -> int:
        return (self.vectors if hasattr(self, "vectors") else self.encoder.embedding).shape[0]

    def table(self) -> torch.Tensor:
        """(n, dim): the vectors of soft tokens 0..n-1."""
        return self.vectors if hasattr(self, "vectors") else self.encoder()

    def bind(self) -> None:
        """This prompt's table for every row of the model's next batches."""
        SoftPrompt.bind_rows(self._model[0], [(self, None)])

    @classmethod
    def bind_rows(cls, model: nn.Module, groups: Sequence[tuple[SoftPrompt | None, Rows]]) -> None:
        """Bind the groups' tables one after the other; each row's soft id V + k reads vector k of its own
        group's table (a row of a group without a soft prompt must have no soft ids)."""
        state = kind_state(model, SoftPrompt)
        if len(groups) == 1 and groups[0][1] is None:  # one task: its table, as is
            part = groups[0][0]
            state["table"], state["rows"] = (part.table() if part is not None else None), None
            return
        present = [(part, rows) for part, rows in groups if part is not None]
        if not present:
            state["table"], state["rows"] = None, None
            return
        batch = row_count(groups)
        device = present[0][1].device
        base = torch.zeros(batch, dtype=torch.long, device=device)  # (B,): where each row's table starts
        count = torch.zeros(batch, dtype=torch.long, device=device)  # (B,): how many vectors it has
        tables, start = [], 0
        for part, rows in present:
            table = part.table()
            base[rows], count[rows] = start, table.shape[0]
            tables.append(table)
            start += table.shape[0]
        state["table"], state["rows"] = torch.cat(tables), (base, count)

    def stored_state(self) -> dict[str, torch.Tensor]:
        """What a saved task keeps of this prompt: {"vectors": (n, dim)}, the encoder's output when
        there is one (what `SoftPrompt(..., encoder=None)` of a reloaded task holds). A read: the
        module, and what trains, are unchanged."""
        with torch.no_grad():
            return {"vectors": self.table().detach()}

    def stored(self, state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
        """The encoder's parameters (if any) replaced by the vectors it computes (`stored_state`)."""
        return replace_child_state(state, name, self.stored_state())

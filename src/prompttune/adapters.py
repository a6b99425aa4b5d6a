"""Bottleneck adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP").

An adapter is a small residual MLP, x + up(act(down(x))), with down: d → d/r and up: d/r → d
(r = the reduction factor). The frozen model's own layers stay as they are: each adapter is put
on the output of one of the model's projections by a forward hook, so no modeling code is edited
or copied, and the same hook code serves every family below.

Why not a library. AdapterHub's `adapters` package (the maintained successor of
`adapter-transformers`) pins `transformers ~= 4.57.6` in its 1.3.0 release, and it works by
patching each model family's modeling classes, so it cannot be installed beside the
`transformers` 5 this project uses. PEFT (which we do use) has no bottleneck adapters. The
module below is the ~100 lines the method needs.

Placement (`kind`), per Houlsby et al. Fig. 2: an adapter after the projection that closes each
sub-layer, before that sub-layer's residual add (+ LayerNorm), so the skip connection goes
around the adapter's output as it went around the projection's:

- `houlsby`: after the attention output projection and after the feed-forward output
  projection of every layer (2 adapters per layer);
- `pfeiffer`: after the feed-forward output projection only (1 per layer; Pfeiffer et al. 2021,
  AdapterFusion, found it as good at half the parameters).

Which module that is, per family (module paths relative to the task's model):

| family | attention output | feed-forward output |
| --- | --- | --- |
| BERT, RoBERTa, ELECTRA, MiniLM... | `layer.N.attention.output.dense` | `layer.N.output.dense` |
| DistilBERT | `layer.N.attention.out_lin` | `layer.N.ffn.lin2` |
| GPT-2 | `h.N.attn.c_proj` | `h.N.mlp.c_proj` |
| T5 (encoder and decoder blocks) | `block.N.layer.0.SelfAttention.o` | `block.N.layer.M.DenseReluDense.wo` |
| Llama, Mistral, Qwen... | `layers.N.self_attn.o_proj` | `layers.N.mlp.down_proj` |

In BERT-style layers the hooked output is the projection's, i.e. before the dropout that
precedes the residual add and LayerNorm (AdapterHub puts it just after that dropout; in eval mode
the two are the same). T5's decoder cross-attention (`EncDecAttention.o`) gets no adapter: the
decoder's self-attention and feed-forward adapters, and the encoder's, already sit on every path
from the input to the output, and Houlsby et al. describe encoder layers only. Projections of
cross-attention in other models (`crossattention`) are left out for the same reason.

Sharing a backbone. Hooks stay on the model, but they only act while an adapter is bound to
them: `AdapterSet.bind_rows(model, groups)` points every hooked module at each group's adapter
there, for that group's rows (the rows of a group without one pass through unchanged), and
`clear(model)` unbinds all. A task binds its adapters at the start of each forward (see
`models.bind_prompts`), so tasks sharing one loaded backbone each see their own adapters, a task
without adapters sees the bare model, and tasks in one batch each see theirs on their rows. An
`AdapterSet` also binds itself when built, so a task on its own backbone works even where nothing
else binds.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from .errors import ConfigError, ModelError
from .model_parts import ModelPart, Rows, kind_state

KINDS = ("houlsby", "pfeiffer")

_ADAPTER = "_prompttune_adapter"  # on a hooked module: ((Adapter, rows), ...) while any is bound, else None

# A module path (relative to the task's model) whose output gets an adapter, by sub-layer.
_ATTENTION_OUTPUTS = (
    r"(^|\.)layer\.\d+\.attention\.output\.dense",  # BERT, RoBERTa, ELECTRA, MiniLM, XLM-R
    r"(^|\.)layer\.\d+\.attention\.out_lin",  # DistilBERT
    r"(^|\.)h\.\d+\.attn\.c_proj",  # GPT-2
    r"(^|\.)block\.\d+\.layer\.0\.SelfAttention\.o",  # T5 encoder and decoder self-attention
    r"(^|\.)layers\.\d+\.self_attn\.o_proj",  # Llama, Mistral, Qwen
)
_FEED_FORWARD_OUTPUTS = (
    r"(^|\.)layer\.\d+\.output\.dense",
    r"(^|\.)layer\.\d+\.ffn\.lin2",
    r"(^|\.)h\.\d+\.mlp\.c_proj",
    r"(^|\.)block\.\d+\.layer\.\d+\.DenseReluDense\.wo",
    r"(^|\.)layers\.\d+\.mlp\.down_proj",
)


class Adapter(nn.Module):
    """x + up(act(down(x))), starting as the exact identity.

    `up` starts at zero, so a new adapter returns its input unchanged (Houlsby et al. start near
    the identity; exactly is better here: an untrained adapter task scores like the bare model).
    `down` keeps `nn.Linear`'s default init: with `up` at zero the adapter is the identity
    whatever `down` holds, and a `down` of normal scale makes the activations `up` first learns
    from non-negligible (Houlsby et al.'s std 1e-2 on both makes both first gradients tiny).

    The nonlinearity is GELU for every family. The paper leaves it open; one fixed, parameter-free
    choice keeps an adapter the same function whatever the backbone's config names as its own
    activation (T5's `relu` or `gated-gelu`, GPT-2's `gelu_new`...), and GELU is what the
    Transformer layers around it use in most families. With ReLU, a bottleneck of one or two units
    (the tiny models at r=16) can die outright.
    """

    def __init__(self, width: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(self.act(self.down(x.to(self.down.weight.dtype))))
        return x + h.to(x.dtype)


def adapter_sites(model: nn.Module, kind: str = "houlsby") -> list[tuple[str, nn.Module]]:
    """The (path, module) pairs whose outputs get an adapter, in the model's module order."""
    if kind not in KINDS:
        raise ConfigError(f"method.adapter_kind must be one of {list(KINDS)}, got {kind!r}")
    attention = _matching(model, _ATTENTION_OUTPUTS)
    feed_forward = _matching(model, _FEED_FORWARD_OUTPUTS)
    what = type(model).__name__
    if not feed_forward or (kind == "houlsby" and not attention):
        raise ModelError(
            f"found no {'attention and feed-forward' if kind == 'houlsby' else 'feed-forward'} output projections in "
            f"{what} to put adapters on; supported: BERT-style, DistilBERT, GPT-2, T5 and Llama-style models"
        )
    if kind == "houlsby" and len(attention) != len(feed_forward):
        raise ModelError(f"{what} has {len(attention)} attention but {len(feed_forward)} feed-forward output projections: "
                         "cannot pair them up into layers for Houlsby adapters")
    chosen = {id(m) for _, m in feed_forward} | ({id(m) for _, m in attention} if kind == "houlsby" else set())
    return [(n, m) for n, m in model.named_modules() if id(m) in chosen]


def _matching(model: nn.Module, patterns: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    regex = re.compile("|".join(f"(?:{p})$" for p in patterns))
    return [(n, m) for n, m in model.named_modules() if regex.search(n) and "crossattention" not in n.lower()]


def _output_width(name: str, module: nn.Module) -> int:
    width = getattr(module, "out_features", None) or getattr(module, "nf", None)  # nn.Linear, GPT-2's Conv1D
    if not isinstance(width, int):
        raise ModelError(f"cannot read the output width of {name} ({type(module).__name__}) to size its adapter")
    return width


def _key(path: str) -> str:
    """A module path as a ModuleDict key (no dots): `bert.encoder.layer.0.output.dense` →
    `bert__encoder__layer__0__output__dense`. Artifacts save the adapters under these names."""
    return path.replace(".", "__")


def _apply_adapter(module: nn.Module, args, output):
    """Forward hook on a projection: its output through the bound adapters, each on its rows."""
    bound = module.__dict__.get(_ADAPTER)
    if bound is None:
        return None
    out = output[0] if isinstance(output, tuple) else output
    for adapter, rows in bound:
        out = adapter(out) if rows is None else out.index_copy(0, rows, adapter(out.index_select(0, rows)))
    return (out, *output[1:]) if isinstance(output, tuple) else out


def install(model: nn.Module, paths: list[str]) -> list[nn.Module]:
    """Hook the modules at `paths` (each module once, whatever tasks or models share it); return them."""
    hooked = kind_state(model, AdapterSet, list)  # the model's hooked modules, in the order they were hooked
    modules = [model.get_submodule(path) for path in paths]
    for module in modules:
        if _ADAPTER not in module.__dict__:
            module.register_forward_hook(_apply_adapter)
            module.__dict__[_ADAPTER] = None
        if not any(m is module for m in hooked):
            hooked.append(module)
    return modules


def clear(model: nn.Module) -> None:
    """Unbind every adapter from `model`: it computes what the bare model does (no-op if none was installed)."""
    if kind_state(model, AdapterSet) is not None:
        AdapterSet.bind_rows(model, [(None, None)])


class AdapterSet(nn.ModuleDict, ModelPart):
    """A task's adapters, keyed by the (dot-free) path of the module each one follows.

    Example:
        >>> clf.adapters = AdapterSet(clf.model, "houlsby", reduction_factor=16)
        >>> clf.adapters.bind()    # done by the classifier's forward; then call the model as usual
    """

    def __init__(self, model: nn.Module, kind: str = "houlsby", reduction_factor: int = 16):
        if isinstance(reduction_factor, bool) or not isinstance(reduction_factor, int) or reduction_factor < 1:
            raise ConfigError(f"method.reduction_factor must be a whole number >= 1, got {reduction_factor!r}")
        sites = adapter_sites(model, kind)
        adapters = {}
        for path, module in sites:
            width = _output_width(path, module)
            weight = next(module.parameters(), None)
            adapter = Adapter(width, max(1, width // reduction_factor))
            adapters[_key(path)] = adapter.to(weight.device) if weight is not None else adapter
        super().__init__(adapters)
        self.kind, self.reduction_factor = kind, reduction_factor
        self._model = (model,)  # a tuple: the backbone is not a submodule of the adapters
        modules = install(model, [path for path, _ in sites])
        # A plain dict attribute (not registered): the hooked module each adapter follows, by identity.
        self.__dict__["_on"] = {id(module): adapter for module, adapter in zip(modules, adapters.values())}
        self.bind()

    def bind(self) -> None:
        """Put this task's adapters on the model, for every row (and take off any another task left there)."""
        AdapterSet.bind_rows(self._model[0], [(self, None)])

    @classmethod
    def bind_rows(cls, model: nn.Module, groups: Sequence[tuple[AdapterSet | None, Rows]]) -> None:
        """Point every hooked module at each group's adapter there, for that group's rows."""
        for module in kind_state(model, AdapterSet):
            bound = tuple((part._on[id(module)], rows) for part, rows in groups
                          if part is not None and id(module) in part._on)
            module.__dict__[_ADAPTER] = bound or None

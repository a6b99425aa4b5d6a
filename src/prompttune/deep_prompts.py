"""Deep prompts: trainable key/value prefixes at every attention layer (prefix-tuning, P-tuning v2).

Where the prefix goes in. Hugging Face PEFT passes prefixes as `past_key_values`, i.e. it
pretends they are a cache; that broke each time `transformers` changed its cache classes
(huggingface/peft #2821, #1962), clashes with a real cache in `generate` (#2131: mask size
mismatch) and with gradient checkpointing (#2191: the cache is mutated, then replayed). Here the
prefix never touches the cache. `transformers` 5 routes every attention call through its public
`AttentionInterface` (`module, query, key, value, attention_mask, **kwargs`); we register one
more implementation there that prepends this layer's prefix to `key`/`value`, widens the mask
(and T5's relative position bias) by the prefix length, and calls the model's own sdpa or eager
attention. The cache holds only real tokens, so generation with a cache, padding and
checkpointed recomputation see the same prefix every time.

Semantics follow the original implementations (Li & Liang 2021; Liu et al. 2022, P-tuning v2),
which fed the prefix as past key/values: every query attends to all prefix positions, and the
real tokens are numbered from P, as if the prefix had occupied positions 0..P-1 (absolute tables
in BERT, RoBERTa, GPT-2; rotary embeddings in Llama-style models). That is also what PEFT
computes, so exported prefixes give PEFT's outputs.

Rows of several tasks in one batch (`KeyValuePrefix.bind_rows` with row groups): each group's
prefix is padded to the longest P, each row attends only to its own group's P positions (the
padding is masked) and its real tokens are numbered from its own P (a (B, 1) shift). A row of a
task without a prefix gets P = 0: all masked, no shift, the bare model. The kept keys/values of an
in-context task's demonstrations are exactly such a prefix (`in_context.ContextPrefix`).

`install(model)` is idempotent and leaves the model computing exactly what it did before until a
prefix is bound (`bind`); binding with P = 0 is also the bare model.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import input_device
from .errors import ModelError
from .model_parts import ModelPart, Rows, kind_state, replace_child_state, row_count

_PREFIX = "_prompttune_prefix"  # on an attention module: (keys, values, rows) bound there, or None
_BASE = "_prompttune_base"  # the attention implementation the model used before install
_SHIFT = "_prompttune_shift"  # on a position module: 0, P, or (B, 1) per-row P, added to position ids
_CAPTURE = "_prompttune_capture"  # attribute on an attention module: a list that records (key, value)


def prefix_attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
    """Attention with this layer's prefix prepended; registered in `transformers`' AttentionInterface.

    The bound prefix is (keys, values, None) with keys/values (H, P, D) for every row, or
    (keys, values, (group, visible)) with keys/values (G, H, P, D) for G row groups, `group` (B,) each
    row's group and `visible` (G, P) which prefix positions a group's rows attend to (a shorter prefix
    is padded to the longest and the padding masked)."""
    base = _base_attention(module)
    capture = getattr(module, _CAPTURE, None)
    if capture is not None:  # DeepPrompt's initialisation reads the model's own keys/values
        capture.append((key.detach(), value.detach()))
    prefix = getattr(module, _PREFIX, None)
    if prefix is None:
        return base(module, query, key, value, attention_mask, **kwargs)
    pk, pv, rows = prefix
    batch = key.shape[0]
    if rows is None:  # one prefix for every row
        pk, pv, visible = pk.unsqueeze(0).expand(batch, -1, -1, -1), pv.unsqueeze(0).expand(batch, -1, -1, -1), None
    else:
        group, seen = rows
        if group.shape[0] != batch:
            raise ModelError(f"prefixes were bound for a batch of {group.shape[0]} rows, got {batch}")
        pk, pv, visible = pk[group], pv[group], seen[group]  # (B, H, P, D), (B, H, P, D), (B, P)
    n_prefix = pk.shape[2]
    # (no copy unless a device map put this layer on another device than the prefix, or dtypes differ)
    key = torch.cat([pk.to(key.device, key.dtype), key], dim=2)
    value = torch.cat([pv.to(value.device, value.dtype), value], dim=2)
    q_len, k_len = query.shape[2], key.shape[2]
    eager = getattr(module, _BASE) == "eager"
    is_causal = kwargs.pop("is_causal", None)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    if attention_mask is None and (visible is not None or (causal and q_len > 1)):
        # The caller relied on sdpa's `is_causal` (which aligns top-left and would hide real keys once
        # the prefix makes the key longer than the query) or on no mask at all: spell the mask out.
        real = k_len - n_prefix
        i = torch.arange(q_len, device=query.device)[:, None]
        j = torch.arange(real, device=query.device)[None, :]
        allowed = j <= i + (real - q_len) if causal and q_len > 1 else j < real  # (q, real) or (1, real): all
        attention_mask = allowed[None, None]
        if eager:
            attention_mask = _additive(attention_mask, query.dtype)
    if attention_mask is not None:
        if visible is None:
            pad_shape = (*attention_mask.shape[:-1], n_prefix)
            fill = True if attention_mask.dtype == torch.bool else 0.0
            pad = attention_mask.new_full(pad_shape, fill)
        else:
            attention_mask = attention_mask.expand(batch, *attention_mask.shape[1:])
            pad = visible[:, None, None, :]  # (B, 1, 1, P)
            if attention_mask.dtype != torch.bool:
                pad = _additive(pad, attention_mask.dtype)
            pad = pad.expand(*attention_mask.shape[:-1], n_prefix)
        attention_mask = torch.cat([pad, attention_mask], dim=-1)
    else:  # no mask left means every query sees every key: say so, whatever the module's default
        kwargs["is_causal"] = False
    if kwargs.get("position_bias") is not None:  # T5: the prefix has no relative position
        bias = kwargs["position_bias"]
        kwargs["position_bias"] = torch.cat([bias.new_zeros((*bias.shape[:-1], n_prefix)), bias], dim=-1)
    return base(module, query, key, value, attention_mask, **kwargs)


def _additive(allowed: torch.Tensor, dtype) -> torch.Tensor:
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def _base_attention(module: nn.Module):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = getattr(module, _BASE)
    if name == "eager":
        # Each modeling file defines its own eager attention (T5's adds the position bias).
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[name]


def _register(base: str) -> str:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    name = f"prompttune_prefix_{base}"
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, prefix_attention)
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    return name


# --- where the prefixes go --------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """One self-attention module that takes a prefix, with its key/value shape."""

    name: str
    module: nn.Module
    heads: int
    head_dim: int


def attention_sites(model: nn.Module) -> list[Site]:
    """The model's self-attention modules in order (T5: encoder layers, then decoder layers).

    Cross-attention modules take no prefix: on T5 the encoder prefix already reaches the decoder
    through the encoder's outputs.
    """
    sites = []
    for name, module in _attention_modules(model):
        lowered = name.lower()
        if "cross" in lowered or "encdec" in lowered or getattr(module, "is_cross_attention", False):
            continue
        heads, head_dim = _kv_shape(module, model.config)
        sites.append(Site(name, module, heads, head_dim))
    if not sites:
        raise ModelError(f"found no self-attention modules in {type(model).__name__}; deep prompts cannot attach to it")
    return sites


def _attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Innermost modules named *Attention: the ones that call the attention function."""
    named = [(n, m) for n, m in model.named_modules() if type(m).__name__.endswith("Attention")]
    return [(n, m) for n, m in named if not any(o is not m for o in m.modules() if type(o).__name__.endswith("Attention"))]


def _kv_shape(module: nn.Module, config) -> tuple[int, int]:
    cfg = getattr(module, "config", config)
    head_dim = next((getattr(module, a) for a in ("head_dim", "attention_head_size", "key_value_proj_dim") if hasattr(module, a)), None)
    heads = getattr(cfg, "num_key_value_heads", None) or next(
        (getattr(module, a) for a in ("num_attention_heads", "num_heads", "n_heads") if hasattr(module, a)), None
    ) or getattr(cfg, "num_attention_heads", None)
    if head_dim is None or heads is None:
        raise ModelError(f"cannot read the key/value shape of {type(module).__name__}; deep prompts do not support it yet")
    return int(heads), int(head_dim)


def position_embeddings(model: nn.Module) -> nn.Embedding | None:
    """The absolute position embedding table (BERT/RoBERTa `position_embeddings`, GPT-2 `wpe`), if any."""
    base = getattr(model, "base_model", model)
    for path in ("embeddings.position_embeddings", "wpe"):
        module = base
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.Embedding):
            return module
    return None


def position_modules(model: nn.Module) -> list[nn.Module]:
    """Modules that turn position ids into positions: the absolute table, or rotary embeddings
    (Llama, Qwen... `rotary_emb(x, position_ids)`). T5's relative bias has none."""
    table = position_embeddings(model)
    rotary = [m for n, m in model.named_modules() if n.endswith("rotary_emb")]
    return ([table] if table is not None else []) + rotary


def _shift_positions(module: nn.Module, args, kwargs):
    shift = getattr(module, _SHIFT, 0)
    if isinstance(shift, int) and shift == 0:
        return None
    if isinstance(module, nn.Embedding):
        return (args[0] + shift, *args[1:]), kwargs
    if "position_ids" in kwargs:
        return args, {**kwargs, "position_ids": kwargs["position_ids"] + shift}
    return (args[0], args[1] + shift, *args[2:]), kwargs


@dataclass
class _Installed:
    """The prefixes' bookkeeping in a model's registry: where prefixes go, and what numbers positions."""

    sites: list[Site]
    positions: list[nn.Module]


def install(model: nn.Module) -> list[Site]:
    """Route the model's attention through `prefix_attention`; return its sites. Idempotent, also over
    a model that shares modules (and its registry) with another: each module is routed and hooked once.

    Raises `ModelError` for attention other than sdpa or eager, or sites other than those the shared
    registry records."""
    sites = attention_sites(model)
    current = model.config._attn_implementation
    if not str(current).startswith("prompttune_prefix_"):
        if current not in ("sdpa", "eager"):
            raise ModelError(f"deep prompts support sdpa and eager attention; this model uses {current!r}")
        model.set_attn_implementation(_register(current))
        for m in model.modules():
            if hasattr(m, "config") and getattr(m.config, "_attn_implementation", None) == current:
                m.config._attn_implementation = _register(current)
        for _, module in _attention_modules(model):  # cross-attention too: it passes through
            module.__dict__.setdefault(_BASE, current)
    for module in position_modules(model):
        if _SHIFT not in module.__dict__:
            module.register_forward_pre_hook(_shift_positions, with_kwargs=True)
            module.__dict__[_SHIFT] = 0
    state = kind_state(model, KeyValuePrefix, lambda: _Installed(sites, position_modules(model)))
    if [s.module for s in state.sites] != [s.module for s in sites]:
        raise ModelError(f"the attention layers of {type(model).__name__} are not those of the model it shares its "
                         "modules with; deep prompts need the same layers")
    return state.sites


def _bind_sites(state: _Installed, layers: list[tuple] | None, shift, longest: int) -> None:
    """Put layers[i] = (keys, values, rows) on site i (None: no prefix anywhere) and `shift` on the
    positions; `longest` is the largest shift (known to the caller: no device read of `shift`)."""
    for i, site in enumerate(state.sites):
        site.module.__dict__[_PREFIX] = None if layers is None else layers[i]
    for module in state.positions:
        if isinstance(module, nn.Embedding) and longest and module.num_embeddings < longest + 2:
            raise ModelError(f"a prefix of {longest} leaves no room in {module.num_embeddings} position embeddings")
        module.__dict__[_SHIFT] = shift


def unbind(model: nn.Module, sites: list[Site]) -> None:
    """Remove the prefixes: the model computes what the bare model does."""
    for site in sites:
        site.module.__dict__[_PREFIX] = None
    for module in position_modules(model):
        module.__dict__[_SHIFT] = 0


class KeyValuePrefix(ModelPart):
    """Keys and values a task puts before the real tokens of its rows at every self-attention layer:
    trained ones (`DeepPrompt`) or an in-context task's demonstrations (`in_context.ContextPrefix`).
    Every query attends to all of its row's prefix, and the row's real tokens are numbered from its P.

    A subclass has `length` (P) and `key_values()`: per site, (keys, values), each (heads, P, head_dim).
    """

    length: int

    def key_values(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    @classmethod
    def bind_rows(cls, model: nn.Module, groups: Sequence[tuple[KeyValuePrefix | None, Rows]]) -> None:
        """One prefix for every row (one group), or each group's prefix padded to the longest P with the
        padding masked and each row's positions shifted by its own P (P = 0 for a group without one).

        The prefix stays bound until the next bind (a checkpointed layer recomputed during the backward
        pass must see the same prefix as in the forward pass)."""
        state = kind_state(model, KeyValuePrefix)
        present = [(part, rows) for part, rows in groups if part is not None and part.length]
        if not present:
            _bind_sites(state, None, 0, 0)
            return
        if len(groups) == 1 and groups[0][1] is None:  # one task: its prefix, expanded over the batch
            part = present[0][0]
            _bind_sites(state, [(k, v, None) for k, v in part.key_values()], part.length, part.length)
            return
        batch, longest = row_count(groups), max(part.length for part, _ in present)
        device = present[0][1].device
        group = torch.full((batch,), len(present), dtype=torch.long, device=device)  # (B,): the last group has none
        shift = torch.zeros(batch, 1, dtype=torch.long, device=device)  # (B, 1)
        visible = torch.zeros(len(present) + 1, longest, dtype=torch.bool, device=device)  # (G, P)
        per_part = []
        for g, (part, rows) in enumerate(present):
            group[rows], shift[rows] = g, part.length
            visible[g, : part.length] = True
            per_part.append(part.key_values())
        layers = []
        for s in range(len(state.sites)):
            keys, values = zip(*(kv[s] for kv in per_part))
            layers.append((_stack_padded(keys, longest), _stack_padded(values, longest), (group, visible)))
        _bind_sites(state, layers, shift, longest)


def _stack_padded(tensors: Sequence[torch.Tensor], length: int) -> torch.Tensor:
    """(H, P_i, D) tensors → (len + 1, H, length, D): each padded with zeros to `length`, then an all-zero one."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    padded = [F.pad(t.to(dtype), (0, 0, 0, length - t.shape[1])) for t in tensors]
    return torch.stack([*padded, torch.zeros_like(padded[0])])


# --- a key/value cache: the one place that uses transformers' cache API -----------------


def cache_inputs(model: nn.Module, cache) -> dict:
    """The keyword arguments that hand `cache` to `model`'s forward: `cache=` where transformers has
    renamed it (5.24 warns on every call that still says `past_key_values=`), else `past_key_values=`."""
    import inspect

    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache, "use_cache": True}


def prefix_cache(model: nn.Module, layers: list[tuple[torch.Tensor, torch.Tensor]], batch: int):
    """A fresh cache holding the given per-layer (keys, values), each (1, H, P, D), expanded to `batch` rows.

    The model appends a query's keys/values to the cache it is given, so each call needs its own."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    for i, (k, v) in enumerate(layers):
        cache.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), i)
    return cache


@torch.no_grad()
def encode_prefix(model: nn.Module, ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The per-layer (keys, values), each (1, H, P, D), that `model` computes for the token ids `ids`."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([ids], device=input_device(model)), **cache_inputs(model, cache))
    return [(layer.keys, layer.values) for layer in cache.layers]


# --- the trainable prefixes --------------------------------------------------------------


class DeepPrompt(nn.Module, KeyValuePrefix):
    """P prefix vectors per self-attention layer, for keys and for values.

    Stored as one (P, sites, 2, heads, head_dim) tensor `prefix`. With `reparameterize`, the
    prefix is instead computed as MLP(E) from a smaller (P, hidden_size) matrix E, which Li & Liang
    (2021, §4.3) found necessary for stable training; a saved task stores the MLP's output
    (`stored_state`), so it holds P·sites·2·heads·head_dim numbers either way.

    Example:
        >>> deep = DeepPrompt(model, length=10)         # prefix-tuning / P-tuning v2 on any HF LM
        >>> deep.bind()                                 # then call the model as usual
    """

    def __init__(self, model: nn.Module, length: int, *, reparameterize: bool = False, hidden: int = 512, folded: bool = False):
        super().__init__()
        self.sites = install(model)
        self._model = (model,)  # a tuple: the backbone is not a submodule of the prompt
        shapes = {(s.heads, s.head_dim) for s in self.sites}
        if len(shapes) != 1:
            raise ModelError(f"attention layers of different shapes {sorted(shapes)}: deep prompts need one shape")
        (self.heads, self.head_dim), self.length = shapes.pop(), length
        self.shape = (length, len(self.sites), 2, self.heads, self.head_dim)
        if reparameterize and not folded:
            d_model = model.get_input_embeddings().embedding_dim
            self.embedding = nn.Parameter(_sampled_embeddings(model, length))
            self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.Tanh(), nn.Linear(hidden, len(self.sites) * 2 * self.heads * self.head_dim))
        else:
            self.prefix = nn.Parameter(self._activations_of_sampled_words() if not folded else torch.zeros(self.shape))
        self.to(input_device(model))  # beside the input embeddings; each layer takes its slice to its own device

    def table(self) -> torch.Tensor:
        """(P, sites, 2, heads, head_dim)."""
        if hasattr(self, "prefix"):
            return self.prefix
        return self.mlp(self.embedding).view(self.shape)

    def key_values(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per site, (keys, values), each (heads, P, head_dim)."""
        table = self.table()
        return [(table[:, s, 0].transpose(0, 1), table[:, s, 1].transpose(0, 1)) for s in range(len(self.sites))]

    def bind(self) -> None:
        """Attach the current prefix to the model's attention layers, for every row (until the next bind)."""
        KeyValuePrefix.bind_rows(self._model[0], [(self, None)])

    def stored_state(self) -> dict[str, torch.Tensor]:
        """What a saved task keeps of this prompt: {"prefix": (P, sites, 2, heads, head_dim)}, the
        MLP's output when reparameterized (what `DeepPrompt(..., folded=True)` holds). A read: the
        module, and what trains, are unchanged."""
        with torch.no_grad():
            return {"prefix": self.table().detach()}

    def stored(self, state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
        """The MLP's parameters (if reparameterized) replaced by the prefix it computes (`stored_state`)."""
        return replace_child_state(state, name, self.stored_state())

    def _activations_of_sampled_words(self) -> torch.Tensor:
        """The keys/values the frozen model computes for P sampled vocabulary tokens.

        Li & Liang (2021, §7.2) found prefixes initialised with real words' activations train
        better than random ones in low-data settings; the scale also matches the model's own keys.
        """
        model = self._model[0]
        if self.length == 0:
            return torch.zeros(self.shape)
        ids = _sampled_ids(model, self.length)[None].to(input_device(model))
        for site in self.sites:
            setattr(site.module, _CAPTURE, [])
        unbind(model, self.sites)
        try:
            with torch.no_grad():
                extra = {"decoder_input_ids": ids} if model.config.is_encoder_decoder else {}
                model.base_model(input_ids=ids, **extra)
            kv = [getattr(site.module, _CAPTURE)[0] for site in self.sites]
        finally:
            for site in self.sites:
                setattr(site.module, _CAPTURE, None)
        # each captured (key, value) is (1, H, P, D): stack to (P, sites, 2, H, D)
        return torch.stack([torch.stack([k[0], v[0]]).to(ids.device) for k, v in kv]).permute(3, 0, 1, 2, 4).float().contiguous()


def _sampled_ids(model: nn.Module, n: int) -> torch.Tensor:
    # Skip the first rows, where vocabularies keep special and unused tokens.
    rows = model.get_input_embeddings().num_embeddings
    low = min(1000, rows // 2)
    return torch.randint(low, rows, (n,))


def _sampled_embeddings(model: nn.Module, n: int) -> torch.Tensor:
    weight = model.get_input_embeddings().weight
    return weight[_sampled_ids(model, n).to(weight.device)].detach().float().clone()

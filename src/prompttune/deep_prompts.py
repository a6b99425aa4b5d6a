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

_PREFIX = "_prompttune_prefix"  # on an attention module: (BoundPrefix, this site's index), or None
_BASE = "_prompttune_base"  # the attention implementation the model used before install
_BASE_FN = "_prompttune_base_fn"  # that implementation's function, looked up on the module's first call
_SHIFT = "_prompttune_shift"  # on a position module: 0, P, or (B, 1) per-row P, added to position ids
_CAPTURE = "_prompttune_capture"  # attribute on an attention module: a list that records (key, value)
_MASK_ALIGNMENT = 8  # a float mask whose rows start at multiples of 8 elements is used as is by CUDA's sdpa kernels


def prefix_attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
    """Attention with this layer's prefix prepended; registered in `transformers`' AttentionInterface.

    Per layer this only expands the layer's own keys/values to the batch (a view) and concatenates them
    with the real ones. Everything that is the same for every layer of a forward pass (the mask widened
    by the prefix, T5's widened position bias) is made by the first layer that needs it and reused by the
    others (`BoundPrefix.shared`)."""
    base = module.__dict__.get(_BASE_FN) or _base_attention(module)
    capture = module.__dict__.get(_CAPTURE)
    if capture is not None:  # DeepPrompt's initialisation reads the model's own keys/values
        capture.append((key.detach(), value.detach()))
    bound = module.__dict__.get(_PREFIX)
    if bound is None:
        return base(module, query, key, value, attention_mask, **kwargs)
    prefix, site = bound
    pk, pv = prefix.layers[site]
    batch = key.shape[0]
    if prefix.rows is None:  # one prefix for every row: (1, H, P, D) -> (B, H, P, D), a view
        pk, pv = pk.expand(batch, -1, -1, -1), pv.expand(batch, -1, -1, -1)
    else:
        group = prefix.rows[0]
        if group.shape[0] != batch:
            raise ModelError(f"prefixes were bound for a batch of {group.shape[0]} rows, got {batch}")
        pk, pv = pk[group], pv[group]  # (G, H, P, D) -> (B, H, P, D)
    if pk.dtype != key.dtype or pk.device != key.device:  # (a device map may put this layer on another device)
        pk, pv = pk.to(key.device, key.dtype), pv.to(value.device, value.dtype)
    key = torch.cat([pk, key], dim=2)
    value = torch.cat([pv, value], dim=2)
    is_causal = kwargs.pop("is_causal", None)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    attention_mask = prefix.widened_mask(attention_mask, query, key.shape[2], bool(causal))
    if attention_mask is None:  # no mask left means every query sees every key: say so, whatever the module's default
        kwargs["is_causal"] = False
    bias = kwargs.get("position_bias")
    if bias is not None:  # T5: the prefix has no relative position
        kwargs["position_bias"] = prefix.shared(("position_bias", bias.shape), bias, lambda: torch.cat(
            [bias.new_zeros((*bias.shape[:-1], prefix.width)), bias], dim=-1))
    return base(module, query, key, value, attention_mask, **kwargs)


class BoundPrefix:
    """What one bind put on a model's attention sites, and the work all its layers share in a forward.

    `layers[i]` is site i's (keys, values): each (1, H, P, D) for every row, or (G, H, P, D) for G row
    groups with `rows` = (group, visible): `group` (B,) each row's group and `visible` (G, P) which prefix
    positions a group's rows attend to (a shorter prefix is padded to the longest and the padding masked).
    `width` is P (the longest, with groups).

    The widened mask and T5's widened position bias are the same at every layer of a forward pass: the first
    layer makes them and the others reuse them (`shared`). An entry is keyed by the identity and version of
    the tensor it was made from (the mask transformers builds once per forward and hands to every layer),
    and keeps that tensor alive, so a new forward pass, another batch, shape or in-place change never
    reuses it. A new bind starts with nothing shared.
    """

    _KEEP = 4  # entries kept: one forward uses one or two (T5: the encoder's, then the decoder's)

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]], width: int,
                 rows: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.layers, self.width, self.rows = layers, width, rows
        self._shared: dict[tuple, tuple[object, torch.Tensor | None]] = {}

    def shared(self, key: tuple, source: torch.Tensor | None, make):
        """`make()`, made once for `key` and `source` (a tensor, or None) and reused while both are the same."""
        key = (*key, id(source), None if source is None else source._version)
        hit = self._shared.get(key)
        if hit is not None and hit[0] is source:
            return hit[1]
        if len(self._shared) >= self._KEEP:
            self._shared.pop(next(iter(self._shared)))
        made = make()
        self._shared[key] = (source, made)
        return made

    def widened_mask(self, mask: torch.Tensor | None, query: torch.Tensor, k_len: int, causal: bool) -> torch.Tensor | None:
        """The attention mask over [prefix; real keys] (k_len of them) for `query` (B, heads, q, D), or None
        where every query sees every key. `mask` is what the model built for the real keys: None, a bool
        mask (True = attend) or an additive float one, (B or 1, 1 or heads, q, real).

        Every query attends to its row's prefix. A bool mask, or none where one is needed (sdpa's
        `is_causal` aligns top-left, and would hide real keys once the prefix makes the keys longer than the
        queries), becomes an additive mask in the query's dtype: what sdpa would otherwise convert it to at
        every layer, laid out so that CUDA's kernels need no padded copy of it either."""
        batch, q_len = query.shape[0], query.shape[2]
        causal = causal and q_len > 1
        if mask is None and self.rows is None and not causal:
            return None
        key = ("mask", batch, q_len, k_len, causal, query.dtype, query.device)
        return self.shared(key, mask, lambda: self._widen(mask, batch, q_len, k_len, causal, query.dtype, query.device))

    def _widen(self, mask, batch: int, q_len: int, k_len: int, causal: bool, dtype, device) -> torch.Tensor:
        real = k_len - self.width
        if mask is None:
            i = torch.arange(q_len, device=device)[:, None]
            j = torch.arange(real, device=device)[None, :]
            mask = (j <= i + (real - q_len))[None, None] if causal else None  # (1, 1, q, real)
        if mask is not None and mask.dtype != torch.bool:
            dtype = mask.dtype  # an additive mask stays in its own dtype
        rows = batch if self.rows is not None or mask is None else mask.shape[0]
        heads, queries = (1, 1) if mask is None else mask.shape[1:3]
        full = -(-k_len // _MASK_ALIGNMENT) * _MASK_ALIGNMENT
        out = torch.zeros(rows, heads, queries, full, dtype=dtype, device=device)[..., :k_len]  # (B, 1, q, P + real)
        lowest = torch.finfo(dtype).min
        if mask is not None and mask.dtype == torch.bool:
            out[..., self.width:].masked_fill_(~mask, lowest)
        elif mask is not None:
            out[..., self.width:].copy_(mask)
        if self.rows is not None:
            group, visible = self.rows
            out[..., : self.width].masked_fill_(~visible[group][:, None, None, :], lowest)  # (B, 1, 1, P)
        return out


def _base_attention(module: nn.Module):
    """The attention function the module used before install (kept on the module after the first call)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = getattr(module, _BASE)
    if name == "eager":
        # Each modeling file defines its own eager attention (T5's adds the position bias).
        fn = sys.modules[type(module).__module__].eager_attention_forward
    else:
        fn = ALL_ATTENTION_FUNCTIONS[name]
    module.__dict__[_BASE_FN] = fn
    return fn


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


def _bind_sites(state: _Installed, prefix: BoundPrefix | None, shift, longest: int) -> None:
    """Put `prefix` on every site (None: no prefix anywhere) and `shift` on the positions; `longest` is the
    largest shift (known to the caller: no device read of `shift`)."""
    for i, site in enumerate(state.sites):
        site.module.__dict__[_PREFIX] = None if prefix is None else (prefix, i)
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

    A subclass has `length` (P) and `key_value_table()`: (2 * sites, heads, P, head_dim), site s's keys at
    row 2s and its values at 2s + 1 (one tensor, so binding is one view of it, not one per layer).
    """

    length: int

    def key_value_table(self) -> torch.Tensor:
        raise NotImplementedError

    def key_values(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per site, (keys, values), each (heads, P, head_dim)."""
        table = self.key_value_table()
        return [(table[2 * s], table[2 * s + 1]) for s in range(table.shape[0] // 2)]

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
        if len(groups) == 1 and groups[0][1] is None:  # one task: its prefix, expanded over the batch per layer
            part = present[0][0]
            table = _in_model_dtype(state, part.key_value_table())
            layers = table.unsqueeze(1).unbind(0)  # 2 * sites views, each (1, H, P, D)
            _bind_sites(state, BoundPrefix(list(zip(layers[::2], layers[1::2])), part.length), part.length, part.length)
            return
        batch, longest = row_count(groups), max(part.length for part, _ in present)
        device = present[0][1].device
        group = torch.full((batch,), len(present), dtype=torch.long, device=device)  # (B,): the last group has none
        shift = torch.zeros(batch, 1, dtype=torch.long, device=device)  # (B, 1)
        visible = torch.zeros(len(present) + 1, longest, dtype=torch.bool, device=device)  # (G, P)
        for g, (part, rows) in enumerate(present):
            group[rows], shift[rows] = g, part.length
            visible[g, : part.length] = True
        table = _in_model_dtype(state, _stack_padded([part.key_value_table() for part, _ in present], longest))
        tables = table.unbind(0)  # (G, H, P, D) each
        prefix = BoundPrefix(list(zip(tables[::2], tables[1::2])), longest, (group, visible))
        _bind_sites(state, prefix, shift, longest)


def _in_model_dtype(state: _Installed, table: torch.Tensor) -> torch.Tensor:
    """`table` cast once, at bind, to the dtype of the attention layers' weights (an fp32 prompt on a bf16
    model), instead of at every layer of every forward. Under autocast the keys may still differ (fp32
    weights, bf16 keys): `prefix_attention` casts those per layer. A cast is a copy: bind again after the
    prompt changes (every task model binds before each forward)."""
    module = state.sites[0].module
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), table.dtype)
    return table if dtype == table.dtype else table.to(dtype)


def _stack_padded(tables: Sequence[torch.Tensor], length: int) -> torch.Tensor:
    """(2 * sites, H, P_i, D) tables → (2 * sites, len + 1, H, length, D): each padded with zeros to
    `length`, then an all-zero one (the group without a prefix)."""
    dtype = tables[0].dtype
    for t in tables[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    padded = [F.pad(t.to(dtype), (0, 0, 0, length - t.shape[-2])) for t in tables]
    return torch.stack([*padded, torch.zeros_like(padded[0])], dim=1)


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

    def key_value_table(self) -> torch.Tensor:
        """(2 * sites, heads, P, head_dim): site s's keys at row 2s, its values at 2s + 1; a view of `table()`."""
        length, sites, _, heads, head_dim = self.shape
        return self.table().permute(1, 2, 3, 0, 4).reshape(2 * sites, heads, length, head_dim)

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

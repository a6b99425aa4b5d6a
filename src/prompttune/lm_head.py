"""Fit a masked-LM head on a frozen encoder that ships without one.

Sentence encoders such as `sentence-transformers/all-MiniLM-L6-v2` keep BERT's body
but drop `cls.predictions`, so label-word (cloze) methods have nothing to read at
`[MASK]`. This module fits that head from unlabeled text while the encoder stays
frozen and bit-identical:

1. Mask ~15% of the tokens of each text with `[MASK]` (always `[MASK]`, not BERT's
   80/10/10: the head will only ever be read at `[MASK]` tokens), run the frozen
   encoder once, and keep the hidden states at masked positions only.
2. Start the head in closed form: vocabulary bias = log unigram frequency of the
   masked tokens; transform dense = ridge regression from the hidden state to the
   true token's embedding (see `_ridge_init`).
3. Train the head's own parameters (for BERT: transform dense + LayerNorm and the
   vocabulary bias; the decoder stays tied to the frozen word embeddings) with Adam
   and a full-vocabulary softmax on the cached states. No encoder forward is
   repeated, so a step costs one `(batch, hidden) @ (hidden, vocab)` matmul.

Example:
    >>> metrics = fit_lm_head(model, tokenizer, texts[:8000])      # doctest: +SKIP
    >>> masked_token_accuracy(model, tokenizer, held_out)          # doctest: +SKIP
    >>> save_lm_head(model, "heads/minilm", metrics)               # doctest: +SKIP
    >>> load_lm_head(fresh_model, "heads/minilm")                  # doctest: +SKIP

A head is found by its directory (`head.safetensors` + `head.json`, what `fit-lm-head` writes) or
by its weights file `X.safetensors` with `X.json` beside it: the copy a task artifact carries
(`lm_head.safetensors` + `lm_head.json`, see `head_copy`), so an artifact needs nothing outside it.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn
from tqdm.auto import tqdm

from .backbones import lm_head_module
from .devices import model_device, resolve_device, resolve_dtype
from .errors import ConfigError, ModelError
from . import __version__
from .files import Writer, bytes_writer, file_sha256, json_writer, read_json_object, safetensors_writer, write_together
from .outputs import claim_output, json_marked
from .progress import bar_off
from .scoring import pad
from .templates import SpecialTokens, encode_text

HEAD_WEIGHTS = "head.safetensors"
HEAD_INFO = "head.json"
COPY_WEIGHTS, COPY_INFO = "lm_head.safetensors", "lm_head.json"
"""A head's two files as copied into a task artifact or a PEFT export (`head_copy`), beside the
task's own `weights.safetensors` and `config.json`, which names the copy by `COPY_WEIGHTS`."""


def head_module(model: nn.Module) -> nn.Module:
    """The MLM head of a `*ForMaskedLM` model (BERT: `model.cls`, RoBERTa: `model.lm_head`).

    Its forward maps encoder hidden states `(..., hidden)` to vocabulary logits `(..., vocab)`.
    """
    head = lm_head_module(model)
    if head is None or getattr(model, "get_output_embeddings", lambda: None)() is None:
        raise ModelError(
            f"{type(model).__name__} has no masked-LM head: expected a *ForMaskedLM model "
            "(an encoder plus a head whose decoder is the output embeddings)"
        )
    return head


def lm_head_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The head's own parameters, named as in `model.state_dict()`.

    The decoder weight is left out: it is tied to the word embeddings, which belong to
    the base model. A tied decoder bias appears once, under its first name.

    Example:
        >>> sorted(lm_head_state_dict(bert_mlm))   # doctest: +SKIP
        ['cls.predictions.bias', 'cls.predictions.transform.LayerNorm.bias', ...]
    """
    head = head_module(model)
    head_ids = {id(p) for p in head.parameters()}
    embedding_id = id(model.get_output_embeddings().weight)
    # named_parameters() lists a tied tensor once, so the decoder weight shows up
    # under the encoder's embedding name and is filtered by the id check.
    return {
        name: param.detach().clone()
        for name, param in model.named_parameters()
        if id(param) in head_ids and id(param) != embedding_id
    }


def _mask_tokens(
    input_ids: torch.Tensor, special: torch.Tensor, mask_prob: float, mask_id: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace ~mask_prob of the non-special tokens by `[MASK]`, at least one per row.

    Returns the masked ids and a bool tensor of the masked positions, both `(B, T)`.
    """
    candidates = ~special  # (B, T)
    noise = torch.rand(input_ids.shape, generator=generator)
    chosen = candidates & (noise < mask_prob)
    # Short texts would often get no mask at all; force the lowest-noise token instead.
    forced = torch.where(candidates, noise, 2.0).argmin(dim=1)  # (B,)
    empty = ~chosen.any(dim=1) & candidates.any(dim=1)
    chosen[empty, forced[empty]] = True
    return input_ids.masked_fill(chosen, mask_id), chosen


@torch.no_grad()
def masked_features(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    *,
    max_length: int = 64,
    mask_prob: float = 0.15,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the frozen encoder once; return hidden states and true ids at masked positions.

    Shapes: features `(N, hidden)` (float32), targets `(N,)` with N the number of masked tokens, both on
    the model's device (the masks are drawn on the CPU, from `seed`, whatever the device).

    Example:
        >>> feats, targets = masked_features(model, tokenizer, ["a fine film"])  # doctest: +SKIP
    """
    if tokenizer.mask_token_id is None:
        raise ModelError(f"tokenizer {type(tokenizer).__name__} has no mask token")
    head_module(model)  # refuse models without an MLM head before the long encode
    encoder = model.base_model
    device = model_device(model)
    was_training = encoder.training
    encoder.eval()
    generator = torch.Generator().manual_seed(seed)
    # Sorting by length keeps padding (wasted encoder work) small in each batch.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    features, targets = [], []
    specials = SpecialTokens.of(tokenizer)
    for start in tqdm(range(0, len(order), batch_size), desc="encode", disable=bar_off(progress)):
        # Read literally: a "[MASK]" written in the text is text, not a position to predict.
        rows = [encode_text(tokenizer, texts[i], max_length=max_length, specials=specials) for i in order[start : start + batch_size]]
        input_ids, attn = pad(rows, tokenizer.pad_token_id)  # (B, T)
        text = torch.zeros_like(attn, dtype=torch.bool)
        for row, ids in enumerate(rows):  # the text sits between the tokenizer's [CLS] and [SEP]
            text[row, len(specials.prefix) : len(ids) - len(specials.suffix)] = True
        masked_ids, chosen = _mask_tokens(input_ids, ~text, mask_prob, tokenizer.mask_token_id, generator)
        hidden = encoder(input_ids=masked_ids.to(device), attention_mask=attn.to(device)).last_hidden_state  # (B, T, H)
        features.append(hidden[chosen.to(device)].float())
        targets.append(input_ids[chosen].to(device))
    encoder.train(was_training)
    return torch.cat(features), torch.cat(targets)


@torch.no_grad()
def _ridge_init(head: nn.Module, embeddings: nn.Linear, features: torch.Tensor, targets: torch.Tensor) -> None:
    """Closed-form start for a `dense -> GELU -> LayerNorm` transform (BERT, RoBERTa).

    Fits `dense` by ridge regression from the standardised hidden state to the
    standardised embedding of the true token, so `decoder(transform(h))` already
    scores that token highly. Heads of another shape keep their random init.
    Standardising matters: this encoder's states share one large direction (mean
    cosine ~0.95 on MiniLM) and only the small remainder says which word is masked.
    """
    linears = [m for m in head.modules() if isinstance(m, nn.Linear) and m is not embeddings]
    norms = [m for m in head.modules() if isinstance(m, nn.LayerNorm)]
    if len(linears) != 1 or len(norms) != 1:
        return
    dense, norm = linears[0], norms[0]
    wanted = embeddings.weight[targets].float()  # (N, E)
    mean, std = features.mean(0), features.std(0) + 1e-6
    x = (features - mean) / std  # (N, H)
    y = (wanted - wanted.mean(0)) / (wanted.std(0) + 1e-6)  # (N, E)
    gram = x.T @ x + 1e-3 * len(x) * torch.eye(x.shape[1], device=x.device)
    weight = torch.linalg.solve(gram, x.T @ y).T / std  # (E, H), folds the standardisation in
    dense.weight.copy_(weight)
    # +5 keeps GELU in its near-linear range; LayerNorm removes the constant again.
    dense.bias.copy_(5.0 - weight @ mean)
    # Undo the target standardisation; x10 sharpens the softmax (a temperature Adam then tunes).
    norm.weight.copy_(10.0 * wanted.std(0))
    norm.bias.copy_(wanted.mean(0))


def fit_lm_head(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    *,
    max_length: int = 64,
    mask_prob: float = 0.15,
    steps: int = 150,
    batch_size: int = 512,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Fit the MLM head of `model` in place on `texts`; the encoder is not changed.

    Returns metrics: `texts`, `masked_tokens`, `train_loss` (mean of the last 10%
    of steps), `encode_seconds`, `fit_seconds`.

    Example:
        >>> metrics = fit_lm_head(model, tokenizer, texts, steps=150)   # doctest: +SKIP
        >>> metrics["masked_tokens"]                                    # doctest: +SKIP
        16143
    """
    head = head_module(model)
    started = time.perf_counter()
    features, targets = masked_features(
        model, tokenizer, texts, max_length=max_length, mask_prob=mask_prob, seed=seed, progress=progress
    )
    encoded = time.perf_counter()

    embeddings = model.get_output_embeddings()
    trainable = [p for p in head.parameters() if p is not embeddings.weight]
    if embeddings.bias is not None:
        # Start from the unigram distribution, log p(token), add-one smoothed, so
        # training only has to learn what the context adds.
        counts = torch.bincount(targets, minlength=embeddings.bias.numel()).float() + 1.0
        with torch.no_grad():
            embeddings.bias.copy_(counts.log() - counts.sum().log())
    _ridge_init(head, embeddings, features, targets)

    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same batches on any device
    optimizer = torch.optim.Adam(trainable, lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(1, steps), pct_start=0.1)
    losses = []
    # The tied decoder weight is the encoder's word embedding: freeze it for the fit, which
    # also skips its (vocab x hidden) gradient, the most expensive part of each step.
    tied_requires_grad = embeddings.weight.requires_grad
    embeddings.weight.requires_grad_(False)
    try:
        for _ in tqdm(range(steps), desc="fit head", disable=bar_off(progress)):
            batch = torch.randint(len(targets), (min(batch_size, len(targets)),), generator=generator).to(features.device)
            logits = head(features[batch].to(embeddings.weight.dtype))  # (batch, vocab): masked positions only
            loss = nn.functional.cross_entropy(logits.float(), targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
    finally:
        embeddings.weight.requires_grad_(tied_requires_grad)
    tail = losses[-max(1, steps // 10) :] or [float("nan")]
    return {
        "texts": len(texts),
        "masked_tokens": len(targets),
        "head_parameters": sum(p.numel() for p in trainable),
        "steps": steps,
        "train_loss": sum(tail) / len(tail),
        "encode_seconds": round(encoded - started, 2),
        "fit_seconds": round(time.perf_counter() - encoded, 2),
    }


@torch.no_grad()
def masked_token_accuracy(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    *,
    max_length: int = 64,
    mask_prob: float = 0.15,
    seed: int = 0,
) -> float:
    """Fraction of masked tokens in `texts` whose argmax prediction is the true token.

    Example:
        >>> masked_token_accuracy(model, tokenizer, held_out)   # doctest: +SKIP
        0.41
    """
    features, targets = masked_features(
        model, tokenizer, texts, max_length=max_length, mask_prob=mask_prob, seed=seed
    )
    head = head_module(model)
    dtype = model.get_input_embeddings().weight.dtype
    correct = sum(
        (head(features[i : i + 1024].to(dtype)).argmax(-1) == targets[i : i + 1024]).sum().item()
        for i in range(0, len(targets), 1024)
    )
    return correct / max(1, len(targets))


def save_lm_head(model: nn.Module, directory: str | os.PathLike, metrics: dict | None = None) -> None:
    """Write `head.safetensors` (head parameters only) and `head.json` to `directory`, together
    (`files.write_together`); raises `OutputError` if they cannot be written.

    Example:
        >>> save_lm_head(model, "heads/minilm", metrics)   # doctest: +SKIP
    """
    state = {name: t.cpu().contiguous() for name, t in lm_head_state_dict(model).items()}
    info = {
        "prompttune_version": __version__,
        "base_model": getattr(model.config, "name_or_path", ""),
        "parameters": {name: list(t.shape) for name, t in state.items()},
        "metrics": metrics or {},
    }

    def write_info(path: Path) -> None:  # with the checksum of the weights just staged beside it
        json_writer({**info, "weights_sha256": file_sha256(path.with_name(HEAD_WEIGHTS))})(path)

    write_together(directory, {HEAD_WEIGHTS: safetensors_writer(state), HEAD_INFO: write_info})


def head_files(location: str | os.PathLike) -> tuple[Path, Path]:
    """(weights file, info file) of the head at `location`: a directory from `save_lm_head`
    (`head.safetensors`, `head.json`), or a weights file `X.safetensors` (`X.json` beside it: a
    head copied into a task artifact).

    Example:
        >>> head_files("runs/sst2/lm_head.safetensors")
        (PosixPath('runs/sst2/lm_head.safetensors'), PosixPath('runs/sst2/lm_head.json'))
    """
    location = Path(location)
    if location.suffix == ".safetensors":
        return location, location.with_suffix(".json")
    return location / HEAD_WEIGHTS, location / HEAD_INFO


def read_head(location: str | os.PathLike) -> tuple[bytes, dict]:
    """(the weights file's bytes, the info) of the head at `location` (see `head_files`), the bytes
    checked against the checksum the info records; the info returned holds that checksum
    (`weights_sha256`, computed here for a head saved before head.json recorded one).

    Raises `ModelError` for a missing or unreadable file, or weights from another save than the info.
    """
    weights_path, info_path = head_files(location)
    if not weights_path.is_file():
        if weights_path.name == HEAD_WEIGHTS:
            raise ModelError(f"lm_head {location} holds no {HEAD_WEIGHTS}; fit a head there first: prompttune fit-lm-head "
                             f"--data FILE --text-field FIELD --out {location}")
        raise ModelError(f"lm_head {weights_path} does not exist (a task artifact carries its head in {COPY_WEIGHTS}; "
                         "was the folder copied without it?)")
    # Heads saved before head.json recorded a checksum have no info file: they load as they did.
    info = read_json_object(info_path, ModelError) if info_path.is_file() else {}
    try:
        data = weights_path.read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read {weights_path}: {e.strerror or e}") from None
    digest = hashlib.sha256(data).hexdigest()
    if info.get("weights_sha256", digest) != digest:
        raise ModelError(f"{weights_path} does not match the checksum in {info_path.name}: the files come from "
                         "different saves or were changed (fit the head again)")
    return data, {**info, "weights_sha256": digest}


def load_lm_head(model: nn.Module, location: str | os.PathLike) -> dict:
    """Load a head saved by `save_lm_head` (or copied by `head_copy`) into `model`; return its info
    (`head.json`).

    Strict: every head parameter of `model` must be in the file with the same shape,
    and the file must hold nothing else.

    Example:
        >>> info = load_lm_head(model, "heads/minilm")   # doctest: +SKIP
        >>> info["metrics"]["masked_tokens"]             # doctest: +SKIP
    """
    data, info = read_head(location)
    weights_path = head_files(location)[0]
    try:
        saved = safetensors.torch.load(data)
    except SafetensorError as e:
        raise ModelError(f"{weights_path} is not a readable safetensors file: {e}") from None
    expected = lm_head_state_dict(model)
    for name, tensor in expected.items():
        if name not in saved:
            raise ModelError(f"{weights_path}: missing head parameter {name!r}")
        if saved[name].shape != tensor.shape:
            raise ModelError(
                f"{weights_path}: {name!r} has shape {tuple(saved[name].shape)}, "
                f"expected {tuple(tensor.shape)}"
            )
    unexpected = sorted(set(saved) - set(expected))
    if unexpected:
        raise ModelError(f"{weights_path}: unexpected parameters {unexpected}")
    model.load_state_dict(saved, strict=False)
    return info


def head_copy(location: str | os.PathLike) -> dict[str, Writer]:
    """Writers of a copy of the head at `location` as `lm_head.safetensors` (its bytes, as they are)
    and `lm_head.json` (its info, with the weights' checksum), for `files.write_together` beside the
    files of a task artifact or an export. The files are read (and checked) now, not when written.

    Raises `ModelError` as `read_head`.

    Example:
        >>> write_together("runs/sst2", {**head_copy("heads/minilm"), "config.json": json_writer(config)})  # doctest: +SKIP
    """
    data, info = read_head(location)  # the info holds the weights' checksum
    return {COPY_WEIGHTS: bytes_writer(data), COPY_INFO: json_writer(info)}


def fit_and_save_lm_head(
    model_name: str,
    texts: list[str],
    directory: str | os.PathLike,
    *,
    max_texts: int = 8000,
    held_out: int = 1000,
    steps: int = 150,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    device: str = "auto",
    dtype: str = "auto",
) -> dict:
    """Load `model_name` on `device` in `dtype` (`devices.resolve_device`, `resolve_dtype`), fit its head on
    up to `max_texts` texts, score, save; return the metrics.

    The texts are shuffled with `seed`; the first `held_out` are kept out of the fit and
    give `masked_token_accuracy`. 8,000 texts take about 50 s on 2 CPU cores (MiniLM).
    `directory` is held for the run (`outputs.claim_output`): a head already there is replaced
    only with `overwrite` (else `OutputError`, before the model loads).

    Example:
        >>> fit_and_save_lm_head("all-MiniLM-L6-v2", sentences, "heads/minilm")  # doctest: +SKIP
        {'texts': 8000, 'masked_tokens': 16143, ..., 'masked_token_accuracy': 0.08}
    """
    from .backbones import load_backbone

    place = resolve_device(device)
    weights = resolve_dtype(dtype, place)
    if weights == torch.float16:  # Adam's eps is 0 there and its first updates overflow to inf/NaN
        raise ConfigError("--dtype float16: fitting the MLM head with Adam overflows in float16 (its weights become "
                          "inf/NaN); use bfloat16 or float32")
    with claim_output(directory, owned=(HEAD_WEIGHTS, HEAD_INFO), what="a fitted LM head", overwrite=overwrite,
                      is_ours=lambda d: json_marked(d / HEAD_INFO, "parameters")):
        backbone = load_backbone(model_name, kind="masked", dtype=weights)
        backbone.model.to(place)
        shuffled = list(texts)
        random.Random(seed).shuffle(shuffled)
        test, train = shuffled[:held_out], shuffled[held_out : held_out + max_texts]
        metrics = fit_lm_head(backbone.model, backbone.tokenizer, train, steps=steps, seed=seed, progress=progress)
        metrics["masked_token_accuracy"] = masked_token_accuracy(backbone.model, backbone.tokenizer, test, seed=seed)
        metrics["held_out_texts"] = len(test)
        save_lm_head(backbone.model, directory, metrics)
    return metrics

"""Label-word scoring: log p(label word at the mask | rendered example), exactly.

One scorer per kind of language model, each with two steps: `encode` (a batch of examples →
tensors, run in the data loader) and `__call__` (model + tensors → (B, n_words) log-probs).
The masked and causal scorers split the second step in two, so that the rows of many tasks can
share one forward pass (`serving.mixed_batch`): `reads(batch)` says which sequences to run and which
log-probabilities to read off the output (`Reads`), and `word_scores(batch, logps)` turns what was
read into label-word scores. `__call__` is those two around one `read_logprobs` per `Reads`.

- masked LM: a k-token word is scored with k mask tokens in one forward pass, from each token's
  log-probability at its mask (Schick & Schütze 2021, PET's multi-mask scoring
  without its iterative decoding). Words of equal length share a pass, so when every word is a
  single token there is exactly one pass (the fast path).
- causal LM: the word, and any template text after it, is appended to the prefix; its score comes
  from log p of those tokens (their sum is log p(word, rest | prefix), which ranks labels exactly
  as the LM's probability of the whole filled-in text does). If nothing follows the mask and all
  words are single tokens, one pass over the prefix scores them all (the fast path).
- seq2seq LM (T5): the mask is a sentinel `<extra_id_0>` in the encoder input; the decoder is
  teacher-forced on `<extra_id_0> word` and the word's tokens are scored. Single-token words are
  read off one decoder step (the fast path).

How a word's token log-probabilities become its score is `word_logprob` for every kind: their sum
(`word_score: sum`, the joint log-probability) or their mean (`mean`, which does not penalise a
word for being spelt with more tokens). On a causal LM the tokens are the word's and those of any
template text after the mask. A single-token word with nothing after it scores the same either way.

Logits are computed only at the scored positions where the LM head is a separate module
(BERT's `cls`, GPT-2's `lm_head`): a full vocabulary projection at every token would cost as
much as the encoder itself on a small model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone, lm_head_module
from .devices import model_device
from .errors import ConfigError, ModelError, TemplateError
from .templates import Mask, SpecialTokens, Template, encode_example, segment_texts
from .verbalizers import Verbalizer, tokenize_words


def pad(seqs: list[list[int]], value: int, *, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id lists to a (N, T) tensor and its attention mask: on the right, or on the left (for
    generation with a decoder-only model, so every row's continuation starts right after its text)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), value, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        span = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, span] = torch.tensor(s, dtype=torch.long)
        attn[i, span] = 1
    return ids, attn


def mask_leading_space(template: Template) -> bool:
    """Whether the template puts a space before `{mask}` (so label words are tokenized with one)."""
    dummy = {f: "x" for f in template.fields}
    return any(isinstance(seg, Mask) and text.startswith(" ") for seg, text in segment_texts(template, dummy))


def text_after_mask(template: Template) -> bool:
    dummy = {f: "x" for f in template.fields}
    segs = [seg for seg, text in segment_texts(template, dummy) if text or isinstance(seg, Mask)]
    return not isinstance(segs[-1], Mask)


def vocab_logprobs_at(model: nn.Module, hidden: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Vocabulary log-probs at positions (rows, cols) of the final hidden states."""
    head = lm_head_module(model)
    return F.log_softmax(head(hidden[rows, cols]).float(), dim=-1)


def logprobs_at(model: nn.Module, ids: torch.Tensor, attn: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Vocabulary log-probs at positions (rows, cols) of the model's output."""
    if lm_head_module(model) is not None:
        hidden = model.base_model(input_ids=ids, attention_mask=attn).last_hidden_state
        return vocab_logprobs_at(model, hidden, rows, cols)
    logits = model(input_ids=ids, attention_mask=attn).logits
    return F.log_softmax(logits[rows, cols].float(), dim=-1)


WORD_SCORES = ("sum", "mean")
"""How a multi-token label word's token log-probabilities are combined (`prompt.word_score`)."""


def word_logprob(token_logps: torch.Tensor, valid: torch.Tensor, word_score: str) -> torch.Tensor:
    """(..., L) log-probs of a word's tokens, `valid` (..., L) 1 for its real tokens, 0 for padding →
    (...) the word's score: their sum (the joint log-probability) or, for `mean`, their average.

    Example:
        >>> word_logprob(torch.tensor([[-1.0, -3.0, 0.0]]), torch.tensor([[1, 1, 0]]), "mean")
        tensor([-2.])
    """
    total = (token_logps * valid).sum(-1)
    return total if word_score == "sum" else total / valid.sum(-1)


@dataclass
class Reads:
    """The sequences of one forward pass and the log-probabilities to read from its output.

    `ids`, `attn`: (N, T) right-padded token ids and attention mask. `rows`, `cols`: (R,) the output
    position of each read (a masked LM's mask; for a causal LM the position before the token).
    `tokens`: (R, J) the vocabulary ids whose log-probability each read takes there.
    """

    ids: torch.Tensor
    attn: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    tokens: torch.Tensor


def read_logprobs(model: nn.Module, reads: Reads) -> torch.Tensor:
    """(R, J): log p(tokens[r, j] at output position (rows[r], cols[r])), one forward pass of `reads.ids`."""
    return logprobs_at(model, reads.ids, reads.attn, reads.rows, reads.cols).gather(-1, reads.tokens)


class _Scorer:
    def __init__(self, backbone: Backbone, template: Template, verbalizer: Verbalizer, max_length: int,
                 word_score: str = "sum"):
        template.require_mask()
        if word_score not in WORD_SCORES:
            raise ConfigError(f"word_score must be one of {list(WORD_SCORES)}, got {word_score!r}")
        self.template, self.verbalizer, self.max_length, self.word_score = template, verbalizer, max_length, word_score
        self.tokenizer = backbone.tokenizer
        self.specials = SpecialTokens.of(self.tokenizer)
        self.word_ids = tokenize_words(self.tokenizer, verbalizer.flat_words, leading_space=mask_leading_space(template))
        # Soft tokens are rendered as ids past the embedding table (see `soft_prompts`).
        self.soft_base = backbone.model.get_input_embeddings().num_embeddings

    def _encode(self, example: dict, fill: list[int]):
        return encode_example(self.template, self.tokenizer, example, mask_fill=fill, max_length=self.max_length,
                              specials=self.specials, soft_base=self.soft_base)

    def reads(self, batch: dict) -> list[Reads] | None:
        """What to run and read for an encoded batch (None: this kind runs its own passes, `__call__`)."""
        return None

    def word_scores(self, batch: dict, logps: list[torch.Tensor]) -> torch.Tensor:
        """(B, n_words) label-word log-probabilities from what `reads(batch)` read, in its order."""
        raise NotImplementedError

    def __call__(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return self.word_scores(batch, [read_logprobs(model, r) for r in self.reads(batch)])


class MaskedLMScorer(_Scorer):
    """Masked LMs (BERT, RoBERTa...): k mask tokens for a k-token word."""

    def __init__(self, backbone, template, verbalizer, max_length, word_score="sum"):
        super().__init__(backbone, template, verbalizer, max_length, word_score)
        if self.tokenizer.mask_token_id is None:
            raise ModelError(f"model {backbone.name!r} has no mask token; use a masked LM or set model_kind")
        self.lengths = sorted({len(w) for w in self.word_ids})
        by_length = [[w for w, ids in enumerate(self.word_ids) if len(ids) == k] for k in self.lengths]
        # (k, words of length k): the j-th token of each k-token word, read at mask j
        self._tokens = {k: torch.tensor([[self.word_ids[w][j] for w in words] for j in range(k)])
                        for k, words in zip(self.lengths, by_length)}
        # word w's column among the per-length scores concatenated
        self._order = torch.tensor([w for words in by_length for w in words]).argsort()

    def encode(self, examples: list[dict]) -> dict:
        batch = {}
        mask_id = self.tokenizer.mask_token_id
        for k in self.lengths:
            encs = [self._encode(ex, [mask_id] * k) for ex in examples]
            batch[f"ids{k}"], batch[f"attn{k}"] = pad([e.ids for e in encs], self.tokenizer.pad_token_id)
            batch[f"pos{k}"] = torch.tensor([[e.mask_start + j for j in range(k)] for e in encs])  # (B, k)
        return batch

    def reads(self, batch: dict) -> list[Reads]:
        """One pass per word length k: k reads per row, at its k masks, of the k-token words' tokens there."""
        out = []
        for k in self.lengths:
            pos = batch[f"pos{k}"]  # (B, k)
            n = pos.shape[0]
            rows = torch.arange(n, device=pos.device).repeat_interleave(k)  # (B*k,)
            tokens = self._tokens[k].to(pos.device).repeat(n, 1)  # (B*k, words of length k): token j at mask j
            out.append(Reads(batch[f"ids{k}"], batch[f"attn{k}"], rows, pos.reshape(-1), tokens))
        return out

    def word_scores(self, batch: dict, logps: list[torch.Tensor]) -> torch.Tensor:
        """A word's score combines its tokens' log-probs, each at its own mask (`word_logprob`)."""
        per_length = [word_logprob(logp.view(-1, k, logp.shape[-1]).transpose(1, 2), logp.new_ones(k),
                                   self.word_score)  # (B, words of length k, k) -> (B, words of length k)
                      for k, logp in zip(self.lengths, logps)]
        return torch.cat(per_length, dim=1)[:, self._order.to(per_length[0].device)]

    def vocab_logprobs(self, model: nn.Module, examples: list[dict]) -> torch.Tensor:
        """(B, V) log-probs of every token at one mask token: column w is exactly the score of the
        single-token word w (the label-word search reads all candidates off one pass)."""
        device = model_device(model)
        encs = [self._encode(ex, [self.tokenizer.mask_token_id]) for ex in examples]
        ids, attn = pad([e.ids for e in encs], self.tokenizer.pad_token_id)
        pos = torch.tensor([[e.mask_start] for e in encs], device=device)  # (B, 1): the shapes `__call__` uses
        rows = torch.arange(len(encs), device=device)[:, None]
        return logprobs_at(model, ids.to(device), attn.to(device), rows, pos)[:, 0]


class CausalLMScorer(_Scorer):
    """Decoder-only LMs (GPT-2, Llama...): the word is a continuation of the text before the mask."""

    def __init__(self, backbone, template, verbalizer, max_length, word_score="sum"):
        super().__init__(backbone, template, verbalizer, max_length, word_score)
        self.fast = all(len(w) == 1 for w in self.word_ids) and not text_after_mask(template)

    def encode(self, examples: list[dict]) -> dict:
        pad_id = self.tokenizer.pad_token_id
        if self.fast:
            encs = [self._encode(ex, []) for ex in examples]
            self._check_prefix(encs)
            ids, attn = pad([e.ids[: e.mask_start] for e in encs], pad_id)
            return {"ids": ids, "attn": attn, "last": torch.tensor([e.mask_start - 1 for e in encs])}
        seqs, pos, tok = [], [], []
        n_suffix = len(self.specials.suffix)
        for ex in examples:
            for w in self.word_ids:
                e = self._encode(ex, w)
                self._check_prefix([e])
                end = len(e.ids) - n_suffix
                seqs.append(e.ids[:end])
                pos.append(list(range(e.mask_start - 1, end - 1)))  # position t predicts token t+1
                tok.append(e.ids[e.mask_start : end])
        ids, attn = pad(seqs, pad_id)
        pos_t, valid = pad(pos, 0)
        tok_t, _ = pad(tok, 0)
        soft = tok_t >= self.soft_base  # soft tokens after the mask are input, not text to score
        valid, tok_t = valid.masked_fill(soft, 0), tok_t.masked_fill(soft, 0)
        return {"ids": ids, "attn": attn, "pos": pos_t, "tok": tok_t, "valid": valid}

    def _check_prefix(self, encs):
        if any(e.mask_start < 1 for e in encs):
            raise TemplateError(
                f"template {self.template.source!r} starts with {{mask}}: a causal LM scores the label word as a "
                "continuation, so put text before {mask}"
            )

    def reads(self, batch: dict) -> list[Reads]:
        """Fast path: one read per row, after its last token, of every word's (single) token. Otherwise one
        sequence per (row, word), read at each position that predicts a token of the word or after it."""
        ids, attn = batch["ids"], batch["attn"]
        if self.fast:
            first = torch.tensor([w[0] for w in self.word_ids], device=ids.device)
            rows = torch.arange(ids.shape[0], device=ids.device)
            return [Reads(ids, attn, rows, batch["last"], first.expand(ids.shape[0], -1))]
        pos, tok = batch["pos"], batch["tok"]  # (B*W, L)
        rows = torch.arange(ids.shape[0], device=ids.device).repeat_interleave(pos.shape[1])
        return [Reads(ids, attn, rows, pos.reshape(-1), tok.reshape(-1, 1))]

    def word_scores(self, batch: dict, logps: list[torch.Tensor]) -> torch.Tensor:
        """Fast path: the read is the words' scores; otherwise each word's valid token log-probs combined
        (`word_logprob`: the word's tokens and the template text after it)."""
        (logp,) = logps
        if self.fast:
            return logp
        valid = batch["valid"]  # (B*W, L)
        return word_logprob(logp.view(valid.shape), valid, self.word_score).view(-1, len(self.word_ids))

    def vocab_logprobs(self, model: nn.Module, examples: list[dict]) -> torch.Tensor:
        """(B, V) log-probs of the next token after the text before the mask. Column w is the score
        of the single-token word w when nothing follows the mask; otherwise that score also counts
        the template text after the word."""
        device = model_device(model)
        encs = [self._encode(ex, []) for ex in examples]
        self._check_prefix(encs)
        ids, attn = pad([e.ids[: e.mask_start] for e in encs], self.tokenizer.pad_token_id)
        rows = torch.arange(len(encs), device=device)
        last = torch.tensor([e.mask_start - 1 for e in encs], device=device)
        return logprobs_at(model, ids.to(device), attn.to(device), rows, last)


class Seq2SeqLMScorer(_Scorer):
    """Encoder-decoder LMs (T5): the mask is the first sentinel; the decoder spells out the word."""

    def __init__(self, backbone, template, verbalizer, max_length, word_score="sum"):
        super().__init__(backbone, template, verbalizer, max_length, word_score)
        tok = self.tokenizer
        sentinel = first_sentinel(tok)
        self.slot = sentinel if sentinel is not None else tok.mask_token_id
        if self.slot is None:
            raise ModelError(f"seq2seq model {backbone.name!r} has neither a <extra_id_0> sentinel nor a mask token")
        start = backbone.model.config.decoder_start_token_id
        self.start = start if start is not None else tok.pad_token_id
        # T5 was trained to emit "<extra_id_0> span"; a model without sentinels emits the span directly.
        self.lead = [self.start] + ([sentinel] if sentinel is not None else [])
        self.fast = all(len(w) == 1 for w in self.word_ids)

    def encode(self, examples: list[dict]) -> dict:
        encs = [self._encode(ex, [self.slot]) for ex in examples]
        ids, attn = pad([e.ids for e in encs], self.tokenizer.pad_token_id)
        batch = {"ids": ids, "attn": attn}
        if not self.fast:
            dec = [self.lead + w[:-1] for w in self.word_ids]
            batch["dec"], batch["dec_attn"] = pad(dec, self.tokenizer.pad_token_id)
            batch["tok"], batch["valid"] = pad(self.word_ids, 0)
        return batch

    def __call__(self, model: nn.Module, batch: dict) -> torch.Tensor:
        ids, attn = batch["ids"], batch["attn"]
        enc = model.get_encoder()(input_ids=ids, attention_mask=attn)
        n_b, n_w, n_lead = ids.shape[0], len(self.word_ids), len(self.lead)
        if self.fast:
            dec = torch.tensor([self.lead], device=ids.device).expand(n_b, -1)
            logits = model(encoder_outputs=enc, attention_mask=attn, decoder_input_ids=dec).logits[:, -1]
            first = torch.tensor([w[0] for w in self.word_ids], device=ids.device)
            return F.log_softmax(logits.float(), dim=-1)[:, first]
        hidden = enc.last_hidden_state.repeat_interleave(n_w, dim=0)
        dec = batch["dec"].repeat(n_b, 1)
        out = model(
            encoder_outputs=(hidden,),
            attention_mask=attn.repeat_interleave(n_w, dim=0),
            decoder_input_ids=dec,
            decoder_attention_mask=batch["dec_attn"].repeat(n_b, 1),
        )
        logp = F.log_softmax(out.logits[:, n_lead - 1 :].float(), dim=-1)  # (B*W, L, V): predicts word tokens
        tok, valid = batch["tok"].repeat(n_b, 1), batch["valid"].repeat(n_b, 1)
        token_logp = logp[:, : tok.shape[1]].gather(-1, tok[..., None]).squeeze(-1)  # (B*W, L)
        return word_logprob(token_logp, valid, self.word_score).view(n_b, n_w)

    def vocab_logprobs(self, model: nn.Module, examples: list[dict]) -> torch.Tensor:
        """(B, V) log-probs of the first decoder token after `<extra_id_0>`: column w is exactly the
        score of the single-token word w."""
        device = model_device(model)
        ids, attn = pad([self._encode(ex, [self.slot]).ids for ex in examples], self.tokenizer.pad_token_id)
        ids, attn = ids.to(device), attn.to(device)
        enc = model.get_encoder()(input_ids=ids, attention_mask=attn)
        dec = torch.tensor([self.lead], device=device).expand(ids.shape[0], -1)
        logits = model(encoder_outputs=enc, attention_mask=attn, decoder_input_ids=dec).logits[:, -1]
        return F.log_softmax(logits.float(), dim=-1)


def first_sentinel(tokenizer) -> int | None:
    """The id of T5's `<extra_id_0>`, which stands for the mask in a seq2seq LM's input; None without sentinels."""
    return tokenizer.get_vocab().get("<extra_id_0>")


def mask_slot(kind: str, tokenizer) -> list[int]:
    """What an input holds at `{mask}` as a model of `kind` reads a one-token label word there: [MASK]
    on a masked LM (a k-token word gets k of them), the first sentinel on a seq2seq LM (the mask
    token without sentinels), nothing on a causal LM (the word is written there, as the continuation)."""
    if kind == "masked":
        return [tokenizer.mask_token_id]
    if kind == "seq2seq":
        sentinel = first_sentinel(tokenizer)
        return [sentinel if sentinel is not None else tokenizer.mask_token_id]
    return []


SCORERS = {"masked": MaskedLMScorer, "causal": CausalLMScorer, "seq2seq": Seq2SeqLMScorer}


def make_scorer(backbone: Backbone, template: Template, verbalizer: Verbalizer, max_length: int = 256,
                word_score: str = "sum") -> _Scorer:
    """The label-word scorer for this backbone's kind; `word_score` (sum | mean) combines a multi-token
    word's token log-probabilities (`word_logprob`).

    Example:
        >>> scorer = make_scorer(bb, parse_template("{text} It was {mask}."), parse_verbalizer({0: "bad", 1: "good"}))
        >>> word_logp = scorer(bb.model, scorer.encode([{"text": "Fun film."}]))   # (1, 2)
    """
    return SCORERS[backbone.kind](backbone, template, verbalizer, max_length, word_score)

"""Sentence embeddings for choosing demonstrations by similarity (LM-BFF §6.2 uses SBERT).

Mean-pooled, L2-normalised last hidden states of any `transformers` encoder — the recipe the
embedded default (sentence-transformers/all-MiniLM-L6-v2) was trained with, so cosine similarity
is a dot product. Loaded once per model name and kept (one frozen encoder serves every task).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from .backbones import DEFAULT_MODEL, load_pretrained, load_tokenizer, resolve_model_path
from .scoring import pad
from .templates import SpecialTokens, encode_text


class SentenceEncoder(nn.Module):
    """Example:
        >>> enc = SentenceEncoder()                       # the embedded all-MiniLM-L6-v2
        >>> enc.encode(["A gripping film.", "Dull."]).shape
        torch.Size([2, 384])
    """

    def __init__(self, name: str = DEFAULT_MODEL, max_length: int = 128):
        super().__init__()
        from transformers import AutoModel

        self.model = load_pretrained(AutoModel, resolve_model_path(name))[0].eval()  # quietly, as every backbone
        self.model.requires_grad_(False)
        self.tokenizer, self.max_length = load_tokenizer(name), max_length
        self.specials = SpecialTokens.of(self.tokenizer)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """(N, dim) unit vectors; each text is read literally (`templates.literal_ids`)."""
        out = []
        for i in range(0, len(texts), batch_size):
            rows = [encode_text(self.tokenizer, text, max_length=self.max_length, specials=self.specials)
                    for text in texts[i : i + batch_size]]
            ids, attn = (t.to(self.model.device) for t in pad(rows, self.tokenizer.pad_token_id))
            hidden = self.model(input_ids=ids, attention_mask=attn).last_hidden_state
            weights = attn.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(mean.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, self.model.config.hidden_size)


@lru_cache(maxsize=4)
def sentence_encoder(name: str | None = None) -> SentenceEncoder:
    """The shared encoder for `name` (default: the embedded all-MiniLM-L6-v2)."""
    return SentenceEncoder(name or DEFAULT_MODEL)

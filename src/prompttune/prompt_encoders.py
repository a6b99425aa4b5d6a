"""P-tuning's prompt encoders: where soft-token vectors come from during training.

Liu et al. (2021, "GPT Understands, Too", §3.2) found that optimising the prompt vectors directly
gets stuck in poor local minima, because they are discrete-looking, independent points; they
generate them instead from a small network over their own input embeddings:

- `lstm`: a two-layer bidirectional LSTM, then a two-layer ReLU MLP (the paper's choice: the
  LSTM makes the prompt tokens depend on one another);
- `mlp`: the two-layer ReLU MLP alone;
- `none`: the input embeddings themselves (prompt tuning, trained through the same code path).

Only the encoder's outputs matter at inference, so a saved task stores them
(`SoftPrompt.stored_state`) and the encoder is never needed to load or serve it.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ConfigError

ENCODERS = ("lstm", "mlp", "none")


class PromptEncoder(nn.Module):
    """(n, dim) input embeddings → (n, dim) prompt vectors.

    Example:
        >>> enc = PromptEncoder("lstm", torch.randn(6, 384))
        >>> enc().shape
        torch.Size([6, 384])
    """

    def __init__(self, kind: str, init: torch.Tensor):
        super().__init__()
        if kind not in ENCODERS:
            raise ConfigError(f"method.encoder must be one of {list(ENCODERS)}, got {kind!r}")
        n, dim = init.shape
        self.kind = kind
        self.embedding = nn.Parameter(init.clone())
        if kind == "lstm":
            # hidden size dim/2 per direction: the two directions together give back `dim` (P-tuning's code).
            self.lstm = nn.LSTM(dim, max(1, dim // 2), num_layers=2, bidirectional=True, batch_first=True)
            width = 2 * max(1, dim // 2)
        else:
            width = dim
        if kind != "none":
            self.mlp = nn.Sequential(nn.Linear(width, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self) -> torch.Tensor:
        h = self.embedding
        if self.kind == "lstm":
            h = self.lstm(h[None])[0][0]
        return self.mlp(h) if self.kind != "none" else h

"""How much `prompttune serve` takes on: per request, in flight, and per micro-batch.

A module of its own (no web framework imported) so that the command line can show the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """How much the server takes on: per request, in flight, and per micro-batch."""

    max_batch_size: int = 32
    """Texts per call of the task pool (one micro-batch, any mix of tasks)."""
    max_wait_ms: int = 5
    """How long the oldest waiting text may wait for others to fill its batch."""
    max_queue: int = 1024
    """Texts admitted and not yet answered, over all requests; past it, 503 with Retry-After."""
    max_texts: int = 64
    """Texts in one predict request; prompts in one completion request; messages in one chat."""
    max_text_chars: int = 10_000
    """Characters in one text, prompt, stop string or chat message."""
    max_new_tokens: int = 256
    """The largest `max_tokens` a generation request may ask for."""

    @property
    def max_body_bytes(self) -> int:
        """Request bodies past this are refused (413) before they are read: every text at its longest,
        at 12 bytes a character (a character beyond the BMP, e.g. an emoji, as JSON escapes it:
        `\\ud83d\\ude00`), plus 64 KiB for the rest."""
        return 12 * self.max_texts * self.max_text_chars + 65536

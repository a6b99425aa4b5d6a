"""One forward pass for the rows of many tasks on one shared backbone.

Each task says what its batch needs from the model (`classifier.reads(batch)`: sequences to run and
log-probabilities to read off the output, `scoring.Reads`) and which parts it puts on the model
(`classifier.parts()`). `shared_pass` concatenates every task's sequences, orders them by length,
right-pads each chunk of at most `max_batch_size` to its longest, binds each task's parts to that
task's rows only (`model_parts.bind_parts` with one row group per task), runs the backbone once per
chunk and hands each task the log-probs it asked for, which the task turns into scores itself
(`classifier.scores_from`). Nothing here knows a method, a kind of part or a kind of language model.

Padding on the right leaves every real position where it was: a masked LM's padding keys are
masked out, a causal LM's come after every token that is read. Rows of one task get exactly what
that task alone computes, to float tolerance (tests/test_mixed_batch.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..model_parts import ModelPart, bind_parts
from ..scoring import Reads, read_logprobs


@dataclass
class Job:
    """One task's share of a pass: its parts and what it reads."""

    parts: Sequence[ModelPart]
    reads: list[Reads]


def shared_pass(model: nn.Module, jobs: Sequence[Job], *, pad_id: int, max_batch_size: int = 32) -> list[list[torch.Tensor]]:
    """For each job, for each of its `Reads`, the (R, J) log-probs it asked for.

    All jobs' sequences run through `model` together, in chunks of at most `max_batch_size` sequences
    (a job's sequences may fall in several chunks). Raises `ValueError` if `max_batch_size` < 1.

    Example:
        >>> jobs = [Job(a.parts(), a.reads(batch_a)), Job(b.parts(), b.reads(batch_b))]
        >>> logps_a, logps_b = shared_pass(model, jobs, pad_id=tok.pad_token_id)
        >>> a.scores_from(batch_a, logps_a)                       # (B_a, classes of a)
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be ≥ 1, got {max_batch_size}")
    everything = [r for job in jobs for r in job.reads]
    if not everything:
        return [[] for _ in jobs]
    device = everything[0].ids.device
    # Every sequence, right-padded to the longest; which job each belongs to; each read's global row.
    n_seq = sum(r.ids.shape[0] for r in everything)
    width = max(r.ids.shape[1] for r in everything)
    ids = torch.full((n_seq, width), pad_id, dtype=torch.long, device=device)
    attn = torch.zeros((n_seq, width), dtype=torch.long, device=device)
    owner = torch.empty(n_seq, dtype=torch.long, device=device)
    rows, cols, tokens = [], [], []
    spans: list[list[tuple[int, int, int]]] = [[] for _ in jobs]  # per job, per Reads: (first read, reads, tokens)
    start, first = 0, 0
    for j, job in enumerate(jobs):
        for r in job.reads:
            n, t = r.ids.shape
            ids[start : start + n, :t], attn[start : start + n, :t] = r.ids, r.attn
            owner[start : start + n] = j
            spans[j].append((first, *r.tokens.shape))
            rows.append(r.rows + start)
            cols.append(r.cols)
            tokens.append(r.tokens)
            start, first = start + n, first + r.tokens.shape[0]
    # Shortest first, so that a chunk pads its sequences to about their own length.
    order = torch.argsort(attn.sum(1), stable=True)
    place = torch.empty_like(order)
    place[order] = torch.arange(n_seq, device=device)
    ids, attn, owner = ids[order], attn[order], owner[order]
    rows, cols = place[torch.cat(rows)], torch.cat(cols)
    n_tokens = max(t.shape[1] for t in tokens)
    tokens = torch.cat([nn.functional.pad(t, (0, n_tokens - t.shape[1])) for t in tokens])  # (R, J_max)
    out = torch.empty(tokens.shape, dtype=torch.float32, device=device)

    for lo in range(0, n_seq, max_batch_size):
        hi = min(lo + max_batch_size, n_seq)
        used = int(attn[lo:hi].sum(0).nonzero().max()) + 1  # the chunk's longest sequence
        chunk_owner = owner[lo:hi]
        present = chunk_owner.unique().tolist()
        if len(present) == 1:
            groups = [(jobs[present[0]].parts, None)]
        else:
            groups = [(jobs[j].parts, (chunk_owner == j).nonzero().squeeze(1)) for j in present]
        bind_parts(model, groups)
        picked = ((rows >= lo) & (rows < hi)).nonzero().squeeze(1)
        chunk = Reads(ids[lo:hi, :used], attn[lo:hi, :used], rows[picked] - lo, cols[picked], tokens[picked])
        out[picked] = read_logprobs(model, chunk)

    return [[out[at : at + n, :width] for at, n, width in job_spans] for job_spans in spans]

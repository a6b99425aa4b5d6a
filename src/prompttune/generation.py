"""Generation with a task's prompts in place: the text before `{mask}` is the prompt, the model
continues it (causal LMs) or fills the mask's span (T5), with the task's soft tokens and deep
prefixes bound.

Batches are left-padded for decoder-only models, so every row's continuation starts right after
its own last token; the key/value cache holds only real tokens (deep prompts enter inside the
attention call, see `deep_prompts`), so `generate`'s caching and padding logic is untouched.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ModelError
from .models import PromptClassifier, bind_prompts
from .templates import encode_example


def prompt_ids(classifier: PromptClassifier, example: dict) -> list[int]:
    """The ids a generation starts from: causal LMs get the text before `{mask}` (all of it
    without a mask); seq2seq LMs get the whole input with the mask as the first sentinel."""
    scorer = classifier.scorer
    seq2seq = classifier.kind == "seq2seq"
    fill = [scorer.slot] if seq2seq else []
    enc = encode_example(classifier.template, classifier.tokenizer, example, mask_fill=fill,
                         max_length=scorer.max_length, specials=scorer.specials, soft_base=scorer.soft_base)
    if seq2seq:
        return enc.ids
    return enc.ids[: enc.mask_start] if enc.mask_start >= 0 else enc.ids[: len(enc.ids) - len(scorer.specials.suffix)]


def generate(classifier: PromptClassifier, examples: list[dict], *, max_new_tokens: int = 20, batch_size: int = 8,
             **generate_kwargs) -> list[str]:
    """Continue each example's prompt; return the generated text (without the prompt).

    Example:
        >>> clf, _ = load_artifact("runs/prefix-gpt2")
        >>> generate(clf, [{"sentence": "A gripping film."}], max_new_tokens=5)
        [' great.']
    """
    if not isinstance(classifier, PromptClassifier):
        raise ModelError("generation needs a template task (a head-based task has no text to continue)")
    model: nn.Module = classifier.model
    if classifier.kind == "masked":
        raise ModelError(f"{type(model).__name__} is a masked LM: it fills masks but does not generate; use a causal or seq2seq model")
    tok = classifier.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    left = classifier.kind == "causal"
    out: list[str] = []
    was_training = classifier.training
    classifier.eval()
    try:
        for i in range(0, len(examples), batch_size):
            seqs = [prompt_ids(classifier, ex) for ex in examples[i : i + batch_size]]
            ids, attn = _pad(seqs, pad_id, left=left)
            ids, attn = ids.to(model.device), attn.to(model.device)
            with torch.no_grad():
                bind_prompts(classifier)
                gen = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                                     pad_token_id=pad_id, **{"do_sample": False, **generate_kwargs})
            new = gen[:, ids.shape[1] :] if left else gen
            out.extend(tok.batch_decode(new, skip_special_tokens=True))
    finally:
        classifier.train(was_training)
    return out


def _pad(seqs: list[list[int]], value: int, *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), value, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        span = slice(width - len(s), width) if left else slice(0, len(s))
        ids[row, span] = torch.tensor(s, dtype=torch.long)
        attn[row, span] = 1
    return ids, attn

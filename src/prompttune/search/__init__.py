"""Prompts found, not written: discrete search over templates and label words.

- `triggers`: AutoPrompt (Shin et al. 2020) — `{trigger:N}` slots filled by gradient-guided
  token search.
- `label_words`: automatic verbalizer (PETAL, Schick et al. 2020; LM-BFF, Gao et al. 2021) —
  per-class candidates by the masked LM's likelihood, assignment chosen on dev.
- `template_generation`: LM-BFF's templates proposed by a seq2seq LM (T5) filling spans
  around the input and the label word, ranked by zero-shot dev accuracy.
- `common`: what they share (the vocabulary of whole-word tokens, zero-shot accuracy).
- `run`: the driver behind `prompttune search ...` (a run config in, a run config with the found
  prompt out, plus a `search.json` report).

Every search ends in an ordinary template or verbalizer: the result is plain text that any
method trains or predicts with.
"""

"""p-tuning-v2 (Liu et al. 2022): deep prompts at every layer for understanding tasks.

The same per-layer key/value prefixes as prefix-tuning, trained directly (no reparameterization by
default: the paper finds it helps on some tasks only), read through a template + verbalizer or,
with `method.head: true`, a linear head on [CLS] as in the paper.
"""

from . import Method, register_method
from .prefix_tuning import attach_deep_prompt

register_method(Method("p-tuning-v2", "deep prompts at every layer, verbalizer or linear head (Liu et al. 2022)",
                       head=None, attach=lambda clf, options, folded: attach_deep_prompt(clf, options, folded, False)))

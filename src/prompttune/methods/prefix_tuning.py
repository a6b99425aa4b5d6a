"""prefix-tuning (Li & Liang 2021): trainable key/value prefixes at every attention layer.

Trained through an MLP reparameterization (their §4.3; `method.reparameterize: false` turns it
off), folded away when the task is saved. Works on encoder-only, decoder-only and encoder-decoder
models (`deep_prompts`), read through a template + verbalizer or, with `method.head: true`, a
linear head.
"""

from ..deep_prompts import DeepPrompt
from . import Method, register_method


def attach_deep_prompt(classifier, options, folded: bool, reparameterize: bool) -> None:
    """Give the classifier a deep prompt; train it (and a classification head, if any)."""
    if options.reparameterize is not None:
        reparameterize = options.reparameterize
    classifier.deep = DeepPrompt(classifier.model, options.prompt_length, reparameterize=reparameterize,
                                 hidden=options.reparam_hidden, folded=folded)
    for p in classifier.head_parameters():
        p.requires_grad_(True)


register_method(Method("prefix-tuning", "key/value prefixes at every layer via an MLP, folded away when saved (Li & Liang 2021)",
                       head=None, attach=lambda clf, options, folded: attach_deep_prompt(clf, options, folded, True)))

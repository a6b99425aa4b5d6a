"""prompt-tuning (Lester et al. 2021): only the template's soft-token vectors train.

The model is frozen; a task is the n × d vectors of its `{soft...}` tokens. Lester et al. put them
as a prefix; here they go wherever the template puts them, beside text fields, literal text and
the mask.
"""

from ..soft_prompts import SoftPrompt, initial_vectors
from . import Method, register_method


def attach_soft_prompt(classifier, options, folded: bool, encoder: str | None = None) -> None:
    """Give a PromptClassifier a soft prompt for its template's `{soft}` tokens; train it."""
    init = initial_vectors(classifier.template, classifier.model, classifier.tokenizer, options.init)
    classifier.soft = SoftPrompt(classifier.model, init, None if folded else encoder)


register_method(Method("prompt-tuning", "soft-token vectors in the template train, model frozen (Lester et al. 2021)",
                       head=False, attach=attach_soft_prompt))

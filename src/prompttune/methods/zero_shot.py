"""zero-shot: template + verbalizer on the frozen model, nothing trained, nothing saved."""

from . import Method, register_method

register_method(Method("zero-shot", "score label words with the frozen model; no training", head=False, attach=lambda clf, options, folded: None))

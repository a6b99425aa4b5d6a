"""in-context: instruction + K demonstrations + the query on a frozen causal LM; nothing trained.

The classifier is built by `task.build_classifier` (`prompttune.in_context.InContextClassifier`),
since what it needs — the demonstrations — comes from the task's data, not from the model.
"""

from . import Method, register_method

register_method(Method("in-context", "K demonstrations + query in a causal LM's context (prefix cached); "
                       "optional instruction and chain-of-thought; no training", head=False,
                       attach=lambda clf, options, folded: None))

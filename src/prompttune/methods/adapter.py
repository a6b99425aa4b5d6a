"""adapter (Houlsby et al. 2019): small bottleneck MLPs inside every layer train, model frozen.

"Parameter-Efficient Transfer Learning for NLP" (Houlsby, Giurgiu, Jastrzebski, Morrone,
de Laroussilhe, Gesmundo, Attariyan, Gelly; ICML 2019). `method.adapter_kind` picks the placement:
`houlsby` (after attention and feed-forward, the paper's) or `pfeiffer` (after the feed-forward
only; Pfeiffer et al. 2021, AdapterFusion); `method.reduction_factor` r sets the bottleneck width
d/r. Each adapter starts as the identity, so an untrained task scores like the bare model. Read
through a template + verbalizer, or with `method.head: true` through a new linear head, which
then trains too. See `prompttune.adapters` for where the adapters sit in each model family.
"""

from ..adapters import AdapterSet
from . import Method, register_method


def attach_adapters(classifier, options, folded: bool) -> None:
    """Give the classifier bottleneck adapters (trainable as built); train its head, if any."""
    classifier.adapters = AdapterSet(classifier.model, getattr(options, "adapter_kind", "houlsby"),
                                     getattr(options, "reduction_factor", 16))
    for p in classifier.head_parameters():
        p.requires_grad_(True)


register_method(Method("adapter", "bottleneck adapters in every layer train, model frozen (Houlsby et al. 2019)",
                       head=None, attach=attach_adapters))

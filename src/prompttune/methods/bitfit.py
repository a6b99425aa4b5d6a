"""bitfit (Ben Zaken et al. 2022): only the model's bias terms train (plus a classification head).

"BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked Language-models"
(Ben Zaken, Ravfogel, Goldberg; ACL 2022). Every parameter named `bias` trains: those of the
query/key/value and output projections, the feed-forward layers and the LayerNorms, as in the
paper's code, and on a template task also the LM head's (BERT's `cls.predictions.bias` over the
vocabulary). Read through a template + verbalizer, or with `method.head: true` through a new
linear head, which then trains too.

Models without bias terms (T5 and its descendants, Llama-style models) are refused: BitFit has
nothing to train on them. BitFit changes backbone parameters in place, so a BitFit task needs its
own backbone copy (`build_classifier` loads one unless a backbone is passed in).
"""

from ..errors import ModelError
from . import Method, register_method


def attach_bitfit(classifier, options, folded: bool) -> None:
    """Train the backbone's bias terms and the classification head, if any."""
    head = classifier.head_parameters()
    head_ids = {id(p) for p in head}
    biases = [p for n, p in classifier.model.named_parameters() if n.rsplit(".", 1)[-1] == "bias" and id(p) not in head_ids]
    if not biases:
        model = classifier.model
        raise ModelError(
            f"BitFit trains only bias terms, and {type(model).__name__} (model_type {model.config.model_type!r}) has none "
            "outside a classification head: BitFit has nothing to train on this model; use adapter, prefix-tuning or "
            "p-tuning-v2 instead"
        )
    for p in biases + head:
        p.requires_grad_(True)


register_method(Method("bitfit", "only the bias terms train (plus a head, if any) (Ben Zaken et al. 2022)",
                       head=None, attach=attach_bitfit))

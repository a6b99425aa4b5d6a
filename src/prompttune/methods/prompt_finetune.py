"""prompt-finetune: PET / LM-BFF prompt-based fine-tuning.

The template + verbalizer turn classification into the model's own cloze task, and the whole
model trains with cross-entropy over the label words' scores. At 16 examples per class this beats
a new head on [CLS] because the label words' output embeddings are a pretrained classifier to
start from (Gao et al. 2021, LM-BFF, Table 3).
"""

from torch import nn

from . import Method, register_method


def train_everything(classifier: nn.Module, options=None, folded: bool = False) -> None:
    for p in classifier.parameters():
        p.requires_grad_(True)


register_method(Method("prompt-finetune", "template + verbalizer, all weights trained (PET / LM-BFF)", head=False, attach=train_everything,
                       trains_base=True))

"""finetune: a new classification head on [CLS] / the pooled state, all weights trained.

The baseline every table compares against (Devlin et al. 2019).
"""

from . import Method, register_method
from .prompt_finetune import train_everything

register_method(Method("finetune", "new head on [CLS], all weights trained (baseline)", head=True, attach=train_everything,
                       trains_base=True))

"""prompttune: prompt learning and parameter-efficient tuning of pretrained language models.

One frozen model, many tasks, each task a small artifact beside it.

Example:
    >>> from prompttune import TaskSpec, build_classifier, evaluate
    >>> spec = TaskSpec(method="zero-shot", model="path/to/bert", text_fields=["sentence"], labels=["0", "1"],
    ...                 template="{sentence} It was {mask}.", verbalizer={"0": ["terrible"], "1": ["great"]})
    >>> clf, _ = build_classifier(spec)
"""

__version__ = "0.1.0"

import logging  # noqa: E402

# bitsandbytes, when installed, is imported by peft even where nothing is quantized, and on a CPU with
# AVX512-BF16 it logs a warning that an optional kernel could not be fetched from a model hub (which no
# run needs, and which this package never reaches): not a user's concern, so not on their terminal.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from .artifacts import load_artifact, save_artifact  # noqa: E402
from .backbones import DEFAULT_MODEL, Backbone, load_backbone  # noqa: E402
from .errors import (  # noqa: E402
    ArtifactError,
    ConfigError,
    DataError,
    ExportError,
    ModelError,
    OutputError,
    PromptTuneError,
    TemplateError,
    VerbalizerError,
)
from .deep_prompts import DeepPrompt  # noqa: E402
from .evaluation import evaluate  # noqa: E402
from .export import export_peft  # noqa: E402
from .generation import Decoding, generate  # noqa: E402
from .methods import Method, MethodOptions, get_method, register_method  # noqa: E402
from .models import HeadClassifier, PromptClassifier  # noqa: E402
from .scoring import make_scorer  # noqa: E402
from .soft_prompts import SoftPrompt  # noqa: E402
from .task import TaskSpec, build_classifier  # noqa: E402
from .templates import Template, parse_template  # noqa: E402
from .training import TrainConfig, train  # noqa: E402
from .verbalizers import Verbalizer, parse_verbalizer  # noqa: E402

__all__ = [
    "ArtifactError", "Backbone", "ConfigError", "DEFAULT_MODEL", "DataError", "Decoding", "DeepPrompt", "ExportError",
    "HeadClassifier", "Method", "MethodOptions", "ModelError", "OutputError", "PromptClassifier", "PromptTuneError", "SoftPrompt",
    "TaskSpec", "Template", "TemplateError", "TrainConfig", "Verbalizer", "VerbalizerError", "build_classifier",
    "evaluate", "export_peft", "generate", "get_method", "load_artifact", "load_backbone", "make_scorer",
    "parse_template", "parse_verbalizer", "register_method", "save_artifact", "train",
]

"""Every error prompttune raises on bad input is a `PromptTuneError`.

The message names the problem and what was expected, so a user can act on it
without reading a traceback.
"""


class PromptTuneError(Exception):
    """Base class: catch this to handle any prompttune input error."""


class TemplateError(PromptTuneError):
    """A template that cannot be parsed or rendered (unknown field, braces, no mask)."""


class VerbalizerError(PromptTuneError):
    """Label words that are missing, empty, or do not cover the data's labels."""


class ConfigError(PromptTuneError):
    """A config key with a wrong name, type or value."""


class DataError(PromptTuneError):
    """A data file that cannot be read, or lacks the named columns."""


class ArtifactError(PromptTuneError):
    """A task artifact that is missing, malformed, or made for another backbone."""


class ModelError(PromptTuneError):
    """A backbone that cannot be loaded or does not fit the method."""


class ExportError(PromptTuneError):
    """A task that cannot be written in another library's format without changing its outputs."""


class OutputError(PromptTuneError):
    """An output directory that cannot be written, is in use, is full, or holds files a command
    would replace without being asked (`--overwrite`)."""


class LaunchError(PromptTuneError):
    """A process of an `accelerate launch` that cannot go on because another one stopped."""

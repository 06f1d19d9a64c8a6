"""Errors the user can fix: a config value, a data file or row, a missing or corrupt checkpoint, a
model that cannot be loaded, a machine without what the config asks for.

`python -m rto.main` prints a `UserError` as one short message (what is wrong, which key, file or
line, what to do) and exits 1 without a traceback (`rto.main`); any other exception is a bug in rto
and keeps its traceback. `HYDRA_FULL_ERROR=1` shows the full traceback of either.

Raise these where we know what the user asked for (the key, the file, the line): a library's error
is converted there, never by matching messages at the top. Each class keeps the builtin base its
callers caught before (`ValueError`, `FileNotFoundError`, ...).
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in what the user gave us; the message says what, where and what to do."""

    kind = "input"  # shown in the one-line report: "Error (config): ..."


class ConfigError(UserError, ValueError):
    """A config value (or a combination of values) that cannot work; the message names the key."""

    kind = "config"


class TokenizerMismatchError(ConfigError):
    """Two models (or a model and the data) that must share token ids have different tokenizers."""


class DataError(UserError, ValueError):
    """A data file, line, row or set that cannot be trained on; the message names the file and line
    or row, or the set and the keys that size it."""

    kind = "data"


class RunFolderError(UserError, FileNotFoundError):
    """A folder handed to a command (`python -m rto.report`, ...) that holds no run of the kind it reads."""

    kind = "folder"


class CheckpointError(UserError):
    """A stage checkpoint that is missing or cannot be used."""

    kind = "checkpoint"


class MissingStageError(CheckpointError, FileNotFoundError):
    """A stage needs an earlier stage's checkpoint that is neither in the run folder nor configured."""


class ModelError(UserError, OSError):
    """A model or tokenizer (`model.pretrained`, `reward_model.path`, `eval.judge`) that cannot be
    found or loaded as configured."""

    kind = "model"


class MachineError(UserError):
    """This machine lacks what the config asks for (a GPU, network access, a package)."""

    kind = "environment"

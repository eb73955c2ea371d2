"""Errors for people: each names what is wrong and how to fix it, in one sentence.

``cli.main()`` catches :class:`LlamactlError` and prints its message as one red line; exit code 2
for bad input (:class:`UserInputError` and subclasses), 1 for failures of a run.
"""

from __future__ import annotations


class LlamactlError(Exception):
    """Base class: a failure that the CLI reports as one line, without a traceback."""

    exit_code = 1


class UserInputError(LlamactlError):
    """The user's input (a flag, a config value, a path) is wrong."""

    exit_code = 2


class ConfigError(UserInputError):
    """A config key or value is wrong."""


class WeightMappingError(UserInputError):
    """A checkpoint does not fit the model: an unknown, missing or misshapen weight."""


class ModelNotFoundError(UserInputError):
    """A model source (folder, hub id, GGUF file, run directory) cannot be found."""


class DataError(UserInputError):
    """Input data is missing, empty or malformed."""


class RunError(LlamactlError):
    """A run failed for a reason other than bad input (out of memory, a crash in a worker)."""

"""The one error family of sodef_cli.

Library code raises :class:`SodefError` subclasses with a message that says what went wrong and how to
fix it. Only ``cli.py`` turns them into exit codes (``exit_code`` below) and one-line messages.
"""

from __future__ import annotations

__all__ = [
    "SodefError",
    "UsageError",
    "InputError",
    "DataError",
    "ModelError",
    "ModelFileError",
    "TrainingDivergedError",
    "DeviceError",
    "ResultsError",
    "OutputError",
    "EXIT_OK",
    "EXIT_RUNTIME",
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
]

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class SodefError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = EXIT_RUNTIME


class UsageError(SodefError):
    """A wrong option, recipe key or value: the user must change the command."""

    exit_code = EXIT_USAGE


class InputError(UsageError, ValueError):
    """A value outside what an operation accepts (a count below 1, head.dim below the number of classes).

    A usage error to the CLI (exit 2) and a ``ValueError`` to Python callers. ``key`` names the config key
    (e.g. ``head.dim``); the message never names a command-line flag, the CLI adds its own.
    """

    def __init__(self, message: str, *, key: str = ""):
        super().__init__(message)
        self.key = key


class DataError(SodefError):
    """A data set that cannot be read or has the wrong layout."""


class ModelError(SodefError):
    """A model that cannot be created (unknown timm name, hub needed while offline, class mismatch)."""


class ModelFileError(SodefError):
    """A model file that is missing, unreadable, corrupt, unsafe or not made by this tool."""


class TrainingDivergedError(SodefError):
    """NaN or inf during training; the message names phase and step."""


class DeviceError(SodefError):
    """CUDA asked for but absent, or out of GPU memory."""


class ResultsError(SodefError):
    """A results file that cannot be read, or does not match the run it should resume."""


class OutputError(SodefError):
    """An output file that cannot be written (a folder in the way, no permission, disk full)."""

"""Typed errors raised by the library; only `cli.py` turns them into exit codes."""


class PipelineError(Exception):
    """A problem the user can fix: a one-line message and an optional hint."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class InputError(PipelineError):
    """A user-supplied file is missing, unreadable or malformed."""


class ConfigError(PipelineError):
    """An option or config key is unknown or has an invalid value."""


class StageError(PipelineError):
    """A run directory lacks a stage's output, or holds outputs that do not match."""


def first_line(error: BaseException) -> str:
    """A foreign exception (Keras, NumPy, SentencePiece, h5py) as one short line, to quote in ours."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__

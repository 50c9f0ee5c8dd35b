"""One exception tree for PyTrain.

Every error PyTrain raises on purpose derives from :class:`PyTrainError`. Errors carry the data a
user needs to act (task id, model name, path, exit code, stderr tail) and a ``hint`` at the fix.
Driver and library errors are translated where they enter PyTrain code
(``raise DatabaseError(...) from exc``); only the CLI prints them.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` as a message, a log line and a PostgreSQL ``text`` value can hold it: an undecodable
    byte of a file name (the lone surrogate ``os.fsdecode`` makes of it) as ``\\xNN``, a NUL as
    ``\\x00``, anything else as it is. ``printable("caf\\udce9.mp4") == "caf\\\\xe9.mp4"``."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file name makes: its code point, escaped
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


class PyTrainError(Exception):
    """Root of all PyTrain errors.

    Args:
        message: what went wrong, naming the bad value.
        hint: how to fix it (optional); shown by the CLI after the message.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} (hint: {self.hint})"
        return self.message


class ConfigurationError(PyTrainError):
    """A setting or a task field has a value PyTrain cannot work with."""


class DatabaseError(PyTrainError):
    """The database cannot be reached, or its schema is missing or out of date."""


class SchemaOutOfDateError(DatabaseError):
    """The database schema is older than this PyTrain; ``pytrain db upgrade`` fixes it."""


class TaskNotFoundError(PyTrainError):
    """No training task has the given id."""


class SweepNotFoundError(ConfigurationError):
    """No sweep has the given name."""


class SourceError(PyTrainError):
    """A dataset, class folder or video path is missing, unregistered, empty or unsafe."""


class SplitError(SourceError):
    """A class has too few clips for the requested train/val/test split."""


class VideoDecodeError(PyTrainError):
    """A video file cannot be opened or decoded (not an mp4, truncated, empty, unreadable)."""

    def __init__(self, path: object, reason: str, *, hint: str | None = None) -> None:
        super().__init__(f"cannot decode video {path}: {reason}", hint=hint)
        self.path = path
        self.reason = reason


class TrainingError(PyTrainError):
    """Training could not start or did not finish."""


class CheckpointReadError(TrainingError):
    """A checkpoint exists but cannot be read now (an I/O or permission error, no memory): the
    checkpoint is not damaged, so it is kept where it is and the run fails, to be retried.

    Attributes:
        path: the checkpoint file.
        cause: the error that stopped the read (``OSError``, ``MemoryError``).
    """

    def __init__(self, path: object, cause: BaseException) -> None:
        reason = f"{type(cause).__name__}: {cause}"
        super().__init__(
            f"cannot read checkpoint {path} ({reason}); every checkpoint is kept, and a retry of the task resumes from them",
            hint="check the file system and the file's permissions (the checkpoint is not known to be damaged: it could not be read)",
        )
        self.path = path
        self.cause = cause


class ExportError(PyTrainError):
    """The ONNX export failed or the exported model does not match PyTorch."""


class WeightsError(PyTrainError):
    """Pretrained weights could not be downloaded, or the download failed its hash check."""


class RunnerError(PyTrainError):
    """A runner could not run a task (missing entrypoint, Docker engine unreachable, ...).

    Attributes:
        exit_code: the process or container exit code, when there is one.
        stderr_tail: the last lines of its stderr, when there are any.
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        exit_code: int | None = None,
        stderr_tail: str = "",
    ) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail


class CredentialsError(RunnerError):
    """The NGC API key is missing or was rejected. Never carries the key itself."""


class PublishError(PyTrainError):
    """A trained model could not be published into the model repository."""


class ServingError(PyTrainError):
    """The Triton server could not be started, reached, or did not serve the model."""


class ClientError(ServingError):
    """A prediction request failed (server unreachable, model not ready, bad video)."""

"""Domain errors, and the one place that maps them to CLI exit codes.

Every error a user can cause names what is wrong: the file, the row, the
column, the value and what would have been accepted.
"""

from __future__ import annotations


class RaySchedError(Exception):
    """Base class of every error ray_sched raises on purpose."""

    exit_code = 1


class ConfigError(RaySchedError, ValueError):
    """A parameter, flag or policy name outside what is accepted."""

    exit_code = 2


class LocatedError(RaySchedError, ValueError):
    """An error in a file or frame, located by 1-based data row and column.

    Args:
        source: the file name (or ``"<frame>"`` for an in-memory frame).
        message: what is wrong, quoting the bad value.
        row: 1-based data row (the header is not counted), when one row is at fault.
        column: the column at fault, when there is one.
    """

    exit_code = 3

    def __init__(self, source: str, message: str, *, row: int | None = None,
                 column: str | None = None):
        self.source = str(source)
        self.row = row
        self.column = column
        self.reason = message
        where = [self.source]
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column '{column}'")
        super().__init__(f"{', '.join(where)}: {message}")


class TraceError(LocatedError):
    """A trace file (or frame) that breaks the contract of TRACE_FORMAT.md."""

    exit_code = 3


class ResultsError(LocatedError):
    """A results frame or directory that breaks the contract (or a newer schema version)."""

    exit_code = 3


class AlertRulesError(RaySchedError, ValueError):
    """A malformed alert rules file (``--alerts rules.toml``), refused at start.

    Args:
        path: the rules file.
        line: 1-based line of the fault, when it can be placed.
        reason: what is wrong, quoting the bad value.
    """

    exit_code = 2

    def __init__(self, path: str, reason: str, *, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = self.path if line is None else f"{self.path}, line {line}"
        super().__init__(f"{where}: {reason}")


class ConvertError(RaySchedError, ValueError):
    """An input log or workflow that a converter cannot read."""

    exit_code = 3


class SchedulerClosedError(RaySchedError, RuntimeError):
    """A call on a Scheduler after ``shutdown()``."""

    exit_code = 1


class TaskFailedError(RaySchedError, RuntimeError):
    """A task that did not run to completion for a reason other than its own exception
    (a parent failed, its worker was lost for good)."""

    exit_code = 4


class ReplayIncompleteError(RaySchedError, RuntimeError):
    """A replay in which some task did not finish ``ok``."""

    exit_code = 4


class OtlpError(RaySchedError, ValueError):
    """A request the OTLP receiver refuses. ``http_status`` and ``grpc_code`` (a
    ``grpc.StatusCode`` name) are how :mod:`ray_sched.otlp.receiver` answers it."""

    exit_code = 3
    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class InvalidPayloadError(OtlpError):
    """A body that does not decode, or data that breaks the OTLP specification.

    Args:
        message: what is wrong, quoting the bad value.
        path: the field's path in the request, e.g. ``resourceSpans[0].scopeSpans[1].spans[3]
            .traceId`` (empty when the body as a whole is at fault).
    """

    def __init__(self, message: str, path: str = ""):
        self.path = path
        self.reason = message
        super().__init__(f"{path}: {message}" if path else message)


class PayloadTooLargeError(OtlpError):
    """A body over the size limit (measured after decompression)."""

    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class UnsupportedMediaTypeError(OtlpError):
    """A content type or encoding the receiver does not speak."""

    http_status = 415
    grpc_code = "INVALID_ARGUMENT"


class UnauthenticatedError(OtlpError):
    """A request without the bearer token the receiver was started with."""

    http_status = 401
    grpc_code = "UNAUTHENTICATED"


class OverloadedError(OtlpError):
    """The receiver's bounded queue or memory limit is reached: retry after ``retry_after_s``.

    Args:
        message: which limit, with its value.
        retry_after_s: the delay to advertise (``Retry-After`` / gRPC ``RetryInfo``).
        http_status: 429 for a full queue, 503 for the memory limit.
    """

    grpc_code = "UNAVAILABLE"

    def __init__(self, message: str, retry_after_s: float = 1.0, http_status: int = 429):
        self.retry_after_s = retry_after_s
        self.http_status = http_status
        super().__init__(message)


def exit_code_for(error: BaseException) -> int:
    """The CLI exit status for an error: its class's ``exit_code``, 1 for anything else."""
    return getattr(error, "exit_code", 1)

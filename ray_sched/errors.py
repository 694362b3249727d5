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


def exit_code_for(error: BaseException) -> int:
    """The CLI exit status for an error: its class's ``exit_code``, 1 for anything else."""
    return getattr(error, "exit_code", 1)

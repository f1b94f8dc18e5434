"""How a process ends, for the run records: FINISHED, FAILED (an uncaught exception) or KILLED
(Ctrl-C, SIGTERM), and the hooks that close every open :class:`MLflowLogger` with that status.

* an uncaught exception is seen by a chained ``sys.excepthook`` (called before ``atexit``);
  ``KeyboardInterrupt`` counts as KILLED, any other exception as FAILED;
* SIGTERM: when the process has no handler of its own (``SIG_DFL``), the first logger installs
  one (main thread only) that records KILLED and raises ``SystemExit(143)`` — the stack unwinds
  (``finally`` blocks and context managers run), loggers close as KILLED at exit, and the exit
  status is the conventional 128 + 15. A handler the user installed is left alone;
* ``kill -9`` cannot be caught: such a run stays RUNNING until ``resume`` continues it.
"""

from __future__ import annotations

import atexit
import logging
import signal
import sys
import threading
import weakref
from typing import Any, Literal

__all__ = ["Status", "exit_status", "mark_terminated", "register"]

Status = Literal["FINISHED", "FAILED", "KILLED"]

_log = logging.getLogger(__name__)
_live: weakref.WeakSet[Any] = weakref.WeakSet()
_installed = False
_uncaught: BaseException | None = None
_terminated_by: str | None = None


def status_of(exc: BaseException | None) -> Status:
    """The run status for an exception ending the run (None: FINISHED)."""
    if exc is None:
        return "FINISHED"
    if isinstance(exc, KeyboardInterrupt) or _terminated_by is not None:
        return "KILLED"
    if isinstance(exc, SystemExit):
        return "FINISHED" if exc.code in (None, 0) else "FAILED"
    return "FAILED"


def exit_status() -> Status:
    """Status of a process that is exiting now (called from ``atexit``)."""
    if _terminated_by is not None:
        return "KILLED"
    return status_of(_uncaught)


def mark_terminated(reason: str) -> None:
    """Records that the process was stopped from outside (a signal): loggers close as KILLED."""
    global _terminated_by
    _terminated_by = reason


def _excepthook(previous: Any) -> Any:
    def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        global _uncaught
        _uncaught = exc
        previous(exc_type, exc, tb)

    return hook


def _on_sigterm(signum: int, frame: Any) -> None:
    mark_terminated("SIGTERM")
    raise SystemExit(128 + signum)


def _close_all() -> None:
    status = exit_status()
    for logger in list(_live):
        if not logger.closed:
            _log.warning("MLflowLogger.close() was not called; closing run %s at exit as %s", logger.run_id, status)
            logger.close(status=status)


def register(logger: Any) -> None:
    """Closes ``logger`` at interpreter exit (with :func:`exit_status`) unless closed before; the
    first call installs the ``atexit`` hook, the chained ``sys.excepthook`` and the SIGTERM handler."""
    global _installed
    _live.add(logger)
    if _installed:
        return
    _installed = True
    atexit.register(_close_all)
    sys.excepthook = _excepthook(sys.excepthook)
    if threading.current_thread() is threading.main_thread():
        try:
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError):  # pragma: no cover - embedded interpreters
            pass

"""The worker's log: one line per event, with the job's context as `key=value` after the message."""

from __future__ import annotations

import logging
import sys
from typing import Any

from temporalio import activity, workflow

from contract.models import one_line

# Attributes every LogRecord has; anything else on a record came from `extra=` and is printed.
_STANDARD_RECORD_KEYS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
# From the SDK's `temporal_workflow` / `temporal_activity` extras, the keys worth a column.
_TEMPORAL_KEYS = ("workflow_type", "activity_type", "workflow_id", "attempt")
_JOB_KINDS = {"StartRuntimeJob": "start", "StopRuntimeJob": "stop"}


class JobEventFormatter(logging.Formatter):
    """One line per event: time, level, logger, message, then `key=value` for the job's context
    (game id, job kind, workflow id: from the workflow's own `extra=` and from the SDK's extras)."""

    def __init__(self, *, tracebacks: bool = False) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self._tracebacks = tracebacks

    def formatException(self, ei: Any) -> str:
        """Outside DEBUG, an exception is its last line (`Type: message`), not a folded traceback:
        a retried activity failure would otherwise fill the log."""
        if self._tracebacks:
            return super().formatException(ei)
        return f"{ei[0].__name__}: {ei[1]}" if ei and ei[0] is not None else ""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = _record_context(record)
        if context:
            line += "  " + " ".join(f"{k}={v}" for k, v in context.items())
        return line if self._tracebacks else one_line(line, limit=4000)


def _record_context(record: logging.LogRecord) -> dict[str, Any]:
    context: dict[str, Any] = {}
    for key, value in record.__dict__.items():
        if key in _STANDARD_RECORD_KEYS or key.startswith("_"):
            continue
        if key in ("temporal_workflow", "temporal_activity") and isinstance(value, dict):
            for name in _TEMPORAL_KEYS:
                if name in value:
                    context.setdefault(name, value[name])
            kind = _JOB_KINDS.get(str(value.get("workflow_type", "")))
            if kind:
                context.setdefault("job_kind", kind)
        else:
            context[key] = value
    return context


def configure_logging(level: str) -> None:
    """The root logger at `level`, on stderr, through `JobEventFormatter` (tracebacks only at DEBUG)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JobEventFormatter(tracebacks=level == "DEBUG"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The formatter prints the workflow/activity context from `extra`; the SDK's default copy
    # appended to every message as a dict would only repeat it, unreadably.
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False

"""The worker's log on stderr, one line per event (RTJOBS_LOG_FORMAT): `text`, the message then the job's
context as `key=value`, or `json`, one object per line with the same context as fields.

Both formats take the job's context from one place, `job_context`: the workflow's own `extra=` (game id, job
kind, host) and the SDK's `temporal_workflow` / `temporal_activity` extras (workflow id, run id, ...). JSON is
the stdlib's `json` over `logging.Formatter`: the fields are few and fixed, the context is ours anyway, and
the worker image gains no dependency.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

from temporalio import activity, workflow
from temporalio.runtime import LogForwardingConfig, LoggingConfig, TelemetryFilter

from contract.models import one_line

# Attributes every LogRecord has; anything else on a record came from `extra=` and is context.
_STANDARD_RECORD_KEYS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
# From the SDK's `temporal_workflow` / `temporal_activity` extras: the keys worth a field, by our name.
_TEMPORAL_KEYS = {
    "workflow_type": "workflow_type",
    "activity_type": "activity_type",
    "workflow_id": "workflow_id",
    "run_id": "run_id",
    "workflow_run_id": "run_id",  # (an activity's: the run of the workflow that scheduled it)
    "attempt": "attempt",
}
_JOB_KINDS = {"StartRuntimeJob": "start", "StopRuntimeJob": "stop"}
# The fields of every JSON line; context never overwrites them.
_JSON_BASE = ("time", "level", "logger", "message")
# The SDK Core's own log lines (Rust) come through this logger, so they share the worker's format.
CORE_LOGGER = "temporalio.core"

LogFormat = Literal["text", "json"]


def job_context(record: logging.LogRecord) -> dict[str, Any]:
    """The job's context of a record: `game_id`, `job_kind`, `workflow_id`, `run_id`, `host`, ... where known."""
    context: dict[str, Any] = {}
    for key, value in record.__dict__.items():
        if key in _STANDARD_RECORD_KEYS or key.startswith("_") or key == "temporal_log":
            continue
        if key in ("temporal_workflow", "temporal_activity") and isinstance(value, dict):
            for name, field in _TEMPORAL_KEYS.items():
                if name in value:
                    context.setdefault(field, value[name])
            kind = _JOB_KINDS.get(str(value.get("workflow_type", "")))
            if kind:
                context.setdefault("job_kind", kind)
        else:
            context[key] = value
    return context


class _JobFormatter(logging.Formatter):
    def __init__(self, fmt: str | None = None, *, tracebacks: bool = False) -> None:
        super().__init__(fmt)
        self._tracebacks = tracebacks

    def formatException(self, ei: Any) -> str:
        """Outside DEBUG, an exception is its last line (`Type: message`), not a folded traceback:
        a retried activity failure would otherwise fill the log.
        """
        if self._tracebacks:
            return super().formatException(ei)
        return f"{ei[0].__name__}: {ei[1]}" if ei and ei[0] is not None else ""


class JobEventFormatter(_JobFormatter):
    """`text`: time, level, logger, message, then `key=value` for the job's context."""

    def __init__(self, *, tracebacks: bool = False) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", tracebacks=tracebacks)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = job_context(record)
        if context:
            line += "  " + " ".join(f"{k}={v}" for k, v in context.items())
        return line if self._tracebacks else one_line(line, limit=4000)


class JsonFormatter(_JobFormatter):
    """`json`: one object per line: `time` (RFC 3339, UTC), `level`, `logger`, `message`, the job's context,
    and `exception` (a string: the traceback at DEBUG, else `Type: message`).
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update((k, v) for k, v in job_context(record).items() if k not in _JSON_BASE)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """The root logger at `level`, on stderr, in `log_format` (tracebacks only at DEBUG); Python warnings
    go through it too, so that every line has the format.
    """
    tracebacks = level == "DEBUG"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(tracebacks=tracebacks) if log_format == "json" else JobEventFormatter(tracebacks=tracebacks)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    # The formatters print the workflow/activity context from `extra`; the SDK's default copy
    # appended to every message as a dict would only repeat it, unreadably.
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False


def core_logging() -> LoggingConfig:
    """The SDK Core's log lines (its default levels) forwarded to the `temporalio.core` logger, instead of its
    own format on stderr.
    """
    return LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(logger=logging.getLogger(CORE_LOGGER), append_target_to_name=False),
    )

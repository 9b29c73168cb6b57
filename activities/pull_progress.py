"""The progress of an image pull, from the messages of Docker's pull stream.

Each layer's messages carry its short id: "Pulling fs layer" / "Waiting" / "Already exists" make it
known, "Downloading" carries `progressDetail` {current, total} (bytes), "Download complete" and
"Verifying Checksum" end its download, "Pull complete" ends it. Messages without a layer status (the
tag's "Pulling from …", "Digest: …", "Status: …") are not layers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from contract.engine import PullProgress

# The heartbeat carries a new snapshot at most this often (and the last one when the pull ends).
PROGRESS_EVERY_S = 2.0

_LAYER_STATUSES = frozenset(
    {
        "Pulling fs layer",
        "Waiting",
        "Downloading",
        "Verifying Checksum",
        "Download complete",
        "Extracting",
        "Pull complete",
        "Already exists",
    }
)
_DONE = frozenset({"Pull complete", "Already exists"})
_DOWNLOADED = frozenset({"Verifying Checksum", "Download complete", "Extracting", "Pull complete"})


@dataclass
class _Layer:
    done: bool = False
    current: int = 0
    total: int | None = None


@dataclass
class PullTracker:
    """Folds the stream's messages into a `PullProgress`; `report` gets a snapshot at most every
    PROGRESS_EVERY_S and once more at the end (`finish`).
    """

    image: str
    report: Callable[[PullProgress], None]
    clock: Callable[[], float] = time.monotonic
    _layers: dict[str, _Layer] = field(default_factory=dict)
    _reported_at: float | None = None

    def update(self, message: Mapping[str, Any]) -> None:
        status, layer_id = message.get("status"), message.get("id")
        if not isinstance(layer_id, str) or status not in _LAYER_STATUSES:
            return
        layer = self._layers.setdefault(layer_id, _Layer())
        detail = message.get("progressDetail") or {}
        if status == "Downloading" and isinstance(detail.get("total"), int) and detail["total"] > 0:
            layer.total = detail["total"]
            layer.current = min(int(detail.get("current") or 0), layer.total)
        elif status in _DOWNLOADED and layer.total is not None:
            layer.current = layer.total
        layer.done = layer.done or status in _DONE
        now = self.clock()
        if self._reported_at is None or now - self._reported_at >= PROGRESS_EVERY_S:
            self._reported_at = now
            self.report(self.snapshot())

    def finish(self) -> None:
        self.report(self.snapshot(done=True))

    def snapshot(self, *, done: bool = False) -> PullProgress:
        sized = [layer for layer in self._layers.values() if layer.total is not None]
        return PullProgress(
            image=self.image,
            layers_done=sum(layer.done for layer in self._layers.values()),
            layers_total=len(self._layers),
            bytes_done=sum(layer.current for layer in sized) if sized else None,
            bytes_total=sum(layer.total or 0 for layer in sized) if sized else None,
            done=done,
        )

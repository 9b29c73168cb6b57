"""A text summary of a py-spy profile (`py-spy record --format raw`: one collapsed stack per line).

Used by `bench/e2e.py --profile bench/profile-*.txt`: the README names the kept summary. It groups the
samples by where the time went, in terms a reader of this project knows (the sandbox creating a
workflow run, workflow code, payload conversion, activities, the event loop waiting), then lists the
frames with the largest inclusive share.

Usage: python bench/profile.py RAW [--top 40]
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

# First match wins, tested against the whole stack (outermost frame first).
CATEGORIES: list[tuple[str, str]] = [
    ("sandbox: creating a workflow run (module imports, class set-up)", r"_create_workflow_instance"),
    ("workflow code and the SDK's activation handling", r"_WorkflowWorker\._handle_activation|_run_code"),
    ("activities (publish, turn, placement, Docker)", r"_ActivityWorker|_execute_activity"),
    ("payload conversion and visiting", r"PayloadVisitor|_visitor|converter"),
    ("benchmark's own starter and stream listener", r"run_scenario|StreamClock|start_workflow"),
    ("event loop waiting (select)", r"EpollSelector\.select"),
    ("event loop <-> workflow threads hand-offs", r"call_soon_threadsafe|_read_from_self|_write_to_self"),
    ("polling the SDK core for tasks", r"poll_workflow_activation|poll_activity_task"),
    ("workflow thread pool between activations (waiting for work)", r";_worker \([^;]*\)$"),
]


def summarize(raw: Path, top: int = 40) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    categories: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not count.isdigit():
            continue
        if not stack:  # a thread with no Python frames: the SDK core's native threads
            stack = "(native threads of the SDK core)"
        n = int(count)
        total += n
        for label, pattern in CATEGORIES:
            if re.search(pattern, stack):
                categories[label] += n
                break
        else:
            categories["native SDK core" if stack.startswith("(native") else "other (asyncio, the SDK bridge)"] += n
        for frame in {re.sub(r":\d+\)$", ")", f) for f in stack.split(";")}:
            inclusive[frame] += n
    if not total:
        return "no samples\n"
    lines = [f"py-spy samples: {total} (all threads, idle excluded)", "", "where the time went:"]
    lines += [f"  {100 * n / total:5.1f}%  {label}" for label, n in categories.most_common()]
    lines += ["", f"top {top} frames by inclusive share:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame[:140]}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("raw", type=Path)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    print(summarize(args.raw, args.top), end="")


if __name__ == "__main__":
    main()

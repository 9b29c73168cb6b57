"""The `workflow.patched` ids of the workflow versions after 1.0 (docs/development.md, "Changing workflow code").

A run recorded by one version replays on the code of every later one: code that changes what a
workflow does goes behind `workflow.patched(ID)` (the old branch kept), and the new version's
histories are recorded beside the old (`python -m tests.histories.record 1.1`).
"""

from __future__ import annotations

# 1.1: one workflow per host (`RuntimeHost`) instead of the fleet's one registry: a job or reconcile
# tells the engine's host, not the registry, what it made or removed; a game's lock whose engine record
# is lost stays (holding that it was lost) instead of ending when idle.
HOST_WORKFLOWS = "1.1-host-workflows"

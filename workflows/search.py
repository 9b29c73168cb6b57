"""Search attributes that let the Temporal UI and `temporal workflow list` find a game's jobs, and
the games placed on a host.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

GAME_ID = SearchAttributeKey.for_keyword("GameId")
JOB_KIND = SearchAttributeKey.for_keyword("RuntimeJobKind")
# On a job: the host (name) that ran its Docker step. On a game's lock: the host its engine
# lives on (what `rtjobs host forget` looks for).
RUNTIME_HOST = SearchAttributeKey.for_keyword("RuntimeHost")
SEARCH_ATTRIBUTE_KEYS: tuple[SearchAttributeKey[str], ...] = (GAME_ID, JOB_KIND, RUNTIME_HOST)

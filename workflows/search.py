"""Search attributes that let the Temporal UI and `temporal workflow list` find a game's jobs."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

GAME_ID = SearchAttributeKey.for_keyword("GameId")
JOB_KIND = SearchAttributeKey.for_keyword("RuntimeJobKind")
SEARCH_ATTRIBUTE_KEYS: tuple[SearchAttributeKey[str], ...] = (GAME_ID, JOB_KIND)

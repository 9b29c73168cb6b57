"""`RuntimeHost`: one Docker host of the fleet, one workflow per host (`runtime-host-{task_queue}-{host_id}`):
whether its workers are alive, which games have an engine there, and the places reserved for new ones.

Started and kept current by its workers' reports. A silent host takes no new engines but keeps its
inventory until an operator forgets it, so that a game is never placed twice. Its `reserve` update
checks each claim against the host's capacity (a workflow's updates run one at a time), so concurrent
placements (`activities/placement.py`) never fill it beyond; its state is bounded by the host's games.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from contract.hosts import (
        DRAIN_UPDATE,
        ENGINE_CHANGED_SIGNAL,
        FORGET_UPDATE,
        HAS_GAMES_QUERY,
        HOST_EVENTS_BEFORE_CONTINUE_AS_NEW,
        HOST_NAME_MEMO,
        HOST_WORKFLOW,
        LIVE_REPORTS,
        PROBE_QUERY,
        REPORT_SIGNAL,
        RESERVATION_TTL_S,
        RESERVE_UPDATE,
        UNDRAIN_UPDATE,
        VIEW_QUERY,
        EngineChanged,
        HostCommand,
        HostProbe,
        HostRecord,
        HostReport,
        HostState,
        HostView,
        Reservation,
        ReserveAnswer,
        ReserveBatch,
        ReserveBatchAnswer,
        ReserveRequest,
    )


@workflow.defn(name=HOST_WORKFLOW)
class RuntimeHost:
    @workflow.init
    def __init__(self, state: HostState) -> None:
        # Restored here, not in run(): the report that starts a run is handled before run().
        self._state = state
        self._events = 0
        self._forgotten = False

    # --- what workers and jobs tell it ---------------------------------------------------------------

    @workflow.signal(name=REPORT_SIGNAL)
    def report(self, report: HostReport) -> None:
        now = workflow.now()
        record = self._state.record
        if record is None:
            record = self._state.record = HostRecord(host=report.host)
            workflow.logger.info("host %s (%s) joined the fleet", report.host.name, report.host.host_id)
        if record.host.name != report.host.name:
            workflow.upsert_memo({HOST_NAME_MEMO: report.host.name})
        record.host = report.host
        record.capacity = report.capacity
        record.games = sorted(set(report.games))
        record.report_every_s = report.report_every_s
        record.docker_version = report.docker_version
        record.network_driver = report.network_driver
        record.workers[report.worker] = now
        silent_since = now - self._live_window(record) * 2
        record.workers = {w: seen for w, seen in record.workers.items() if seen >= silent_since}
        listed = set(record.games)
        for game_id in [g for g in self._state.reservations if g in listed]:
            del self._state.reservations[game_id]
        self._counted()

    @workflow.signal(name=ENGINE_CHANGED_SIGNAL)
    def engine_changed(self, change: EngineChanged) -> None:
        # The job's own word, before the host's next report: the reservation is done either way.
        self._state.reservations.pop(change.game_id, None)
        record = self._state.record
        if record is not None:
            games = set(record.games)
            if change.present:
                games.add(change.game_id)
            else:
                games.discard(change.game_id)
            record.games = sorted(games)
        self._counted()

    # --- placement -----------------------------------------------------------------------------------

    @workflow.update(name=RESERVE_UPDATE)
    def reserve(self, batch: ReserveBatch) -> ReserveBatchAnswer:
        """The places the batch's starts claim, each checked against what the ones before it took."""
        now = workflow.now()
        self._expire_reservations(now)
        answers = [self._reserve(request, now) for request in batch.requests]
        self._counted()
        return ReserveBatchAnswer(answers=answers)

    def _reserve(self, request: ReserveRequest, now: datetime) -> ReserveAnswer:
        record = self._state.record
        if record is None or self._forgotten:
            return ReserveAnswer(why="the host has not reported")
        if request.game_id in record.games:
            return ReserveAnswer(found=True)
        mine = self._state.reservations.get(request.game_id)
        if mine is not None and mine.job == request.job:
            return ReserveAnswer(reserved=True)  # asked again by the same job (a retry, a lost reply)
        if not self._live_workers(record, now):
            return ReserveAnswer(why=f"host {record.host.name} has no live worker")
        if record.draining:
            return ReserveAnswer(why=f"host {record.host.name} is draining")
        if self._load() >= record.capacity:
            return ReserveAnswer(why=f"host {record.host.name} is full ({self._load()}/{record.capacity})")
        # (Another job's reservation of this game is stale: a game's jobs hold its lock one at a time, so it ended.)
        self._state.reservations[request.game_id] = Reservation(host_id=record.host.host_id, at=now, job=request.job)
        return ReserveAnswer(reserved=True)

    @workflow.query(name=PROBE_QUERY)
    def probe(self, request: ReserveRequest) -> HostProbe | None:
        """The host's load as a placement samples it; None before its first report."""
        record = self._state.record
        if record is None:
            return None
        reservation = self._state.reservations.get(request.game_id)
        return HostProbe(
            host=record.host,
            live=bool(self._live_workers(record, _real_now())) and not self._forgotten,
            draining=record.draining,
            load=self._load(),
            capacity=record.capacity,
            mine=reservation is not None and bool(request.job) and reservation.job == request.job,
            has_game=request.game_id in record.games,
        )

    @workflow.query(name=HAS_GAMES_QUERY)
    def has_games(self, game_ids: list[str]) -> list[str]:
        """Which of these games the host's report lists (a lost placement is looked for host by host)."""
        record = self._state.record
        games = set(record.games) if record is not None else set()
        return [g for g in game_ids if g in games]

    # --- operators -----------------------------------------------------------------------------------

    @workflow.update(name=DRAIN_UPDATE)
    def drain(self, command: HostCommand) -> HostView:
        return self._set_draining(True)

    @workflow.update(name=UNDRAIN_UPDATE)
    def undrain(self, command: HostCommand) -> HostView:
        return self._set_draining(False)

    @workflow.update(name=FORGET_UPDATE)
    def forget(self, command: HostCommand) -> HostView:
        """The host is gone for good: the workflow ends with its inventory, so its games may start
        elsewhere. A worker of that engine that reports again brings the host back with what runs there.
        """
        view = self._view(workflow.now())
        self._forgotten = True
        record = self._state.record
        if record is not None:
            workflow.logger.warning("host %s (%s) forgotten", record.host.name, record.host.host_id)
        return view

    @workflow.query(name=VIEW_QUERY)
    def view(self) -> HostView:
        # The real clock, not workflow.now() (the time of the last workflow task): a host that fell
        # silent must show not live though its workflow heard nothing since. A query writes no history.
        return self._view(_real_now())

    def _view(self, now: datetime) -> HostView:
        record = self._state.record
        assert record is not None, "a host's workflow is started by its first report"
        return HostView(
            host_id=record.host.host_id,
            name=record.host.name,
            queue=record.host.queue,
            live=bool(self._live_workers(record, now)) and not self._forgotten,
            live_workers=[] if self._forgotten else self._live_workers(record, now),
            engines=len(record.games),
            reserved=len(self._state.reservations),
            capacity=record.capacity,
            draining=record.draining,
            last_seen=max(record.workers.values(), default=None),
            docker_version=record.docker_version,
            network_driver=record.network_driver,
        )

    @workflow.run
    async def run(self, state: HostState) -> None:
        # Lives as long as the host; its history stays bounded by continuing as new with its record.
        await workflow.wait_condition(
            lambda: (
                self._forgotten
                or self._events >= HOST_EVENTS_BEFORE_CONTINUE_AS_NEW
                or workflow.info().is_continue_as_new_suggested()
            )
        )
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._forgotten:
            return
        self._expire_reservations(workflow.now())
        workflow.continue_as_new(self._state)

    # --- helpers -------------------------------------------------------------------------------------

    def _counted(self) -> None:
        self._events += 1
        record = self._state.record
        if record is not None:
            workflow.set_current_details(
                f"{len(record.games)} engines, {len(self._state.reservations)} reserved, capacity {record.capacity}"
                + (", draining" if record.draining else "")
            )

    def _set_draining(self, draining: bool) -> HostView:
        record = self._state.record
        assert record is not None
        record.draining = draining
        self._counted()
        return self._view(workflow.now())

    def _load(self) -> int:
        record = self._state.record
        return (len(record.games) if record is not None else 0) + len(self._state.reservations)

    def _live_window(self, record: HostRecord) -> timedelta:
        return timedelta(seconds=record.report_every_s * LIVE_REPORTS)

    def _live_workers(self, record: HostRecord, now: datetime) -> list[str]:
        since = now - self._live_window(record)
        return sorted(w for w, seen in record.workers.items() if seen >= since)

    def _expire_reservations(self, now: datetime) -> None:
        oldest = now - timedelta(seconds=RESERVATION_TTL_S)
        for game_id in [g for g, r in self._state.reservations.items() if r.at < oldest]:
            del self._state.reservations[game_id]


def _real_now() -> datetime:
    with workflow.unsafe.sandbox_unrestricted():
        return datetime.now(UTC)

"""`RuntimeHostRegistry`: 1.0's one workflow for the whole fleet (its hosts, their liveness, where each
game's engine runs, placement by update).

Retired in 1.1 for one `RuntimeHost` per host (`workflows/host.py`) and kept only so that 1.0's
histories replay and a registry run left by 1.0 finishes its tasks: nothing of 1.1 starts or asks it,
and what it does must not change.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from contract.hosts import (
        DRAIN_UPDATE,
        ENGINE_CHANGED_SIGNAL,
        FORGET_UPDATE,
        HOST_REGISTRY_WORKFLOW,
        HOSTS_QUERY,
        LIVE_REPORTS,
        LOCATE_QUERY,
        PLACE_BATCH_UPDATE,
        PLACE_UPDATE,
        REGISTRY_EVENTS_BEFORE_CONTINUE_AS_NEW,
        REPORT_SIGNAL,
        RESERVATION_TTL_S,
        UNDRAIN_UPDATE,
        EngineChanged,
        HostCommand,
        HostRecord,
        HostRef,
        HostReport,
        HostView,
        PlaceAnswer,
        PlaceBatch,
        PlaceBatchAnswer,
        PlaceRequest,
        RegistryState,
        Reservation,
    )

UNKNOWN_HOST_TYPE = "UnknownHost"


@workflow.defn(name=HOST_REGISTRY_WORKFLOW)
class RuntimeHostRegistry:
    @workflow.init
    def __init__(self, state: RegistryState) -> None:
        # Restored here, not in run(): a report in the run's first activation is handled before run().
        self._state = state
        self._events = 0

    # --- what workers and jobs tell it ---------------------------------------------------------------

    @workflow.signal(name=REPORT_SIGNAL)
    def report(self, report: HostReport) -> None:
        now = workflow.now()
        record = self._state.hosts.get(report.host.host_id)
        if record is None:
            record = self._state.hosts[report.host.host_id] = HostRecord(host=report.host)
            workflow.logger.info("host %s (%s) joined the fleet", report.host.name, report.host.host_id)
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
        for game_id, reservation in list(self._state.reservations.items()):
            if reservation.host_id == record.host.host_id and game_id in listed:
                del self._state.reservations[game_id]
        self._counted()

    @workflow.signal(name=ENGINE_CHANGED_SIGNAL)
    def engine_changed(self, change: EngineChanged) -> None:
        if change.present:
            # Held as a reservation until the host's own report lists the engine: a report the host
            # made just before the create must not make the registry forget it meanwhile.
            self._state.reservations[change.game_id] = Reservation(host_id=change.host_id, at=workflow.now())
        else:
            self._state.reservations.pop(change.game_id, None)
        record = self._state.hosts.get(change.host_id)
        if record is not None:
            games = set(record.games)
            if change.present:
                games.add(change.game_id)
            else:
                games.discard(change.game_id)
            record.games = sorted(games)
        self._counted()

    # --- placement -----------------------------------------------------------------------------------

    @workflow.update(name=PLACE_UPDATE)
    def place(self, request: PlaceRequest) -> PlaceAnswer:
        answer = self._place(request, workflow.now())
        self._counted()
        return answer

    @workflow.update(name=PLACE_BATCH_UPDATE)
    def place_batch(self, batch: PlaceBatch) -> PlaceBatchAnswer:
        """The same answers as one `place` update per request in this order (each sees the reservations
        of those before it), in one update and one history entry.
        """
        now = workflow.now()
        answers = [self._place(request, now) for request in batch.requests]
        self._counted()
        return PlaceBatchAnswer(answers=answers)

    def _place(self, request: PlaceRequest, now: datetime) -> PlaceAnswer:
        self._expire_reservations(now)
        for host_id in request.absent_on:
            record = self._state.hosts.get(host_id)
            if record is not None and request.game_id in record.games:
                record.games = [g for g in record.games if g != request.game_id]
            reservation = self._state.reservations.get(request.game_id)
            if reservation is not None and reservation.host_id == host_id:
                del self._state.reservations[request.game_id]
        live = [r for r in self._state.hosts.values() if self._is_live(r, now)]
        mine = self._reserved_for(request)
        if mine is not None:
            # Asked again by the job the host was chosen for (a retried activity, a lost reply): the same
            # answer, "chosen", so that the job creates the engine there rather than look for one.
            return PlaceAnswer(chosen=mine, live_hosts=len(live))
        found = self._found(request.game_id)
        if found or not request.create:
            return PlaceAnswer(found=found, live_hosts=len(live))
        open_hosts = [r for r in live if not r.draining and self._load(r) < r.capacity]
        if not open_hosts:
            return PlaceAnswer(why=self._why_no_host(live), live_hosts=len(live))
        chosen = min(open_hosts, key=lambda r: (self._load(r) / max(r.capacity, 1), self._load(r), r.host.name))
        self._state.reservations[request.game_id] = Reservation(host_id=chosen.host.host_id, at=now, job=request.job)
        return PlaceAnswer(chosen=chosen.host, live_hosts=len(live))

    # --- operators -----------------------------------------------------------------------------------

    @workflow.update(name=DRAIN_UPDATE)
    def drain(self, command: HostCommand) -> HostView:
        return self._set_draining(command.host, True)

    @workflow.update(name=UNDRAIN_UPDATE)
    def undrain(self, command: HostCommand) -> HostView:
        return self._set_draining(command.host, False)

    @workflow.update(name=FORGET_UPDATE)
    def forget(self, command: HostCommand) -> HostView:
        """The host is gone for good: its inventory goes, so its games may start elsewhere. A worker
        of that engine that reports again brings the host back with what really runs there.
        """
        record = self._find(command.host)
        view = self._view(record, workflow.now())
        del self._state.hosts[record.host.host_id]
        for game_id, reservation in list(self._state.reservations.items()):
            if reservation.host_id == record.host.host_id:
                del self._state.reservations[game_id]
        workflow.logger.warning("host %s (%s) forgotten", record.host.name, record.host.host_id)
        self._counted()
        return view

    @workflow.query(name=LOCATE_QUERY)
    def locate(self, game_id: str) -> PlaceAnswer:
        """Where the game's engine is, read-only: what a stop of a game without a known placement asks.
        A query, not an update: it writes no history and is not bounded by the server's limit on a
        workflow's updates in flight (10 by default), so many stops at once do not queue on it.
        """
        return PlaceAnswer(found=self._found(game_id))

    @workflow.query(name=HOSTS_QUERY)
    def hosts(self) -> list[HostView]:
        # The real clock, not workflow.now() (the time of the last workflow task): a registry that
        # heard nothing since a host fell silent must still show it not live. A query writes nothing
        # to the history, so this cannot make a replay differ.
        with workflow.unsafe.sandbox_unrestricted():
            now = datetime.now(UTC)
        return [self._view(r, now) for r in self._sorted_hosts()]

    @workflow.run
    async def run(self, state: RegistryState) -> None:
        # Lives as long as the fleet; its history stays bounded by continuing as new with its memory.
        await workflow.wait_condition(
            lambda: (
                self._events >= REGISTRY_EVENTS_BEFORE_CONTINUE_AS_NEW or workflow.info().is_continue_as_new_suggested()
            )
        )
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._expire_reservations(workflow.now())
        workflow.continue_as_new(self._state)

    # --- helpers -------------------------------------------------------------------------------------

    def _counted(self) -> None:
        self._events += 1
        live = sum(1 for r in self._state.hosts.values() if self._is_live(r, workflow.now()))
        workflow.set_current_details(f"{len(self._state.hosts)} hosts, {live} live")

    def _set_draining(self, name_or_id: str, draining: bool) -> HostView:
        record = self._find(name_or_id)
        record.draining = draining
        self._counted()
        return self._view(record, workflow.now())

    def _find(self, name_or_id: str) -> HostRecord:
        matches = [r for r in self._state.hosts.values() if name_or_id in (r.host.name, r.host.host_id)]
        if len(matches) != 1:
            known = ", ".join(f"{r.host.name} ({r.host.host_id})" for r in self._sorted_hosts()) or "none"
            what = "no host" if not matches else "several hosts"
            raise ApplicationError(
                f"{what} named {name_or_id!r}; known hosts: {known}", type=UNKNOWN_HOST_TYPE, non_retryable=True
            )
        return matches[0]

    def _found(self, game_id: str) -> list[HostRef]:
        found = [r.host for r in self._sorted_hosts() if game_id in r.games]
        reservation = self._state.reservations.get(game_id)
        if reservation is not None and reservation.host_id in self._state.hosts:
            host = self._state.hosts[reservation.host_id].host
            if host not in found:
                found.append(host)
        return found

    def _reserved_for(self, request: PlaceRequest) -> HostRef | None:
        """The host reserved for this very job's start of the game, while its engine is not reported yet."""
        reservation = self._state.reservations.get(request.game_id)
        if not request.create or not request.job or reservation is None or reservation.job != request.job:
            return None
        record = self._state.hosts.get(reservation.host_id)
        if record is None or request.game_id in record.games:
            return None
        return record.host

    def _sorted_hosts(self) -> list[HostRecord]:
        return sorted(self._state.hosts.values(), key=lambda r: (r.host.name, r.host.host_id))

    def _live_window(self, record: HostRecord) -> timedelta:
        return timedelta(seconds=record.report_every_s * LIVE_REPORTS)

    def _live_workers(self, record: HostRecord, now: datetime) -> list[str]:
        since = now - self._live_window(record)
        return sorted(w for w, seen in record.workers.items() if seen >= since)

    def _is_live(self, record: HostRecord, now: datetime) -> bool:
        return bool(self._live_workers(record, now))

    def _reserved(self, record: HostRecord) -> int:
        games = set(record.games)
        return sum(
            1
            for game_id, r in self._state.reservations.items()
            if r.host_id == record.host.host_id and game_id not in games
        )

    def _load(self, record: HostRecord) -> int:
        return len(record.games) + self._reserved(record)

    def _expire_reservations(self, now: datetime) -> None:
        oldest = now - timedelta(seconds=RESERVATION_TTL_S)
        for game_id, reservation in list(self._state.reservations.items()):
            if reservation.at < oldest or reservation.host_id not in self._state.hosts:
                del self._state.reservations[game_id]

    def _why_no_host(self, live: list[HostRecord]) -> str:
        if not self._state.hosts:
            return "no host has reported to the fleet yet (is a worker running next to a Docker engine?)"
        if not live:
            silent = ", ".join(r.host.name for r in self._sorted_hosts())
            return f"no host has a live worker (known, all silent: {silent})"
        parts = [
            f"{r.host.name} {self._load(r)}/{r.capacity}{' draining' if r.draining else ''}"
            for r in sorted(live, key=lambda r: r.host.name)
        ]
        return "no host has free capacity (" + ", ".join(parts) + ")"

    def _view(self, record: HostRecord, now: datetime) -> HostView:
        seen = max(record.workers.values(), default=None)
        return HostView(
            host_id=record.host.host_id,
            name=record.host.name,
            queue=record.host.queue,
            live=self._is_live(record, now),
            live_workers=self._live_workers(record, now),
            engines=len(record.games),
            reserved=self._reserved(record),
            capacity=record.capacity,
            draining=record.draining,
            last_seen=seen,
            docker_version=record.docker_version,
            network_driver=record.network_driver,
        )

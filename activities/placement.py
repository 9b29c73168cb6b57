"""The placement activities: which host gets a new game's engine, which host has a game whose engine
record was lost, and whether a host's workers are alive; asked of the hosts' own workflows
(`workflows/host.py`), never of one fleet-wide workflow, so a placement's cost does not grow with the fleet.

A new engine's host: two hosts sampled (seeded by the job's id, so a retry finds its own reservation)
and probed by query, the less loaded claimed by its capacity-checked `reserve` update; every host is
asked only when `PROBE_ROUNDS` samples found no room. A worker's reservations for one host go in one
batched update while another is in flight (the server holds few updates of a workflow in flight); one
whose caller stopped waiting is kept, so the job's retry takes its answer instead of a second host.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from temporalio import activity
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities.fleet import Busy, Fleet
from contract.hosts import (
    ENGINE_CHANGED_SIGNAL,
    HOST_LIVENESS_ACTIVITY,
    PLACE_ACTIVITY,
    PLACE_BATCH_MAX,
    RESERVE_UPDATE,
    EngineChanged,
    HostLiveness,
    HostProbe,
    HostRef,
    HostView,
    PlaceAnswer,
    PlaceRequest,
    ReserveAnswer,
    ReserveBatch,
    ReserveBatchAnswer,
    ReserveRequest,
    host_workflow_id,
)

log = logging.getLogger("rtjobs.placement")

# Samples of two hosts a placement probes before it asks every host.
PROBE_ROUNDS = 3
# A refused update (the host's updates in flight are at the server's limit) is asked again after
# a pause drawn from [0, min(cap, first * 2**n)]: "full jitter", so refused callers spread out.
REFUSED_FIRST_PAUSE_S = 0.05
REFUSED_PAUSE_CAP_S = 2.0
# How long a host's reservations wait for its workflow's answer: less than a placement's attempt (the
# local activity's 15 s), so that a host's workflow too busy to answer fails the attempts waiting on it
# (retried) and not every later reservation of this worker there, queued behind an update that never ends.
RESERVE_WAIT_S = 10.0
# How long an unanswered reservation's update may still land: the retry of its job waits for it (within
# its own attempts) rather than claim a second host while the first keeps a place for RESERVATION_TTL_S.
RESERVE_LATE_S = 60.0
# Reservations whose caller gave up before the answer, kept for their job's retry (oldest dropped first).
ASKED_KEPT = 10_000
# The silence of a host whose workflow holds no report (a JSON number: infinity has no JSON form).
NEVER_HEARD_S = 1e9
# At most this many hosts named in a "no host has room" answer.
WHY_HOSTS_NAMED = 10


@dataclass
class _Queue:
    """The reservations of one host waiting for the next update, and its sender."""

    waiting: list[tuple[ReserveRequest, asyncio.Future[ReserveAnswer]]] = field(default_factory=list)
    sender: asyncio.Task[None] | None = None


@dataclass(frozen=True)
class _Asked:
    """A reservation sent for a job: the host, the update carrying it, and its place in that batch."""

    host: HostRef
    update: asyncio.Task[list[ReserveAnswer]]
    index: int


class PlacementActivities:
    """Holds the worker's Temporal client (a host is reserved by update, which a workflow cannot send),
    its list of each fleet's hosts, and the reservations waiting to be sent together.
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._fleets: dict[str, Fleet] = {}
        self._queues: dict[str, _Queue] = {}
        # (job, game) -> its reservation in flight whose caller stopped waiting (timed out, cancelled).
        self._asked: OrderedDict[tuple[str, str], _Asked] = OrderedDict()
        self._updates: set[asyncio.Task[list[ReserveAnswer]]] = set()
        self.updates_sent = 0  # read by tests and the benchmark: how many reserve updates placements took
        self.probes_sent = 0  # and how many probe queries

    def fleet(self, task_queue: str) -> Fleet:
        fleet = self._fleets.get(task_queue)
        if fleet is None:
            fleet = self._fleets[task_queue] = Fleet(self._client, task_queue)
        return fleet

    @activity.defn(name=PLACE_ACTIVITY)
    async def place_game_engine(self, request: PlaceRequest) -> PlaceAnswer:
        return await self.place(activity.info().task_queue, request)

    async def place(self, task_queue: str, request: PlaceRequest) -> PlaceAnswer:
        """Where the game's engine is (a lost record: asked of every host), or for a start of a game
        without one, the host reserved for it.
        """
        fleet = self.fleet(task_queue)
        for host_id in request.absent_on:
            # The job found no container there: the host's report (if it lists the game) is stale.
            await self._tell(task_queue, EngineChanged(game_id=request.game_id, host_id=host_id, present=False))
        if request.lost or request.absent_on:
            found = await self._find(fleet, request)
            return found or await self._choose(fleet, request)
        if not request.create:
            return PlaceAnswer()  # the game's lock knows of no engine, and lost none: there is none
        return await self._choose(fleet, request)

    async def _find(self, fleet: Fleet, request: PlaceRequest) -> PlaceAnswer | None:
        """The hosts that have the game, asked one by one; None when none has (or for a start: place it)."""
        found = await fleet.find(request.game_id, exclude=request.absent_on)
        return PlaceAnswer(found=found, live_hosts=len(found)) if found or not request.create else None

    @activity.defn(name=HOST_LIVENESS_ACTIVITY)
    async def host_liveness(self, host: HostRef) -> HostLiveness:
        """How long the host's workers have been silent, from its workflow's record of their reports (a
        query: no history). A host that cannot be asked counts as "just heard": a Docker step is never
        given up on because the coordination layer is slow.
        """
        try:
            view = await self.fleet(activity.info().task_queue).view(host.host_id)
        except RPCError as err:
            log.warning("could not ask the workflow of host %s: %s", host.name, err.message)
            return HostLiveness(known=True, live=True, silent_s=0.0)
        if view is None:
            return HostLiveness(known=False, live=False, silent_s=NEVER_HEARD_S)
        return liveness(view)

    # --- choosing a host -----------------------------------------------------------------------------

    async def _choose(self, fleet: Fleet, request: PlaceRequest) -> PlaceAnswer:
        ask = ReserveRequest(game_id=request.game_id, job=request.job)
        earlier = await self._earlier_answer(fleet.task_queue, ask)
        if earlier is not None:
            return earlier
        hosts = await fleet.sample()
        if not hosts:
            hosts = await fleet.sample(fresh=True)
        # Drawn from the job: its retry samples the same hosts, and finds its own reservation.
        rng = random.Random(f"{request.job}/{request.game_id}")
        order = rng.sample(range(len(hosts)), min(len(hosts), 2 * PROBE_ROUNDS))
        for start in range(0, len(order), 2):
            pair = [hosts[i] for i in order[start : start + 2]]
            self.probes_sent += len(pair)
            answers = await asyncio.gather(*(fleet.probe(h, ask) for h in pair))
            probes = [p for p in answers if isinstance(p, HostProbe)]
            for probe in probes:
                if probe.has_game:  # the host has the game, though its record said no engine: use it
                    return PlaceAnswer(found=[probe.host], live_hosts=1)
            mine = [p for p in probes if p.mine]
            # Equally full hosts are told apart by the job's draw, not by name: a burst spreads.
            candidates = mine or sorted((p for p in probes if p.open), key=lambda p: (_fullness(p), rng.random()))
            # A host too busy to be probed is asked by its update, which checks its room all the same.
            busy = [b.host for b in answers if isinstance(b, Busy)]
            for host in [p.host for p in candidates[:1]] or busy[:1]:
                answer = await self._claim(fleet.task_queue, host, ask)
                if answer is not None:
                    return answer
        fleet.resample()  # this worker's next placements sample other hosts
        return await self._choose_from_all(fleet, ask)

    async def _earlier_answer(self, task_queue: str, ask: ReserveRequest) -> PlaceAnswer | None:
        """The answer to this job's earlier reservation that its attempt stopped waiting for. Without it,
        the retry probes before the late reservation lands, may claim another host, and the first host
        keeps an orphaned place for RESERVATION_TTL_S (seen: two hosts 9+1/12 after a 30-game burst).
        """
        key = (ask.job, ask.game_id)
        asked = self._asked.pop(key, None)
        if asked is None:
            return None
        try:
            answers = await asyncio.wait_for(asyncio.shield(asked.update), RESERVE_WAIT_S)
        except TimeoutError:
            self._keep(key, asked)  # still in flight: this attempt fails too, and its retry waits again
            raise RuntimeError(
                f"the reservation at host {asked.host.name} is still unanswered after {RESERVE_WAIT_S:g} s"
            ) from None
        except Exception:  # the update failed: whether it landed first, the host says (its own job's ask again)
            return await self._claim(task_queue, asked.host, ask)
        return _placed(asked.host, answers[asked.index])  # None (refused): this attempt places the game afresh

    def _keep(self, key: tuple[str, str], asked: _Asked) -> None:
        self._asked[key] = asked
        while len(self._asked) > ASKED_KEPT:
            self._asked.popitem(last=False)

    async def _choose_from_all(self, fleet: Fleet, ask: ReserveRequest) -> PlaceAnswer:
        """The samples found no room: every host is asked, so the answer is true for the whole fleet
        (asked once more when the hosts that had room were taken meanwhile by other placements).
        """
        for _ in range(2):
            survey = await fleet.survey()
            views = survey.views
            live = [v for v in views if v.live]
            open_hosts = sorted(
                (v for v in live if not v.draining and v.engines + v.reserved < v.capacity),
                key=lambda v: ((v.engines + v.reserved) / max(v.capacity, 1), v.name),
            )
            if not open_hosts:
                break
            for view in open_hosts[:WHY_HOSTS_NAMED]:
                answer = await self._claim(fleet.task_queue, _ref(view), ask)
                if answer is not None:
                    return answer.model_copy(update={"live_hosts": len(live)})
        if survey.unanswered:
            # "No host has room" would be false for the hosts that did not answer: the attempt fails, retried.
            raise RuntimeError(_why_unanswered(views, live, survey.unanswered))
        return PlaceAnswer(why=_why_no_host(views, live), live_hosts=len(live))

    async def _claim(self, task_queue: str, host: HostRef, ask: ReserveRequest) -> PlaceAnswer | None:
        """The host's reservation for the job (or the game found there); None: refused (full, raced)."""
        return _placed(host, await self._reserve(task_queue, host, ask))

    # --- reservations, batched per host --------------------------------------------------------------

    async def _reserve(self, task_queue: str, host: HostRef, request: ReserveRequest) -> ReserveAnswer:
        """The host's answer to `request`, sent with whatever else this worker asks of it meanwhile."""
        workflow_id = host_workflow_id(task_queue, host.host_id)
        queue = self._queues.setdefault(workflow_id, _Queue())
        answer: asyncio.Future[ReserveAnswer] = asyncio.get_running_loop().create_future()
        queue.waiting.append((request, answer))
        if queue.sender is None or queue.sender.done():
            queue.sender = asyncio.create_task(self._send_waiting(workflow_id, host, queue))
        # A cancelled activity leaves the future cancelled: the sender skips it if it has not gone yet.
        # Once sent, the reservation stays in `_asked` until its caller has the answer: a caller that
        # stopped waiting leaves it for its job's retry (`_earlier_answer`).
        result = await answer
        self._asked.pop((request.job, request.game_id), None)
        return result

    async def _send_waiting(self, workflow_id: str, host: HostRef, queue: _Queue) -> None:
        while queue.waiting:
            batch = [(r, f) for r, f in queue.waiting[:PLACE_BATCH_MAX] if not f.done()]
            del queue.waiting[:PLACE_BATCH_MAX]
            if not batch:
                continue
            # Held until done: a late update outlives the callers it answers.
            self._updates.add(update := asyncio.create_task(self._update_within(workflow_id, [r for r, _ in batch])))
            update.add_done_callback(self._update_done)
            for index, (request, _) in enumerate(batch):
                self._keep((request.job, request.game_id), _Asked(host, update, index))
            try:
                # Shielded: an update that outlasts the wait may still land, and the job's retry waits for it.
                answers = await asyncio.wait_for(asyncio.shield(update), RESERVE_WAIT_S)
            except Exception as err:  # every caller's activity fails with it and is retried by its policy
                if isinstance(err, TimeoutError):
                    err = RuntimeError(f"the workflow {workflow_id} did not answer within {RESERVE_WAIT_S:g} s")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, future), answer in zip(batch, answers, strict=True):
                if not future.done():
                    future.set_result(answer)
        self._queues.pop(workflow_id, None)

    def _update_done(self, update: asyncio.Task[list[ReserveAnswer]]) -> None:
        self._updates.discard(update)
        if not update.cancelled():
            update.exception()  # seen: its callers had their error; asyncio would log it again at exit

    async def _update_within(self, workflow_id: str, requests: list[ReserveRequest]) -> list[ReserveAnswer]:
        async with asyncio.timeout(RESERVE_LATE_S):
            return await self._update(workflow_id, requests)

    async def _update(self, workflow_id: str, requests: list[ReserveRequest]) -> list[ReserveAnswer]:
        handle = self._client.get_workflow_handle(workflow_id)
        refused = 0
        while True:
            self.updates_sent += 1
            try:
                answer: ReserveBatchAnswer = await handle.execute_update(
                    RESERVE_UPDATE, ReserveBatch(requests=requests), result_type=ReserveBatchAnswer
                )
                return answer.answers
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:  # forgotten meanwhile: no place there
                    return [ReserveAnswer(why="the host was forgotten") for _ in requests]
                if err.status == RPCStatusCode.FAILED_PRECONDITION:  # its run took every update it may
                    return [ReserveAnswer(why="the host takes no more updates in this run") for _ in requests]
                if err.status != RPCStatusCode.RESOURCE_EXHAUSTED:
                    raise
            refused += 1
            await asyncio.sleep(random.uniform(0, min(REFUSED_PAUSE_CAP_S, REFUSED_FIRST_PAUSE_S * 2**refused)))

    async def _tell(self, task_queue: str, change: EngineChanged) -> None:
        handle = self._client.get_workflow_handle(host_workflow_id(task_queue, change.host_id))
        try:
            await handle.signal(ENGINE_CHANGED_SIGNAL, change)
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise


def _placed(host: HostRef, answer: ReserveAnswer) -> PlaceAnswer | None:
    """A host's answer to a reservation as the placement's: the game found there, the host chosen, or None."""
    if answer.found:
        return PlaceAnswer(found=[host], live_hosts=1)
    if answer.reserved:
        return PlaceAnswer(chosen=host, live_hosts=1)
    return None


def liveness(view: HostView) -> HostLiveness:
    """A host's view as a waiting Docker step judges it: live, and silent for how long."""
    silent_s = NEVER_HEARD_S
    if view.last_seen is not None:
        silent_s = max(0.0, (datetime.now(UTC) - view.last_seen).total_seconds())
    return HostLiveness(known=True, live=view.live, silent_s=silent_s)


def _fullness(probe: HostProbe) -> float:
    return probe.load / max(probe.capacity, 1)


def _ref(view: HostView) -> HostRef:
    return HostRef(host_id=view.host_id, name=view.name, queue=view.queue)


def _why_unanswered(views: list[HostView], live: list[HostView], unanswered: dict[str, str]) -> str:
    named = ", ".join(f"{name} ({why})" for name, why in list(unanswered.items())[:WHY_HOSTS_NAMED])
    more = f" and {len(unanswered) - WHY_HOSTS_NAMED} more" if len(unanswered) > WHY_HOSTS_NAMED else ""
    heard = _why_no_host(views, live) if views else "no host answered"
    return f"{heard}; {len(unanswered)} did not answer: {named}{more}"


def _why_no_host(views: list[HostView], live: list[HostView]) -> str:
    if not views:
        return "no host has reported to the fleet yet (is a worker running next to a Docker engine?)"
    if not live:
        silent = ", ".join(v.name for v in views[:WHY_HOSTS_NAMED])
        more = f" and {len(views) - WHY_HOSTS_NAMED} more" if len(views) > WHY_HOSTS_NAMED else ""
        return f"no host has a live worker (known, all silent: {silent}{more})"
    parts = [
        f"{v.name} {v.engines + v.reserved}/{v.capacity}{' draining' if v.draining else ''}"
        for v in live[:WHY_HOSTS_NAMED]
    ]
    more = f", and {len(live) - WHY_HOSTS_NAMED} more" if len(live) > WHY_HOSTS_NAMED else ""
    return "no host has free capacity (" + ", ".join(parts) + more + ")"

"""The fleet of one task queue as the Temporal server holds it: one `RuntimeHost` workflow per host
(`workflows/host.py`), found through the server's workflow listing, each asked by query or update.

No workflow holds the whole fleet. A worker keeps a sample of the hosts for `HOSTS_FRESH_S`, which
placement draws from: the whole fleet up to `2 * WINDOW_HOSTS` hosts, past that a window of about
`WINDOW_HOSTS` (a random arc of the hosts' ids, a new one each time), so a worker's listing costs the
same at 1,000 hosts as at 100. What is asked of every host (`rtjobs hosts`, placement's last resort,
the search for a game whose engine record was lost) is listed whole and goes to the hosts' workflows
at once, `FAN_OUT` at a time. Used by the placement activities, the worker's start-up checks and the CLI.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from temporalio.api.common.v1 import Payloads, WorkflowExecution
from temporalio.api.enums.v1 import QueryRejectCondition as QueryRejectConditionProto
from temporalio.api.query.v1 import WorkflowQuery
from temporalio.api.workflowservice.v1 import QueryWorkflowRequest
from temporalio.client import Client, WorkflowQueryRejectedError
from temporalio.common import QueryRejectCondition, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from contract.hosts import (
    HAS_GAMES_QUERY,
    HOST_NAME_MEMO,
    HOST_WORKFLOW,
    PROBE_QUERY,
    REPORT_SIGNAL,
    VIEW_QUERY,
    HostCommand,
    HostProbe,
    HostRef,
    HostReport,
    HostState,
    HostView,
    ReserveRequest,
    host_queue,
    host_workflow_id,
)
from contract.lock import coordination_queue

T = TypeVar("T")

# How long a worker trusts its list of the fleet's hosts (a new host is sampled after at most this; a
# placement that finds no room in its samples lists them afresh). The listing is a visibility call, which
# the server limits (`frontend.namespaceRPS.visibility`, 10 a second by default): a fleet's workers that
# place games list about workers / 60 times a second.
HOSTS_FRESH_S = 60.0
# A fleet of more than twice this many hosts is sampled through a window of about this many (each
# window's ids an arc of width WINDOW_HOSTS / fleet size, its size the last window's count over its
# width): at 1,000 hosts every worker listed the whole fleet each minute, a fleet-wide cost that grew
# with hosts x workers (bench/fleet_scale.py: each renewal set the placements' p99 of its seconds).
WINDOW_HOSTS = 64
# A window that found fewer hosts than this (the fleet shrank, or its ids are not uuids) is replaced
# by the whole fleet's listing, which also counts the fleet again.
WINDOW_FEWEST = 16
# Host ids are uuid4s (`activities/hosts.py`): an arc's ends are this many hex digits of a uniform draw.
ARC_DIGITS = 8
# How many hosts' workflows are asked at once when every host is asked.
FAN_OUT = 64
# A query waits for a worker of the coordination queue; one whose worker just died waits out the
# sticky queue's timeout first (`STICKY_TIMEOUT` in rtjobs/workers.py, 3 s), hence well above it.
QUERY_TIMEOUT = timedelta(seconds=10)
# A placement's probe gives up sooner: another host is sampled instead.
PROBE_TIMEOUT = timedelta(seconds=3)


@dataclass(frozen=True)
class Busy:
    """A host whose workflow turned a probe away at once: the server holds one query per workflow while
    a task of it is in flight ("consistent query buffer is full"), so a host many placements ask at
    the same moment refuses most probes. Its capacity-checked `reserve` update is asked instead.
    """

    host: HostRef


class UnknownHost(Exception):
    """No host, or several, answer to the name or id an operator gave (the message lists the known)."""


def host_start_options(task_queue: str, host: HostRef) -> dict[str, Any]:
    """How a host's workflow is started by its first report (signal-with-start)."""
    return {
        "id": host_workflow_id(task_queue, host.host_id),
        "task_queue": coordination_queue(task_queue),
        "id_reuse_policy": WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        "memo": {HOST_NAME_MEMO: host.name},
        "static_summary": f"Docker host {host.name} ({host.host_id}) of task queue {task_queue}",
    }


async def send_report(client: Client, task_queue: str, report: HostReport) -> None:
    """A worker's report of its host: signal-with-start, so the first report starts the host's workflow."""
    await client.start_workflow(
        HOST_WORKFLOW,
        HostState(task_queue=task_queue),
        start_signal=REPORT_SIGNAL,
        start_signal_args=[report],
        **host_start_options(task_queue, report.host),
    )


@dataclass
class Survey:
    """Every host's view that answered, and the hosts that did not (busy past the query's deadline, or
    their workflow failing its tasks): one host's silence does not hide the rest of the fleet.
    """

    views: list[HostView]
    unanswered: dict[str, str]  # host name → why


@dataclass
class _Listed:
    hosts: list[HostRef]
    at: float


class _Kept:
    """A list of hosts kept for HOSTS_FRESH_S and shared by its callers. Gone stale, it is listed anew
    in the background while its callers take the last one (at 1,000 hosts a listing takes about a
    second, and every placement waiting for it made the p99 of each minute: 1.3-1.5 s); the placements
    of one worker share one listing, never one each. Only a first list, or a `fresh` one, is waited for.
    """

    def __init__(self, list_hosts: Callable[[], Awaitable[list[HostRef]]]) -> None:
        self._list_hosts = list_hosts
        self.listed: _Listed | None = None
        self.listing: asyncio.Task[_Listed] | None = None

    async def get(self, *, fresh: bool = False) -> list[HostRef]:
        listed = self.listed
        if not fresh and listed is not None:
            if time.monotonic() - listed.at > HOSTS_FRESH_S:
                self.renew()
            return listed.hosts
        # Shielded: a caller cancelled meanwhile (its activity timed out) leaves the listing to the others.
        return (await asyncio.shield(self.renew(anew=fresh))).hosts

    def renew(self, *, anew: bool = False) -> asyncio.Task[_Listed]:
        """The listing in flight, or one begun now (`anew`: even while one is in flight)."""
        listing = self.listing
        if anew or listing is None or listing.done():
            listing = self.listing = asyncio.create_task(self._relist())
            # (Its failure is each waiting caller's; one left with no caller is not logged as unretrieved.)
            listing.add_done_callback(lambda t: t.cancelled() or t.exception())
        return listing

    async def _relist(self) -> _Listed:
        listed = _Listed(hosts=await self._list_hosts(), at=time.monotonic())
        if self.listed is None or self.listed.at < listed.at:
            self.listed = listed
        return listed


class Fleet:
    """The hosts of one task queue's fleet, listed from the server and asked one by one."""

    def __init__(self, client: Client, task_queue: str, rng: random.Random | None = None) -> None:
        self.client = client
        self.task_queue = task_queue
        self._prefix = host_workflow_id(task_queue, "")
        self._all = _Kept(lambda: self._list())
        self._sample = _Kept(lambda: self._list_sample())
        self._rng = rng or random.Random()
        self._size: float | None = None  # the fleet's size, as the last listing counted it

    async def hosts(self, *, fresh: bool = False) -> list[HostRef]:
        """Every host with a workflow (live or silent), as listed at most HOSTS_FRESH_S ago (`fresh`: now)."""
        return await self._all.get(fresh=fresh)

    async def sample(self, *, fresh: bool = False) -> list[HostRef]:
        """The hosts placement draws from, kept as `hosts` is: the whole fleet, or a window of it."""
        return await self._sample.get(fresh=fresh)

    def resample(self) -> None:
        """A new window begun in the background (this one's hosts had no room)."""
        self._sample.renew()

    async def _list_sample(self) -> list[HostRef]:
        size = self._size
        if size is None:  # counted first (one number, not a listing): a first sample costs what later ones do
            size = self._size = await self.count()
        if size > 2 * WINDOW_HOSTS:
            width = WINDOW_HOSTS / size
            hosts = await self._list(self._arc(self._rng.random(), width))
            if len(hosts) >= WINDOW_FEWEST:
                self._size = len(hosts) / width
                return hosts
        hosts = await self._list()
        self._size = len(hosts)
        return hosts

    def _arc(self, start: float, width: float) -> str:
        """The condition on workflow ids of the hosts whose id lies in [start, start + width) of the
        id space (1.0 being past every id: an arc over it takes the lowest ids too).
        """
        lo, hi = (
            self._prefix + format(int(x % 1.0 * 16**ARC_DIGITS), f"0{ARC_DIGITS}x") for x in (start, start + width)
        )
        if start + width < 1.0:
            return f"WorkflowId >= '{lo}' AND WorkflowId < '{hi}'"
        return f"(WorkflowId >= '{lo}' OR WorkflowId < '{hi}')"

    async def count(self) -> int:
        """How many hosts have a running workflow: one visibility call, whatever the fleet's size."""
        counted = await self.client.count_workflows(self._listing_query(), rpc_timeout=QUERY_TIMEOUT)
        return counted.count

    def _listing_query(self) -> str:
        return (
            f"WorkflowType = '{HOST_WORKFLOW}' AND TaskQueue = '{coordination_queue(self.task_queue)}' "
            "AND ExecutionStatus = 'Running'"
        )

    async def _list(self, arc: str = "") -> list[HostRef]:
        """The hosts with a running workflow (`arc`: those whose id it holds), by name."""
        query = f"{self._listing_query()} AND {arc}" if arc else self._listing_query()
        hosts: dict[str, HostRef] = {}
        async for execution in self.client.list_workflows(query, rpc_timeout=QUERY_TIMEOUT):
            if not execution.id.startswith(self._prefix):
                continue
            host_id = execution.id.removeprefix(self._prefix)
            name = await execution.memo_value(HOST_NAME_MEMO, host_id, type_hint=str)
            hosts[host_id] = HostRef(host_id=host_id, name=name, queue=host_queue(self.task_queue, host_id))
        return sorted(hosts.values(), key=lambda h: (h.name, h.host_id))

    def _handle(self, host_id: str) -> Any:
        return self.client.get_workflow_handle(host_workflow_id(self.task_queue, host_id))

    async def _query(
        self,
        host_id: str,
        query: str,
        args: Sequence[Any],
        result_type: type[T],
        rpc_timeout: timedelta = QUERY_TIMEOUT,
    ) -> T | None:
        """The host's workflow's answer; None when it has none running (never reported, or forgotten:
        a closed workflow still answers queries, with its last state).
        """
        try:
            answer: T = await self._handle(host_id).query(
                query,
                args=args,
                result_type=result_type,
                reject_condition=QueryRejectCondition.NOT_OPEN,
                rpc_timeout=rpc_timeout,
            )
        except WorkflowQueryRejectedError:
            return None
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        return answer

    async def view(self, host_id: str) -> HostView | None:
        """The host as its workflow sees it now; None when it has none (never reported, or forgotten)."""
        return await self._query(host_id, VIEW_QUERY, [], HostView)

    async def views(self) -> list[HostView]:
        """Every host's view, by name; a host that ended meanwhile is left out, one that did not answer fails
        the call (for callers that need the whole fleet; `survey` gives what answered).
        """
        survey = await self.survey()
        if survey.unanswered:
            name, why = next(iter(survey.unanswered.items()))
            raise RuntimeError(f"host {name} did not answer: {why}")
        return survey.views

    async def survey(self) -> Survey:
        """Every host's view that answered (`rtjobs hosts`, placement's last resort), and which did not."""
        hosts = await self.hosts(fresh=True)
        answers = await fan_out(hosts, self._answer)
        views = [a for a in answers if isinstance(a, HostView)]
        unanswered = {h.name: a for h, a in zip(hosts, answers, strict=True) if isinstance(a, str)}
        return Survey(views=views, unanswered=unanswered)

    async def _answer(self, host: HostRef) -> HostView | str | None:
        try:
            return await self.view(host.host_id)
        except RPCError as err:
            return f"{err.status.name if err.status else 'error'}: {err.message}"

    async def probe(self, host: HostRef, request: ReserveRequest) -> HostProbe | Busy | None:
        """The host's load for a placement; `Busy` when its workflow turned the query away, None when
        its workflow is gone or did not answer within PROBE_TIMEOUT.
        """
        try:
            return await self._probe(host, request)
        except RPCError as err:
            return Busy(host) if err.status == RPCStatusCode.RESOURCE_EXHAUSTED else None

    async def _probe(self, host: HostRef, request: ReserveRequest) -> HostProbe | None:
        """The probe query without the SDK's retries: the client's `query` retries a refused query with
        a backoff of its own (seen at 10 hosts: probes waiting out their 3 s deadline, a p99 of 7.8 s),
        where a placement rather asks the host's update at once.
        """
        payloads = await self.client.data_converter.encode([request])
        answer = await self.client.workflow_service.query_workflow(
            QueryWorkflowRequest(
                namespace=self.client.namespace,
                execution=WorkflowExecution(workflow_id=host_workflow_id(self.task_queue, host.host_id)),
                query=WorkflowQuery(query_type=PROBE_QUERY, query_args=Payloads(payloads=payloads)),
                query_reject_condition=QueryRejectConditionProto.QUERY_REJECT_CONDITION_NOT_OPEN,
            ),
            retry=False,
            timeout=PROBE_TIMEOUT,
        )
        if answer.HasField("query_rejected") or not answer.query_result.payloads:
            return None  # closed (forgotten), or no report yet
        probe: HostProbe = (await self.client.data_converter.decode(answer.query_result.payloads, [HostProbe]))[0]
        return probe

    async def find(self, game_id: str, *, exclude: Iterable[str] = ()) -> list[HostRef]:
        """The hosts whose report lists the game, asked one by one: a record that was lost is found
        again from the hosts themselves (`exclude`: hosts just seen without it).
        """
        skip = set(exclude)
        hosts = [h for h in await self.hosts(fresh=True) if h.host_id not in skip]
        found = await fan_out(hosts, lambda h: self.has_games(h, [game_id]))
        return [h for h, games in zip(hosts, found, strict=True) if games]

    async def has_games(self, host: HostRef, game_ids: Sequence[str]) -> list[str]:
        """Which of the games the host's report lists ([] when its workflow is gone)."""
        return await self._query(host.host_id, HAS_GAMES_QUERY, [list(game_ids)], list[str]) or []

    async def command(self, action: str, name_or_id: str) -> HostView:
        """An operator's drain/undrain/forget, sent to the one host of that name or id."""
        host = await self.resolve(name_or_id)
        view: HostView = await self._handle(host.host_id).execute_update(
            action, HostCommand(host=name_or_id), result_type=HostView, rpc_timeout=QUERY_TIMEOUT
        )
        return view

    async def resolve(self, name_or_id: str) -> HostRef:
        """The one host of that name or id (an id is found even before the listing shows its host)."""
        hosts = await self.hosts(fresh=True)
        matches = [h for h in hosts if name_or_id in (h.name, h.host_id)]
        if not matches:
            view = await self.view(name_or_id)
            if view is not None:
                return HostRef(host_id=view.host_id, name=view.name, queue=view.queue)
        if len(matches) != 1:
            known = ", ".join(f"{h.name} ({h.host_id})" for h in hosts) or "none"
            what = "no host" if not matches else "several hosts"
            raise UnknownHost(f"{what} named {name_or_id!r}; known hosts: {known}")
        return matches[0]


async def fan_out(items: Sequence[Any], ask: Callable[[Any], Awaitable[T]], limit: int = FAN_OUT) -> list[T]:
    """`ask` of every item, at most `limit` at once, in the items' order."""
    gate = asyncio.Semaphore(limit)

    async def one(item: Any) -> T:
        async with gate:
            return await ask(item)

    return list(await asyncio.gather(*(one(i) for i in items)))

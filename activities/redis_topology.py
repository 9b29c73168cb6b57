"""Redis as operators run it: `REDIS_URL` names a standalone server (`redis://`, `unix://`), a Cluster
(`redis+cluster://`) or a Sentinel-watched primary (`redis+sentinel://`); `rediss…` turns TLS on for
every connection. docs/redis.md, "Topologies and failover", gives the URL forms and options.

Every topology gets the same bounded waits and one immediate retry after a connection error, by
redis-py's own machinery for it; anything longer is left to Temporal's activity retries (the publish
is idempotent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias
from urllib.parse import quote, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from contract.settings import redact_url

RedisClient: TypeAlias = Redis | RedisCluster
Kind = Literal["standalone", "cluster", "sentinel"]

_SCHEMES: dict[str, tuple[Kind, bool]] = {
    "redis": ("standalone", False),
    "rediss": ("standalone", True),
    "unix": ("standalone", False),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}
SCHEMES = tuple(f"{scheme}://" for scheme in _SCHEMES)
_DEFAULT_PORT: dict[Kind, int] = {"standalone": 6379, "cluster": 6379, "sentinel": 26379}
SENTINEL_FORM = "redis+sentinel://[user:password@]host:26379[,host:26379...]/PRIMARY-NAME[/DB]"
CLUSTER_FORM = "redis+cluster://[user:password@]host:port[,host:port...]/"
_SENTINEL_AUTH = {"sentinel_username": "username", "sentinel_password": "password"}

# Bounded waits: a Redis that went away costs an attempt 2-3 s, never a hung activity.
SOCKET_CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 3.0
HEALTH_CHECK_INTERVAL_S = 30
_COMMON: dict[str, Any] = {
    "decode_responses": True,
    "socket_connect_timeout": SOCKET_CONNECT_TIMEOUT_S,
    "socket_timeout": SOCKET_TIMEOUT_S,
    "health_check_interval": HEALTH_CHECK_INTERVAL_S,
}


class RedisUrlError(ValueError):
    """`REDIS_URL` cannot be used as it is; the message is one line and never holds the password."""


@dataclass(frozen=True)
class RedisTopology:
    """What the URL names. For a standalone URL only `kind` and `tls` are filled: redis-py reads the rest."""

    kind: Kind
    tls: bool
    hosts: tuple[tuple[str, int], ...] = ()
    primary_name: str | None = None
    db: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    sentinel_options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """For log lines: which topology and which hosts, never a credential."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.hosts)
        tls = " over TLS" if self.tls else ""
        if self.kind == "cluster":
            return f"Redis Cluster, seeds {hosts}{tls}"
        if self.kind == "sentinel":
            return f"Redis primary {self.primary_name!r} via sentinels {hosts}{tls}"
        return f"standalone{tls}"


def parse_redis_url(url: str) -> RedisTopology:
    """Check the URL's form and split it; every refusal is one `RedisUrlError` line naming the fix."""
    try:
        parts = urlsplit(url.strip())
    except ValueError as err:
        raise RedisUrlError(f"not a URL: {err}") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        shown = f"scheme {scheme + '://'!r}" if scheme else "no scheme"
        raise RedisUrlError(f"unknown Redis URL ({shown}): use one of {', '.join(SCHEMES)}")
    kind, tls = _SCHEMES[scheme]
    if kind == "standalone":
        return RedisTopology(kind, tls)

    userinfo, _, host_list = parts.netloc.rpartition("@")
    hosts = tuple(_host_port(text, _DEFAULT_PORT[kind]) for text in host_list.split(",") if text.strip())
    form = CLUSTER_FORM if kind == "cluster" else SENTINEL_FORM
    if not hosts:
        what = "seed node" if kind == "cluster" else "sentinel"
        raise RedisUrlError(f"{scheme}:// without any host: name at least one {what}, as in {form}")
    options = _query_options(userinfo, parts.query)
    segments = [unquote(segment) for segment in parts.path.split("/") if segment]
    db_in_query = options.pop("db", None)

    if kind == "cluster":
        if segments not in ([], ["0"]) or db_in_query not in (None, 0):
            raise RedisUrlError(f"a Redis Cluster has only database 0: write {form}")
        return RedisTopology(kind, tls, hosts=hosts, options=options)

    if not segments:
        raise RedisUrlError(f"{scheme}:// without the primary's name: write {form}")
    if len(segments) > 2:
        raise RedisUrlError(f"too many path parts in the Sentinel URL: write {form}")
    db = db_in_query if db_in_query is not None else _db(segments[1] if len(segments) == 2 else "0", form)
    sentinel_options = {_SENTINEL_AUTH[key]: options.pop(key) for key in list(options) if key in _SENTINEL_AUTH}
    return RedisTopology(
        kind, tls, hosts=hosts, primary_name=segments[0], db=db, options=options, sentinel_options=sentinel_options
    )


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = text.partition(":")
    host = unquote(host)
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        port = 0
    if not host or not 0 < port < 65536:
        raise RedisUrlError(f"bad host:port {text!r} in the Redis URL")
    return host, port


def _query_options(userinfo: str, query: str) -> dict[str, Any]:
    """User, password and query options exactly as redis-py reads them from a plain URL (decoding, types)."""
    plain = "redis://" + (f"{userinfo}@" if userinfo else "") + "localhost/" + (f"?{query}" if query else "")
    try:
        options: dict[str, Any] = dict(parse_url(plain))
    except ValueError as err:
        raise RedisUrlError(str(err)) from None
    options.pop("host", None)
    return options


def _db(text: str, form: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise RedisUrlError(f"database {text!r} is not a number: write {form}") from None


# --- clients ----------------------------------------------------------------------------------------


def _one_reconnect() -> Retry:
    """After a connection error, one immediate retry: a pooled connection that went stale while Redis
    (or the primary) was away fails its first command, which would otherwise cost a whole activity
    backoff (up to 10 s). Resending is safe: the publish script is idempotent.
    """
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


class SentinelPrimary(Redis):
    """The client of a Sentinel-watched primary (`Sentinel.master_for`); closing it closes the
    connections to the sentinels too.
    """

    sentinels: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels is not None:
            await self.sentinels.aclose()


def redis_client(url: str) -> RedisClient:
    """One client per process for the topology the URL names (see the module docstring).

    Nothing connects here: the first command does (the worker's start-up check, `check_reachable`).
    A URL whose form or options are wrong raises `RedisUrlError`.
    """
    topology = parse_redis_url(url)
    try:
        return _build(url, topology)
    except (TypeError, ValueError, RedisClusterException) as err:
        raise RedisUrlError(f"unusable Redis URL option: {scrub(str(err), url)}") from None


def _build(url: str, topology: RedisTopology) -> RedisClient:
    if topology.kind == "standalone":
        client: Redis = Redis.from_url(url, retry=_one_reconnect(), **_COMMON)
        return client
    options = {**_COMMON, **topology.options}
    if topology.tls:
        options["ssl"] = True
    if topology.kind == "cluster":
        # The cluster client's retry is its number of resends after a connection error or a failover
        # answer (CLUSTER DOWN), each after refreshing the slot map from the nodes.
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in topology.hosts],
            retry=Retry(NoBackoff(), 1),
            **options,
        )
    # The same waits, TLS settings and single retry for the sentinels, plus their own login if any.
    sentinel_kwargs = {
        key: value for key, value in options.items() if key.startswith(("socket_", "ssl"))
    } | topology.sentinel_options
    sentinel_kwargs["retry"] = _one_reconnect()
    assert topology.primary_name is not None  # parse_redis_url refuses a Sentinel URL without it
    manager = Sentinel(  # type: ignore[no-untyped-call]
        list(topology.hosts), sentinel_kwargs=sentinel_kwargs, retry=_one_reconnect(), db=topology.db, **options
    )
    primary: SentinelPrimary = manager.master_for(topology.primary_name, redis_class=SentinelPrimary)
    primary.sentinels = manager
    return primary


# --- checks and routing -----------------------------------------------------------------------------


async def stream_primary(client: RedisCluster, stream: str) -> ClusterNode:
    """The primary that serves the stream's slot (the idempotency keys share it: hash tag), from the
    client's slot map, discovered first if this is the client's first call.
    """
    await client.initialize()
    node = client.get_node_from_key(stream)
    if node is None:  # only asked of replicas; kept for the type checker
        raise RedisClusterException(f"no node serves the slot of {stream!r}")
    return node


async def check_reachable(client: RedisClient, stream: str) -> None:
    """PING the server that holds the stream, through the client the jobs use: a standalone server; in a
    Cluster the primary of the stream's slot after discovering the nodes from the seeds (a node that
    is down elsewhere in the cluster does not fail the check); under Sentinel the primary the
    sentinels name (an unknown primary name fails here).
    """
    if isinstance(client, RedisCluster):
        try:
            node = await stream_primary(client, stream)
        except RedisClusterException as err:
            if "not enabled" not in str(err):
                raise
            # redis-py reads any refusal of CLUSTER SLOTS (an ACL's too) as "not a cluster node".
            raise RedisClusterException(
                f"{err} (or the URL's user may not run CLUSTER SLOTS / COMMAND: see docs/security.md)"
            ) from None
        await client.execute_command("PING", target_nodes=node)
    else:
        await client.ping()


async def check_wait_allowed(client: RedisClient, stream: str) -> None:
    """`WAIT 0 0` answers at once (zero replicas are always enough), so it only proves the ACL user may
    run WAIT, which every publish runs when `RTJOBS_REDIS_MIN_REPLICAS` > 0.
    """
    if isinstance(client, RedisCluster):
        await client.wait(0, 0, target_nodes=await stream_primary(client, stream))
    else:
        await client.wait(0, 0)


# --- eviction ---------------------------------------------------------------------------------------

# Redis evicts only with `maxmemory` set (0: no limit) and a policy other than `noeviction`. The publish
# writes the stream (no TTL) and one idempotency key per job run (with a TTL: the dedup window).
# `volatile-*` evicts keys that have a TTL, i.e. the idempotency keys, and a retry after that appends
# twice; `allkeys-*` evicts any key, the stream included. A policy this code does not know counts as
# allkeys. `noeviction` refuses writes when full instead: a publish then fails and is retried, never doubled.
SAFE_POLICY = "noeviction"
STREAM_AND_KEYS = ("stream", "idempotency keys")


@dataclass(frozen=True)
class MemoryPolicy:
    """One primary's eviction settings; `node` is its `host:port` in a Cluster, "" otherwise."""

    node: str
    maxmemory: int
    policy: str

    def at_risk(self) -> tuple[str, ...]:
        """What of ours the server may evict: nothing, the idempotency keys, or the stream too."""
        if self.maxmemory == 0 or self.policy == SAFE_POLICY:
            return ()
        if self.policy.startswith("volatile-"):
            return ("idempotency keys",)
        return STREAM_AND_KEYS


class PolicyUnreadable(Exception):
    """Neither `INFO memory` nor `CONFIG GET` answered: the user's ACL refuses both, or they are renamed
    or disabled (managed services do that).
    """


async def memory_policies(client: RedisClient, stream: str) -> tuple[list[MemoryPolicy], list[str]]:
    """The eviction settings of every primary the worker writes to, and the Cluster primaries skipped.

    Standalone: the server; Sentinel: the primary the sentinels name now. Cluster: every primary of the
    slot map, since resharding or a failover can move the stream's slot (its idempotency keys share it) to
    any of them; a primary other than the stream's that does not answer is skipped, as in `check_reachable`.
    """
    if not isinstance(client, RedisCluster):
        return [await _memory_policy(client, None, "")], []
    here = await stream_primary(client, stream)
    found: list[MemoryPolicy] = []
    skipped: list[str] = []
    for node in client.get_primaries():
        try:
            found.append(await _memory_policy(client, node, node.name))
        except (RedisConnectionError, RedisTimeoutError):
            if node.name == here.name:
                raise
            skipped.append(node.name)
    return found, skipped


async def _memory_policy(client: RedisClient, node: ClusterNode | None, name: str) -> MemoryPolicy:
    """`INFO memory` (the documented ACL grants `+info|memory` only), else `CONFIG GET` (a user with
    `+config|get`); refusals or unknown commands on both raise `PolicyUnreadable` with both answers.
    """
    where: dict[str, Any] = {"target_nodes": node} if node is not None else {}
    try:
        info = await client.execute_command("INFO", "memory", **where)
        return MemoryPolicy(name, int(info["maxmemory"]), str(info["maxmemory_policy"]))
    except ResponseError as err:
        info_refusal = str(err)
    try:
        config = await client.execute_command("CONFIG", "GET", "maxmemory*", **where)
        return MemoryPolicy(name, int(config["maxmemory"]), str(config["maxmemory-policy"]))
    except ResponseError as err:
        on = f" on {name}" if name else ""
        raise PolicyUnreadable(f"INFO memory{on}: {info_refusal}; CONFIG GET{on}: {err}") from None


# --- secrets in messages ----------------------------------------------------------------------------


def redact(url: str) -> str:
    """The URL fit for logs: passwords (the user part's and `sentinel_password`/`password` options) masked."""
    return redact_url(url)


def scrub(text: str, url: str) -> str:
    """`text` with the URL redacted and every password the URL holds (decoded or percent-encoded) masked."""
    text = text.replace(url, redact(url))
    for secret in _secrets(url):
        if secret:
            text = text.replace(secret, "***")
    return text


def _secrets(url: str) -> set[str]:
    found: set[str] = set()
    try:
        parts = urlsplit(url)
        options = parse_url("redis://" + parts.netloc.rpartition("@")[0] + "@localhost/?" + parts.query)
    except ValueError:
        return found
    for key in ("password", "sentinel_password"):
        value = options.get(key)
        if isinstance(value, str) and value:
            found |= {value, quote(value, safe=""), quote(value)}
    return found

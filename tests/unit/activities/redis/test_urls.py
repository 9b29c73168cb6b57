"""REDIS_URL's forms for a standalone server, Cluster and Sentinel (no server): what each names, one clear
line for a bad one, and the passwords masked in every form.
"""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest

from activities.redis_topology import RedisUrlError, parse_redis_url, redact, redis_client, scrub
from tests.unit.activities.redis.topology_jobs import (
    PASSWORD,
    SENTINEL_PASSWORD,
    SENTINEL_USER,
    assert_no_secret,
    userinfo,
)

# --- the URL forms (no server) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind", "hosts", "name", "db"),
    [
        ("redis://u:p@h:6380/2", "standalone", (), None, 0),
        ("rediss://h", "standalone", (), None, 0),
        ("redis+cluster://u:p@h1:7000,h2:7001/", "cluster", (("h1", 7000), ("h2", 7001)), None, 0),
        ("rediss+cluster://h1,[::1]:7002", "cluster", (("h1", 6379), ("::1", 7002)), None, 0),
        ("redis+sentinel://u:p@s1:26379,s2/mymaster/0", "sentinel", (("s1", 26379), ("s2", 26379)), "mymaster", 0),
        ("rediss+sentinel://s1:5000/my%20primary/3", "sentinel", (("s1", 5000),), "my primary", 3),
    ],
)
def test_url_forms(url: str, kind: str, hosts: tuple[tuple[str, int], ...], name: str | None, db: int) -> None:
    topology = parse_redis_url(url)
    assert (topology.kind, topology.hosts, topology.primary_name, topology.db) == (kind, hosts, name, db)
    assert topology.tls == url.startswith("rediss")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://h:6379", r"unknown Redis URL \(scheme 'http://'\): use one of redis://, rediss://"),
        ("h:6379", r"unknown Redis URL"),
        ("redis+cluster://u:pw@/", r"without any host: name at least one seed node"),
        ("redis+cluster://h1:7000/3", r"only database 0"),
        ("redis+cluster://h1:seven/", r"bad host:port 'h1:seven'"),
        ("redis+sentinel://u:pw@s1:26379", r"without the primary's name: write redis\+sentinel://"),
        ("redis+sentinel://u:pw@s1:26379/", r"without the primary's name"),
        ("redis+sentinel://@/mymaster", r"without any host: name at least one sentinel"),
        ("redis+sentinel://s1/mymaster/zero", r"database 'zero' is not a number"),
        ("redis+cluster://h1/?socket_timeout=soon", r"Invalid value for 'socket_timeout'"),
        ("redis+cluster://h1/?no_such_option=1", r"unusable Redis URL option: .*no_such_option"),
    ],
)
def test_bad_urls_fail_in_one_clear_line(url: str, says: str) -> None:
    with pytest.raises(RedisUrlError) as caught:
        redis_client(url)
    message = str(caught.value)
    assert re.search(says, message), message
    assert "\n" not in message and "pw" not in message


def test_passwords_are_masked_in_every_form() -> None:
    url = (
        f"redis+sentinel://{userinfo()}@s1:26379,s2:26379/mymaster/0"
        f"?sentinel_username={SENTINEL_USER}&sentinel_password={quote(SENTINEL_PASSWORD, safe='')}"
    )
    shown = redact(url)
    assert_no_secret(shown)
    assert shown.startswith("redis+sentinel://rtjobs:***@s1:26379,s2:26379/mymaster/0?")
    assert "sentinel_password=***" in shown and f"sentinel_username={SENTINEL_USER}" in shown
    assert_no_secret(scrub(f"failed: {url} ({PASSWORD}, {SENTINEL_PASSWORD})", url))
    assert redact(f"redis+cluster://{userinfo()}@h1:7000,h2:7001/") == "redis+cluster://rtjobs:***@h1:7000,h2:7001/"

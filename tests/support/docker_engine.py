"""A Docker engine for the tests and the benchmark, and the test engine images, built offline.

`DOCKER_HOST` is used when it answers; otherwise, as root with Debian's `dockerd` installed, a private
daemon runs under a temp dir (vfs storage, iptables off, no default bridge, its own data/exec roots,
socket and pidfile) and is stopped at the end. The images are imported through the Engine API from a
busybox-static rootfs (no registry, no `docker` CLI), with HEALTHCHECK/CMD set by `changes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass

import aiodocker
from aiodocker.networks import DockerNetwork

# The product's dev stack builds its demo image and its private daemon with the same code.
from rtjobs.dev.stack import HTTP_ENGINE_CHANGES, SERVE_HTTP, engine_answers, shell_cmd
from rtjobs.dev.stack import EngineUnavailable as EngineUnavailable
from rtjobs.dev.stack import PrivateDockerd as PrivateDockerd
from rtjobs.dev.stack import import_image as import_image
from rtjobs.dev.stack import rootfs_tar as rootfs_tar
from rtjobs.dev.stack import static_busybox as static_busybox

TEST_REPO = "rtjobs-test/engine"


# tag -> Dockerfile instructions applied at import.
IMAGE_CHANGES: dict[str, list[str]] = {
    "healthy": HTTP_ENGINE_CHANGES,
    # Healthy with another image id: the "same name, other image" and "other image" cases.
    "healthy-b": [*HTTP_ENGINE_CHANGES, "LABEL variant=b"],
    # Stays "starting" forever: failures inside the start period do not count.
    "never-healthy": [
        shell_cmd(SERVE_HTTP),
        "HEALTHCHECK --interval=1s --timeout=1s --start-period=1h CMD false",
    ],
    # Reported unhealthy after ~1 s.
    "unhealthy": [shell_cmd(SERVE_HTTP), "HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD false"],
    "exits": [
        shell_cmd("echo engine booting; echo loading map; echo 'fatal: no map' >&2; exit 3"),
        "HEALTHCHECK --interval=1s CMD true",
    ],
    # Without HEALTHCHECK ("running" would be ready): crash at once, or after ~0.3 s of booting. Only the
    # readiness stability window (RTJOBS_ENGINE_MIN_RUNNING_S) tells them from a healthy engine.
    "exits-at-once": [shell_cmd("echo engine booting; echo loading map; echo 'fatal: no map' >&2; exit 3")],
    "exits-soon": [shell_cmd("echo engine booting; sleep 0.3; echo loading map; echo 'fatal: no map' >&2; exit 3")],
    "slow-healthy": [
        shell_cmd("trap 'exit 0' TERM; (sleep 3; touch /tmp/ready) & httpd -f -p 8080 -h /www & wait"),
        "HEALTHCHECK --interval=1s --timeout=1s --retries=30 CMD test -f /tmp/ready",
    ],
    # Healthy ~8 s after start: long enough that a scenario can act on several engines (create them all
    # on a loaded machine, then kill a worker) while none is healthy yet.
    "late-healthy": [
        shell_cmd("trap 'exit 0' TERM; (sleep 8; touch /tmp/ready) & httpd -f -p 8080 -h /www & wait"),
        "HEALTHCHECK --interval=1s --timeout=1s --retries=60 CMD test -f /tmp/ready",
    ],
    # Fills memory until the kernel's OOM killer ends it (under a small memory limit). Never healthy: a
    # check that passed first (the fill slowed by a loaded machine) would make the start succeed instead.
    "oom": [
        shell_cmd("echo filling memory; x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo survived"),
        "HEALTHCHECK --interval=1s --timeout=1s --start-period=1h CMD false",
    ],
    # Ignores SIGTERM and has no HEALTHCHECK ("running" is ready).
    "ignores-term": [shell_cmd("trap '' TERM; while true; do sleep 1; done")],
}


@dataclass(frozen=True)
class EngineImages:
    healthy: str
    healthy_b: str
    never_healthy: str
    unhealthy: str
    exits: str
    exits_at_once: str
    exits_soon: str
    slow_healthy: str
    late_healthy: str
    ignores_term: str
    oom: str


def image_ref(tag: str) -> str:
    return f"{TEST_REPO}:{tag}"


TEST_IMAGES = EngineImages(
    healthy=image_ref("healthy"),
    healthy_b=image_ref("healthy-b"),
    never_healthy=image_ref("never-healthy"),
    unhealthy=image_ref("unhealthy"),
    exits=image_ref("exits"),
    exits_at_once=image_ref("exits-at-once"),
    exits_soon=image_ref("exits-soon"),
    slow_healthy=image_ref("slow-healthy"),
    late_healthy=image_ref("late-healthy"),
    ignores_term=image_ref("ignores-term"),
    oom=image_ref("oom"),
)


async def build_test_images(docker: aiodocker.Docker) -> EngineImages:
    rootfs = rootfs_tar()
    await asyncio.gather(
        *(import_image(docker, image_ref(tag), rootfs, changes) for tag, changes in IMAGE_CHANGES.items())
    )
    return TEST_IMAGES


async def remove_test_leftovers(docker: aiodocker.Docker, *, everything: bool) -> None:
    """On our private engine, force-remove every container and network left.

    On an engine given by DOCKER_HOST nothing is removed here: it may run real games (and other test
    sessions' engines) under the same labels; each test removes the containers of its own games.
    """
    if not everything:
        return
    for c in await docker.containers.list(all=True):
        with contextlib.suppress(aiodocker.DockerError):
            await c.delete(force=True, v=True)
    if everything:
        for net in await docker.networks.list():
            if net["Name"] not in {"bridge", "host", "none"}:
                with contextlib.suppress(aiodocker.DockerError):
                    await DockerNetwork(docker, net["Id"]).delete()  # type: ignore[no-untyped-call]


@dataclass
class DockerEngine:
    """What the `docker_engine` fixture gives: the engine's URL, the test images, our own daemon if any."""

    url: str
    images: EngineImages
    private: PrivateDockerd | None

    async def close(self) -> None:
        async with aiodocker.Docker(url=self.url) as docker:
            await remove_test_leftovers(docker, everything=self.private is not None)
        if self.private is not None:
            self.private.close()


async def acquire_engine() -> DockerEngine:
    """DOCKER_HOST when it answers, else a private dockerd; the test images built in it."""
    private: PrivateDockerd | None = None
    url = os.environ.get("DOCKER_HOST", "")
    if not url or not await engine_answers(url):
        static_busybox()
        private = PrivateDockerd().start()
        url = private.url
    try:
        async with aiodocker.Docker(url=url) as docker:
            images = await build_test_images(docker)
    except BaseException:
        if private is not None:
            private.close()
        raise
    return DockerEngine(url=url, images=images, private=private)

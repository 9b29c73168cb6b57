"""An engine's scratch directory is writable whatever the image's `/tmp` looks like: the tmpfs the worker mounts
there gets an explicit mode (1777), not the mode of the image's own `/tmp` (Docker's default), so an image whose
`/tmp` is root's 0755 (an imported root file system) still gets scratch space its uid-65534 engine can write.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import AsyncIterator

import aiodocker
import pytest

from activities.docker import EngineActivities
from activities.engine_spec import SCRATCH_DIR, scratch_options
from contract.engine import EnsureEngineRunning
from tests.support.docker_engine import DockerEngine, import_image, rootfs_tar
from tests.unit.activities.docker.engines import job_env, settings_for

IMAGE = "rtjobs-test/engine:root-only-tmp"
# Ready once it could write its scratch directory (as the engine's uid 65534).
CHANGES = [
    'CMD ["sh", "-c", "trap \'exit 0\' TERM; echo ok > /tmp/ready; httpd -f -p 8080 -h /www & wait"]',
    "HEALTHCHECK --interval=1s --timeout=5s --retries=30 CMD test -f /tmp/ready",
]


def with_root_only_tmp(rootfs: bytes) -> bytes:
    """The suite's root file system with `/tmp` as root's 0755, as some imported images have it."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(rootfs)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src.getmembers():
            if member.name.rstrip("/") == "tmp":
                member.mode = 0o755
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return out.getvalue()


@pytest.fixture
async def root_only_tmp_image(docker: aiodocker.Docker) -> AsyncIterator[str]:
    await import_image(docker, IMAGE, with_root_only_tmp(rootfs_tar()), CHANGES)
    yield IMAGE


@pytest.mark.docker
async def test_scratch_is_writable_when_the_images_tmp_is_not(
    docker_engine: DockerEngine, docker: aiodocker.Docker, root_only_tmp_image: str, game_id: str
) -> None:
    acts = EngineActivities(settings_for(docker_engine.url, start_timeout_s=15.0))
    try:
        outcome = await job_env().run(
            acts.ensure_engine_running, EnsureEngineRunning(game_id=game_id, image=root_only_tmp_image)
        )
    finally:
        await acts.close()
    info = await docker.containers.container(outcome.container_id).show()
    assert info["State"]["Health"]["Status"] == "healthy"
    assert "mode=1777" in info["HostConfig"]["Tmpfs"][SCRATCH_DIR]


@pytest.mark.parametrize(
    ("user", "owner"),
    [("65534:65534", ",uid=65534,gid=65534"), ("1000", ",uid=1000"), ("1000:games", ",uid=1000"), ("games", "")],
)
def test_scratch_is_owned_by_a_numeric_engine_user(user: str, owner: str) -> None:
    options = scratch_options(settings_for("unix:///x.sock", engine_user=user, engine_tmpfs_bytes=1 << 20))
    assert options == f"rw,noexec,nosuid,nodev,mode=1777{owner},size={1 << 20}"

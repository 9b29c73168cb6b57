"""The lock-down of the engine's create body: what it sets, what may be configured, and that a body
which loosens it is refused.
"""

from __future__ import annotations

from typing import Any

import pytest

from activities.engine_spec import UnsafeEngineConfig, check_locked_down, container_config
from tests.support.docker_engine import image_ref
from tests.unit.activities.docker.engines import (
    SCRATCH,
    settings_for,
)

pytestmark = pytest.mark.docker


# --- the lock-down of the create body --------------------------------------------------------------------


def test_create_body_is_locked_down_and_configurable() -> None:
    locked = container_config(settings_for("unix:///x.sock"), "g-1", image_ref("healthy"), "net")
    host = locked["HostConfig"]
    assert host["ReadonlyRootfs"] is True and locked["User"] == "65534:65534"
    assert host["Tmpfs"] == {"/tmp": f"{SCRATCH},size={64 * 1024 * 1024}"}
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert not any(key in host for key in ("Binds", "Mounts", "Devices", "VolumesFrom")) and "Volumes" not in locked

    sized = container_config(settings_for("unix:///x.sock", engine_tmpfs_bytes=8 << 20), "g-1", "x", "net")
    assert sized["HostConfig"]["Tmpfs"] == {"/tmp": f"{SCRATCH},size={8 << 20}"}
    # Opting out: the image's writable layer (no tmpfs) and the image's own USER.
    loose = container_config(settings_for("unix:///x.sock", engine_read_only=False, engine_user=""), "g-1", "x", "net")
    assert loose["HostConfig"]["ReadonlyRootfs"] is False and "Tmpfs" not in loose["HostConfig"]
    assert "User" not in loose
    for bad_user in ("a b", "65534:", ":65534", "x;y"):
        with pytest.raises(ValueError, match="engine_user"):
            settings_for("unix:///x.sock", engine_user=bad_user)


@pytest.mark.parametrize(
    "loosen",
    [
        {"SecurityOpt": ["no-new-privileges", "seccomp=unconfined"]},
        {"SecurityOpt": ["seccomp:unconfined"]},
        {"SecurityOpt": ["seccomp=/etc/docker/custom.json"]},
        {"SecurityOpt": ["apparmor=unconfined"]},
        {"Privileged": True},
        {"Binds": ["/:/host"]},
        {"Mounts": [{"Type": "bind", "Source": "/var/run/docker.sock", "Target": "/var/run/docker.sock"}]},
        {"Mounts": [{"Type": "volume", "Source": "data", "Target": "/data"}]},
        {"Devices": [{"PathOnHost": "/dev/kmsg", "PathInContainer": "/dev/kmsg"}]},
        {"VolumesFrom": ["other"]},
        {"PidMode": "host"},
        {"NetworkMode": "host"},
        {"Tmpfs": {"/tmp": "rw", "/etc": "rw"}},
    ],
)
def test_a_create_body_that_loosens_the_lock_down_is_refused(loosen: dict[str, Any]) -> None:
    config = container_config(settings_for("unix:///x.sock"), "g-1", image_ref("healthy"), "net")
    check_locked_down(config)  # the real one passes
    tampered = {**config, "HostConfig": {**config["HostConfig"], **loosen}}
    with pytest.raises(UnsafeEngineConfig, match="loosen the lock-down"):
        check_locked_down(tampered)

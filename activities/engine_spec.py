"""What an engine container is, as data: its create config, and how a container of ours is recognised.

Pure functions of settings and inspect data, no I/O: the contract's hardening and labels live in one
place, which the benchmark's direct baseline reuses so that both create identical containers.
"""

from __future__ import annotations

from typing import Any

from contract.models import LABEL_GAME_ID, LABEL_JOB_RUN, LABEL_MANAGED_BY, MANAGED_BY, container_name
from contract.settings import Settings

Inspect = dict[str, Any]


# Where a read-only engine may write: a tmpfs (memory, counted against the engine's memory limit),
# never executable, no set-uid, no devices, writable by everyone (sticky). runc (1.1, Docker 20.10's)
# then sets the mount's mode to the image's own /tmp's, so an image whose /tmp is root's 0755 would
# leave the engine no scratch: the tmpfs is also owned by the engine's numeric user (`scratch_options`).
SCRATCH_DIR = "/tmp"
SCRATCH_OPTIONS = "rw,noexec,nosuid,nodev,mode=1777"


class UnsafeEngineConfig(ValueError):
    """A create body that would loosen the engines' lock-down: never sent to Docker."""


def container_config(settings: Settings, game_id: str, image: str, network: str, job_run: str = "") -> dict[str, Any]:
    """The create body: hardened, limited, labelled as ours (and as the job run's), on the game network
    with its name as DNS alias; no restart policy, so only the jobs decide when an engine exists.

    Hardened: not privileged, no capabilities unless configured, no-new-privileges, Docker's default
    seccomp profile (no `seccomp=` option, so never `unconfined`), read-only root file system with a
    tmpfs scratch at /tmp (RTJOBS_ENGINE_READ_ONLY), a non-root user (RTJOBS_ENGINE_USER), and no
    host path, volume or device mounted, ever (`check_locked_down` enforces it on the result).
    """
    name = container_name(game_id)
    labels = {LABEL_GAME_ID: game_id, LABEL_MANAGED_BY: MANAGED_BY}
    if job_run:
        labels[LABEL_JOB_RUN] = job_run
    host: dict[str, Any] = {
        "Privileged": False,
        "CapDrop": ["ALL"],
        "CapAdd": list(settings.engine_cap_add),
        "SecurityOpt": ["no-new-privileges"],
        "Memory": settings.engine_memory_bytes,
        "MemorySwap": settings.engine_memory_bytes,  # no swap on top of the memory limit
        "NanoCpus": settings.engine_nano_cpus,
        "PidsLimit": settings.engine_pids_limit,
        "NetworkMode": network,
        "AutoRemove": False,
        "RestartPolicy": {"Name": "no"},
        "ReadonlyRootfs": settings.engine_read_only,
    }
    if settings.engine_read_only:
        host["Tmpfs"] = {SCRATCH_DIR: scratch_options(settings)}
    config: dict[str, Any] = {
        "Image": image,
        "Labels": labels,
        "HostConfig": host,
        "NetworkingConfig": {"EndpointsConfig": {network: {"Aliases": [name]}}},
    }
    if settings.engine_user:
        config["User"] = settings.engine_user
    check_locked_down(config)
    return config


_LOOSENING_SECURITY_OPTS = ("seccomp", "apparmor=unconfined", "apparmor:unconfined", "label=disable", "label:disable")
_HOST_MODES = ("NetworkMode", "PidMode", "IpcMode", "UTSMode", "UsernsMode", "CgroupnsMode")


def scratch_options(settings: Settings) -> str:
    """The scratch tmpfs's options: owned by the engine's user when it is numeric (`uid[:gid]`), so it can
    write there whatever mode the image's /tmp gives the mount; a named user relies on the mode alone.
    """
    options = SCRATCH_OPTIONS
    uid, _, gid = settings.engine_user.partition(":")
    if uid.isdigit():
        options += f",uid={uid}"
        if gid.isdigit():
            options += f",gid={gid}"
    return f"{options},size={settings.engine_tmpfs_bytes}"


def check_locked_down(config: dict[str, Any]) -> None:
    """Refuse a create body that loosens the lock-down, whatever produced it.

    No seccomp option at all (Docker's default profile applies; `seccomp=unconfined` or a custom
    profile would replace it), no AppArmor/SELinux opt-out, not privileged, no host namespaces, no
    host paths, named volumes, bind or volume mounts, devices or volumes-from: only the tmpfs scratch.
    """
    host: dict[str, Any] = config.get("HostConfig") or {}
    problems = []
    for opt in host.get("SecurityOpt") or []:
        if str(opt).replace(" ", "").lower().startswith(_LOOSENING_SECURITY_OPTS):
            problems.append(f"SecurityOpt {opt!r}")
    if host.get("Privileged"):
        problems.append("Privileged")
    for key in ("Binds", "Mounts", "Devices", "VolumesFrom", "DeviceCgroupRules"):
        if host.get(key):
            problems.append(f"HostConfig.{key}")
    if config.get("Volumes"):
        problems.append("Volumes")
    for key in _HOST_MODES:
        if str(host.get(key, "")).lower() == "host":
            problems.append(f"{key}=host")
    if set(host.get("Tmpfs") or {}) - {SCRATCH_DIR}:
        problems.append(f"Tmpfs {sorted(host['Tmpfs'])}")
    if problems:
        raise UnsafeEngineConfig(f"engine container config would loosen the lock-down: {', '.join(problems)}")


def network_config(network: str) -> dict[str, Any]:
    """The game network: a labelled bridge, so an operator can tell it was made by rtjobs."""
    return {"Name": network, "Driver": "bridge", "CheckDuplicate": True, "Labels": {LABEL_MANAGED_BY: MANAGED_BY}}


def ours_filters(*labels: str) -> dict[str, list[str]]:
    """List filters for containers of this module, narrowed by further `key=value` labels."""
    return {"label": [f"{LABEL_MANAGED_BY}={MANAGED_BY}", *labels]}


def job_run_filters(game_id: str, job_run: str) -> dict[str, list[str]]:
    """List filters for the containers one job run made for one game (all three labels must match)."""
    return ours_filters(f"{LABEL_GAME_ID}={game_id}", f"{LABEL_JOB_RUN}={job_run}")


def is_ours(info: Inspect, game_id: str) -> bool:
    """Ours is rtjobs' label plus this game's: a same-named container without them is left alone."""
    labels = (info.get("Config") or {}).get("Labels") or {}
    return bool(labels.get(LABEL_MANAGED_BY) == MANAGED_BY and labels.get(LABEL_GAME_ID) == game_id)


def made_by(info: Inspect, job_run: str) -> bool:
    """Whether this job run created the container, even if no heartbeat carried its id."""
    labels = (info.get("Config") or {}).get("Labels") or {}
    return bool(job_run) and labels.get(LABEL_JOB_RUN) == job_run


def is_running(info: Inspect) -> bool:
    """Running in the sense that matters for an engine: not paused, not in a restart loop."""
    state = info.get("State") or {}
    return bool(state.get("Running")) and not state.get("Paused") and not state.get("Restarting")


def normalize_image_ref(ref: str) -> str:
    """`busybox` and `docker.io/library/busybox:latest` name the same image: compare them as equal."""
    name, _, digest = ref.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" not in last and not digest:
        name += ":latest"
    for prefix in ("docker.io/", "index.docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    if name.startswith("library/") and name.count("/") == 1:
        name = name[len("library/") :]
    return f"{name}@{digest}" if digest else name

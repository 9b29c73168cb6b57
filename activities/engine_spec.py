"""What an engine container is, as data: its create config, and how a container of ours is recognised.

Pure functions of settings and inspect data, no I/O: the contract's hardening and labels live in one
place, which the benchmark's direct baseline reuses so that both create identical containers.
"""

from __future__ import annotations

from typing import Any

from contract.models import LABEL_GAME_ID, LABEL_JOB_RUN, LABEL_MANAGED_BY, MANAGED_BY, container_name
from contract.settings import Settings

Inspect = dict[str, Any]


def container_config(settings: Settings, game_id: str, image: str, network: str, job_run: str = "") -> dict[str, Any]:
    """The create body: hardened, limited, labelled as ours (and as the job run's), on the game network
    with its name as DNS alias; no restart policy, so only the jobs decide when an engine exists."""
    name = container_name(game_id)
    labels = {LABEL_GAME_ID: game_id, LABEL_MANAGED_BY: MANAGED_BY}
    if job_run:
        labels[LABEL_JOB_RUN] = job_run
    return {
        "Image": image,
        "Labels": labels,
        "HostConfig": {
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
        },
        "NetworkingConfig": {"EndpointsConfig": {network: {"Aliases": [name]}}},
    }


def network_config(network: str) -> dict[str, Any]:
    """The game network: a labelled bridge, so an operator can tell it was made by rtjobs."""
    return {"Name": network, "Driver": "bridge", "CheckDuplicate": True, "Labels": {LABEL_MANAGED_BY: MANAGED_BY}}


def job_run_filters(game_id: str, job_run: str) -> dict[str, list[str]]:
    """List filters for the containers one job run made for one game (all three labels must match)."""
    return {
        "label": [
            f"{LABEL_MANAGED_BY}={MANAGED_BY}",
            f"{LABEL_GAME_ID}={game_id}",
            f"{LABEL_JOB_RUN}={job_run}",
        ]
    }


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

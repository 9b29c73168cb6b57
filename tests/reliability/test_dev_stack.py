"""`make run` on a fresh machine runs real jobs, and the Temporal UI shows them (issue 11, items 0 and 7).

One `make run` per module, from a fresh `git clone` of this checkout's HEAD, with nothing configured:
no REDIS_URL, no DOCKER_HOST, no RTJOBS_ENGINE_IMAGE, state in the clone's `.state/`. The shared Redis
of this machine takes 127.0.0.1:6379, so the dev stack is pointed at a free port with
RTJOBS_DEV_REDIS_PORT (nothing answers there: it must start its own redis-server); no Docker engine
answers at the default socket here (checked first), so it must start its own dockerd. The clone uses
this test run's virtualenv (`make run VENV=...`, its install stamp taken as up to date: building a
virtualenv per test is too slow); everything else is the clone's own code. The CLI is the clone's
`rtjobs.cli`, run as the README's quick start runs `rtjobs`.

With UPDATE_DOCS=1 the screenshots and the terminal transcript are written into docs/ (what the
README shows); otherwise into the test's temp dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiodocker
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait
from temporalio.client import Client, WorkflowExecutionStatus

from rtjobs.dev.stack import (
    DEFAULT_DOCKER_SOCKET,
    DEMO_IMAGE,
    SERVE_HTTP,
    engine_answers,
    import_image,
    rootfs_tar,
    running,
    shell_cmd,
    wait_gone,
)
from tests.support.browser import isolated_chrome
from tests.support.processes import ROOT, WORKER_READY, process_env
from tests.support.redis_server import free_port, port_answers

pytestmark = [pytest.mark.slow, pytest.mark.docker]

VENV = Path(sys.executable).parent.parent
# Dev server, private dockerd (its first start makes its data root), the demo image, the worker.
READY_S = 180.0
CLI_TIMEOUT_S = 120.0
STOP_S = 90.0
UI_WAIT_S = 60.0
DOCS = ROOT / "docs"


@dataclass
class DevStack:
    """The running `make run` of the module: the clone, the make process, its ports and output."""

    clone: Path
    make: subprocess.Popen[bytes]
    log: Path
    temporal_port: int
    ui_port: int
    redis_port: int
    transcript: list[str] = field(default_factory=list)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def docker_url(self) -> str:
        found = re.search(r"Docker: started a private dockerd \(pid \d+\) at (\S+),", self.output())
        assert found, self.output()
        return found.group(1)

    def worker_pid(self) -> int:
        """The `worker.py --dev` that make runs (a child of make, or of the shell make ran)."""
        for pid in _descendants(self.make.pid):
            with contextlib.suppress(OSError):
                if b"worker.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
        raise AssertionError(f"no worker.py below make (pid {self.make.pid}):\n{self.output()}")

    def rtjobs(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """The clone's `rtjobs` with TEMPORAL_ADDRESS exported, as the quick start runs it; the command
        and its output go into the transcript (stderr first: its progress lines come before the table).
        """
        cli_env = process_env(TEMPORAL_ADDRESS=f"127.0.0.1:{self.temporal_port}", **(env or {}))
        done = subprocess.run(
            [sys.executable, "-c", "from rtjobs.cli import main; main()", *args],
            cwd=self.clone,
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
        )
        self.transcript.append(f"$ rtjobs {' '.join(args)}\n{done.stderr}{done.stdout}")
        return done


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        with contextlib.suppress(OSError):
            for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
                found.append(int(child))
                todo.append(int(child))
    return found


def _pids_naming(marker: str) -> list[int]:
    """Processes whose command line names `marker` (the clone's path): the dev stack's, nobody else's."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


def _result_fields(stdout: str) -> dict[str, str]:
    fields = {}
    for line in stdout.splitlines():
        name, _, value = line.partition(" ")
        fields[name] = value.strip()
    return fields


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    if asyncio.run(engine_answers(DEFAULT_DOCKER_SOCKET)):
        pytest.fail(f"a Docker engine answers at {DEFAULT_DOCKER_SOCKET}: the dev stack would use it, not its own")
    clone = tmp_path_factory.mktemp("fresh") / "rtjobs"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    temporal_port, ui_port, redis_port, metrics_port = free_port(), free_port(), free_port(), free_port()
    env = process_env(
        RTJOBS_DEV_PORT=str(temporal_port),
        RTJOBS_DEV_UI_PORT=str(ui_port),
        RTJOBS_DEV_REDIS_PORT=str(redis_port),
        # --dev serves metrics on 127.0.0.1:9464 by default; another process of this machine may hold it.
        RTJOBS_METRICS_ADDRESS=f"127.0.0.1:{metrics_port}",
    )
    log = clone.parent / "make-run.log"
    stamp = VENV / ".installed-stamp"
    with open(log, "wb") as out:
        make = subprocess.Popen(
            ["make", "run", f"VENV={VENV}", "-o", str(stamp)],
            cwd=clone,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack = DevStack(clone, make, log, temporal_port, ui_port, redis_port)
    try:
        deadline = time.monotonic() + READY_S
        while WORKER_READY not in stack.output():
            assert make.poll() is None, f"make run exited {make.returncode}:\n{stack.output()}"
            assert time.monotonic() < deadline, f"not ready within {READY_S}s:\n{stack.output()}"
            time.sleep(0.2)
        yield stack
    finally:
        _kill_leftovers(stack)


def _kill_leftovers(stack: DevStack) -> None:
    """After a failed test: SIGTERM the worker (the dev stack stops what it started, frees the daemon's
    bridges and mounts), and SIGKILL whatever still names the clone's path after that.
    """
    if stack.make.poll() is None:
        with contextlib.suppress(AssertionError, ProcessLookupError):
            os.kill(stack.worker_pid(), signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            stack.make.wait(STOP_S)
    if stack.make.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(stack.make.pid, signal.SIGKILL)
        stack.make.wait()
    for pid in _pids_naming(str(stack.clone)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def _engines(url: str) -> list[dict[str, Any]]:
    """Inspect data of the running containers of the engine at `url`."""
    async with aiodocker.Docker(url=url) as docker:
        return [await c.show() for c in await docker.containers.list()]


async def _networks(url: str) -> list[dict[str, Any]]:
    async with aiodocker.Docker(url=url) as docker:
        networks: list[dict[str, Any]] = await docker.networks.list()
        return networks


def _save(name: str, tmp_path: Path) -> Path:
    return (DOCS if os.environ.get("UPDATE_DOCS") == "1" else tmp_path) / name


# --- item 0: the quick start on what `make run` started ------------------------------------------------


def test_make_run_and_the_quick_start(dev_stack: DevStack, tmp_path: Path) -> None:
    """`make run` starts Redis, Docker and the demo image, and the quick start succeeds."""
    out = dev_stack.output()
    assert re.search(rf"Redis: started redis-server \(pid \d+\) on 127\.0\.0\.1:{dev_stack.redis_port}", out), out
    assert f"at unix://{dev_stack.clone}/.state/docker/docker.sock" in out, out
    assert f"Engine image: built {DEMO_IMAGE}" in out, out

    started = dev_stack.rtjobs("start", "g-1", "--wait")
    assert started.returncode == 0, started.stderr
    start = _result_fields(started.stdout)
    assert start["outcome"] == "success" and start["error_code"] == "", started.stdout
    assert re.fullmatch(r"[0-9a-f]{64}", start["container_id"]), started.stdout
    assert start["engine_endpoint"] == "http://galaxy-game-g-1:8080"

    # The engine runs the demo image on the game network, and answers HTTP there (from this host, by address).
    [inspect] = asyncio.run(_engines(dev_stack.docker_url))
    assert inspect["Name"] == "/galaxy-game-g-1"
    assert inspect["Config"]["Image"] == DEMO_IMAGE
    assert inspect["State"]["Health"]["Status"] == "healthy"
    address = inspect["NetworkSettings"]["Networks"]["galaxy-games"]["IPAddress"]
    with urllib.request.urlopen(f"http://{address}:8080/", timeout=5) as page:
        assert page.read() == b"rtjobs demo engine\n"

    again = dev_stack.rtjobs("start", "g-1", "--wait")  # the engine already runs that image
    assert again.returncode == 0, again.stderr
    replay = _result_fields(again.stdout)
    assert (replay["error_code"], replay["container_id"]) == ("replay_no_op", start["container_id"]), again.stdout

    stopped = dev_stack.rtjobs("stop", "g-1", "--wait")
    assert stopped.returncode == 0, stopped.stderr
    stop = _result_fields(stopped.stdout)
    assert stop["outcome"] == "success" and stop["error_code"] == "", stopped.stdout
    assert stop["container_id"] == start["container_id"]
    again = dev_stack.rtjobs("stop", "g-1", "--wait")  # nothing left to stop
    assert again.returncode == 0, again.stderr
    replay = _result_fields(again.stdout)
    assert (replay["error_code"], replay["container_id"]) == ("replay_no_op", ""), again.stdout

    redis_url = f"redis://127.0.0.1:{dev_stack.redis_port}/0"  # (the README's default port is taken here)
    results = dev_stack.rtjobs("results", "--game", "g-1", env={"REDIS_URL": redis_url})
    assert results.returncode == 0, results.stderr
    assert len([line for line in results.stdout.splitlines() if " g-1 " in line]) == 4, results.stdout
    hosts = dev_stack.rtjobs("hosts")
    assert hosts.returncode == 0, hosts.stderr
    _save("cli.txt", tmp_path).write_text("\n".join(dev_stack.transcript))


# --- item 7: the UI, seen -------------------------------------------------------------------------------


@pytest.fixture
def browser(dev_stack: DevStack) -> Iterator[tuple[webdriver.Chrome, str]]:
    """Debian's chromium, headless, in a network namespace of its own (tests/support/browser.py says
    why), and the dev server UI's address as it reaches it.
    """
    with isolated_chrome(dev_stack.ui_port) as (chrome, base):
        yield chrome, base


def _page_shows(chrome: webdriver.Chrome, url: str, *texts: str) -> str:
    """Open `url` and wait until the rendered page's text holds every one of `texts` (the UI renders
    with JavaScript after load, and a job page's current details come from a query to the worker).
    """
    chrome.get(url)

    def shown(driver: webdriver.Chrome) -> str | bool:
        body = _rendered_text(driver)
        return body if all(text in body for text in texts) else False

    try:
        return str(WebDriverWait(chrome, UI_WAIT_S, poll_frequency=0.25).until(shown))
    except TimeoutException:
        body = _rendered_text(chrome)
        failed = _failed_requests(chrome)
        raise AssertionError(
            f"{url} did not show {texts} within {UI_WAIT_S}s; failed requests: {failed}; it shows:\n{body}"
        ) from None


def _failed_requests(chrome: webdriver.Chrome) -> list[str]:
    """The page's requests answered with an error status, with the start of each answer."""
    failed = [f"console: {e['message'][:300]}" for e in chrome.get_log("browser") if e["level"] == "SEVERE"]  # type: ignore[no-untyped-call]
    urls: dict[str, str] = {}
    for entry in chrome.get_log("performance"):  # type: ignore[no-untyped-call]
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls[message["params"]["requestId"]] = message["params"]["request"]["url"]
        if message["method"] == "Network.loadingFailed":
            params = message["params"]
            failed.append(f"failed {urls.get(params['requestId'], '?')}: {params.get('errorText')}")
        if message["method"] != "Network.responseReceived":
            continue
        response = message["params"]["response"]
        if int(response["status"]) >= 400:
            try:
                request = {"requestId": message["params"]["requestId"]}
                answer = chrome.execute_cdp_cmd("Network.getResponseBody", request)
                text = str(answer.get("body", ""))[:300]
            except WebDriverException as err:
                text = f"(body unavailable: {err.msg})"
            failed.append(f"{response['status']} {response['url']}: {text}")
    return failed


def _rendered_text(chrome: webdriver.Chrome) -> str:
    """The page's text with its frames' (the UI renders a workflow's current details in an iframe)."""
    parts = [str(chrome.find_element(By.TAG_NAME, "body").text)]
    for frame in chrome.find_elements(By.TAG_NAME, "iframe"):
        try:
            chrome.switch_to.frame(frame)
            parts.append(str(chrome.find_element(By.TAG_NAME, "body").text))
        except WebDriverException:  # a frame the page replaced meanwhile: read on the next poll
            pass
        finally:
            chrome.switch_to.default_content()
    return "\n".join(parts)


def test_ui_lists_and_shows_jobs(dev_stack: DevStack, browser: tuple[webdriver.Chrome, str], tmp_path: Path) -> None:
    """The UI lists jobs by `game_id` and shows a job's step and activity summaries."""
    chrome, base = browser
    started = dev_stack.rtjobs("start", "g-ui", "--wait")
    assert started.returncode == 0, started.stderr
    found = re.search(r"workflow (runtime-start-g-ui-\w+) run (\S+)", started.stderr)
    assert found, started.stderr
    workflow_id, run_id = found.groups()
    ui = f"{base}/namespaces/default/workflows"

    query = urllib.parse.quote('GameId="g-ui"')
    # The filter on the search attribute finds the job, and only it (the pager: 1-1 of 1).
    _page_shows(chrome, f"{ui}?query={query}", 'GameId = "g-ui"', workflow_id, "StartRuntimeJob", "1\u20131\nof 1")
    chrome.save_screenshot(str(_save("ui-jobs.png", tmp_path)))

    job = f"{ui}/{workflow_id}/{run_id}"
    # Each activity with its summary, in the job's event history.
    _page_shows(
        chrome,
        f"{job}/history",
        "acquire the lock of game g-ui",
        "find the host of game g-ui",
        "start engine for game g-ui on host",
        "publish success for game g-ui",
    )
    chrome.set_window_size(1920, 1900)  # the whole history of the job, summaries included
    chrome.save_screenshot(str(_save("ui-job.png", tmp_path)))
    chrome.set_window_size(1440, 1000)

    # A running job's current step (the workflow's current details, which the UI asks the worker for):
    # an engine that never gets healthy keeps its start job in the Docker step.
    asyncio.run(_import(dev_stack.docker_url, STUCK_IMAGE, STUCK_CHANGES))
    stuck = dev_stack.rtjobs("start", "g-stuck", "--image", STUCK_IMAGE)
    assert stuck.returncode == 0, stuck.stderr
    found = re.search(r"workflow (runtime-start-g-stuck-\w+) run (\S+)", stuck.stderr)
    assert found, stuck.stderr
    step = f"start engine for game g-stuck ({STUCK_IMAGE}) on host"
    try:
        # The UI reads the details once, when the page loads: open it once the job is in that step.
        asyncio.run(_wait_for_step(dev_stack.temporal_port, found.group(1), step))
        _page_shows(
            chrome,
            f"{ui}/{found.group(1)}/{found.group(2)}/user-metadata",
            "Current Details",
            step,
        )
        chrome.save_screenshot(str(_save("ui-job-running.png", tmp_path)))
    finally:
        asyncio.run(_cancel(dev_stack.temporal_port, found.group(1)))


STUCK_IMAGE = "rtjobs-dev/engine:never-healthy"
STUCK_CHANGES = [shell_cmd(SERVE_HTTP), "HEALTHCHECK --interval=1s --timeout=1s --start-period=1h CMD false"]


async def _import(url: str, ref: str, changes: list[str]) -> None:
    async with aiodocker.Docker(url=url) as docker:
        await import_image(docker, ref, rootfs_tar(), changes)


async def _wait_for_step(temporal_port: int, workflow_id: str, step: str) -> None:
    """Until the job's `status` query (what `rtjobs start --wait` shows) names `step`."""
    handle = (await Client.connect(f"127.0.0.1:{temporal_port}")).get_workflow_handle(workflow_id)
    deadline = time.monotonic() + CLI_TIMEOUT_S
    while not str((await handle.query("status"))["step"]).startswith(step):
        assert time.monotonic() < deadline, f"{workflow_id} not in step {step!r} within {CLI_TIMEOUT_S}s"
        await asyncio.sleep(0.1)


async def _cancel(temporal_port: int, workflow_id: str) -> None:
    """Cancel the job and wait until it has closed (it removes its engine and publishes `cancelled`)."""
    client = await Client.connect(f"127.0.0.1:{temporal_port}")
    handle = client.get_workflow_handle(workflow_id)
    await handle.cancel()
    deadline = time.monotonic() + CLI_TIMEOUT_S
    while (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
        assert time.monotonic() < deadline, f"{workflow_id} still running {CLI_TIMEOUT_S}s after its cancel"
        await asyncio.sleep(0.2)


# --- item 0: SIGTERM stops all of it --------------------------------------------------------------------


def test_sigterm_stops_the_dev_stack(dev_stack: DevStack) -> None:
    """SIGTERM stops the worker and everything the dev stack started."""
    engines = asyncio.run(_engines(dev_stack.docker_url))
    networks = asyncio.run(_networks(dev_stack.docker_url))
    engine_pids = [int(c["State"]["Pid"]) for c in engines]
    assert engine_pids, "no engine runs (the UI test leaves g-ui's running)"
    bridges = [f"br-{n['Id'][:12]}" for n in networks if n["Driver"] == "bridge"]
    assert bridges, networks
    stack_pids = _pids_naming(str(dev_stack.clone))  # dev server, redis-server, dockerd, containerd, shims

    os.kill(dev_stack.worker_pid(), signal.SIGTERM)
    deadline = time.monotonic() + STOP_S
    while dev_stack.make.poll() is None:
        assert time.monotonic() < deadline, f"still running {STOP_S}s after SIGTERM:\n{dev_stack.output()}"
        time.sleep(0.1)
    out = dev_stack.output()
    assert dev_stack.make.returncode == 0, out  # make exits with the worker's status
    assert "Docker: stopped the private dockerd" in out and "Redis: stopped redis-server" in out, out
    wait_gone(stack_pids + engine_pids)  # (a SIGKILLed process may still be exiting)
    assert not [pid for pid in stack_pids + engine_pids if running(pid)], out
    assert not _pids_naming(str(dev_stack.clone)), out
    assert not port_answers(dev_stack.redis_port) and not port_answers(dev_stack.temporal_port), out
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert not [b for b in bridges if b in links], links

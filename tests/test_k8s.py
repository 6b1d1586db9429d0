"""deploy/k8s: the manifests validate against the Kubernetes schemas (offline, from the
kubernetes-validate package) and agree with the service: probe paths answer on a real
`bentoml serve`, ports match the image's, and the memory limit covers the server's RSS."""

from __future__ import annotations

import copy
from pathlib import Path

import httpx
import kubernetes_validate
import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30"
MANIFESTS = ["deployment.yaml", "service.yaml", "hpa.yaml"]


def load(name: str) -> dict:
    (doc,) = list(yaml.safe_load_all((K8S / name).read_text()))
    return doc


def quantity(value: str | int) -> float:
    """Kubernetes quantity -> number (bytes for memory, cores for cpu)."""
    value = str(value)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix in sorted(units, key=len, reverse=True):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * units[suffix]
    return float(value)


@pytest.fixture(scope="module")
def deployment() -> dict:
    return load("deployment.yaml")


@pytest.fixture(scope="module")
def container(deployment) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_matches_kubernetes_schema(name):
    doc = load(name)
    assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_schema_validation_rejects_a_broken_manifest():
    """The offline validator really checks: a typo'd field and a wrong type are refused."""
    doc = load("deployment.yaml")
    typo = copy.deepcopy(doc)
    typo["spec"]["template"]["spec"]["containers"][0]["readinessProb"] = typo["spec"]["template"]["spec"][
        "containers"][0].pop("readinessProbe")
    wrong_type = copy.deepcopy(doc)
    wrong_type["spec"]["replicas"] = "two"
    for bad in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_the_manifests_and_the_image(container):
    kustomization = load("kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(MANIFESTS)
    image_names = {image["name"] for image in kustomization["images"]}
    assert container["image"].rsplit(":", 1)[0] in image_names


def test_ports_match_the_image_and_the_service(deployment, container):
    (port,) = container["ports"]
    assert port["containerPort"] == 3000
    containerfile = (ROOT / "deploy" / "image" / "Containerfile").read_text()
    assert "EXPOSE 3000" in containerfile
    service = load("service.yaml")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"][
        "labels"].items()
    (svc_port,) = service["spec"]["ports"]
    assert svc_port["targetPort"] in (port["name"], port["containerPort"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in (port["name"], port["containerPort"])
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])


def test_hpa_scales_the_deployment_on_cpu(deployment, container):
    hpa = load("hpa.yaml")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"], deployment["kind"], deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert "cpu" in container["resources"]["requests"], "CPU utilization needs a CPU request"


def test_pod_runs_as_the_image_non_root_user(deployment, container):
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert f"USER {pod['securityContext']['runAsUser']}:" in (ROOT / "deploy" / "image" / "Containerfile").read_text()
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["terminationGracePeriodSeconds"] >= 30


@pytest.mark.slow
def test_probe_paths_answer_on_the_real_service(server, container):
    """startup/readiness/liveness paths and the scrape path answer 200 on a real `bentoml serve`."""
    paths = {container[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert paths == {"/readyz", "/livez"}
    for path in paths:
        assert httpx.get(f"{server.url}{path}", timeout=10).status_code == 200, path
    assert httpx.get(f"{server.url}/definitely-not-a-probe", timeout=10).status_code == 404


@pytest.mark.slow
def test_memory_limit_covers_the_serving_processes(server, container, sample_files):
    """Sum the RSS of the real server's processes after some predictions: request and limit cover it."""
    for path in sample_files:
        response = httpx.post(f"{server.url}/predict", files={"image": (path.name, path.read_bytes())}, timeout=60)
        assert response.status_code == 200, response.text
    root = psutil.Process(server.proc.pid)
    rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
    resources = container["resources"]
    assert quantity(resources["requests"]["memory"]) >= rss, f"RSS {rss / 2**20:.0f} MiB over the request"
    assert quantity(resources["limits"]["memory"]) >= 1.25 * rss
    assert quantity(resources["limits"]["memory"]) >= quantity(resources["requests"]["memory"])
    assert quantity(resources["limits"]["cpu"]) >= quantity(resources["requests"]["cpu"])

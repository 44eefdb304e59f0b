"""deploy/kubernetes: every manifest validates against Kubernetes' own schemas (offline:
the kubernetes-validate package ships them), and the pieces fit together: probes, ports,
labels, the rollout, the autoscaler's metric, and a command line both audiotext and vLLM
accept."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from audiotext.server.cli import parse_args
from audiotext.server.config import ServerConfig, config_from_args, to_vllm

FOLDER = Path(__file__).parents[2] / "deploy" / "kubernetes"
# Kubernetes releases whose schemas the manifests must satisfy: the oldest they need
# (preStop `sleep` came in 1.30) and the newest the package knows.
KUBERNETES = ("1.30.0", kubernetes_validate.utils.latest_version())
WAITING = "vllm:num_requests_waiting"
MANIFESTS = sorted(p for p in FOLDER.glob("*.yaml") if p.name != "kustomization.yaml")


def documents() -> dict[str, dict[str, Any]]:
    """Every manifest (not the kustomization) by kind."""
    docs = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


def pod(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return dict(docs["Deployment"]["spec"]["template"])


def server(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (container,) = pod(docs)["spec"]["containers"]
    return dict(container)


def served(container: dict[str, Any]) -> ServerConfig:
    """The configuration the container's command line gives `audiotext serve`."""
    assert container["command"] == ["audiotext", "serve"]
    args, passthrough = parse_args(["serve", *container["args"]])
    assert passthrough == []  # every flag is audiotext's own
    return config_from_args(args, environ={})


@pytest.mark.parametrize("version", KUBERNETES)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_the_kubernetes_schema(path: Path, version: str) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        # strict: a misspelt or misplaced field fails too
        kubernetes_validate.validate(doc, version, strict=True)


def test_kustomization_applies_every_manifest() -> None:
    kustomization = yaml.safe_load((FOLDER / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {p.name for p in MANIFESTS}
    (image,) = kustomization["images"]
    assert server(documents())["image"].split(":")[0] == image["name"]


def test_rollouts_are_surge_only_and_disruptions_keep_one_server() -> None:
    docs = documents()
    rolling = docs["Deployment"]["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1
    budget = docs["PodDisruptionBudget"]["spec"]
    assert budget["minAvailable"] >= 1
    # A drain can always proceed: more replicas than the budget keeps.
    assert docs["HorizontalPodAutoscaler"]["spec"]["minReplicas"] > budget["minAvailable"]


def test_probes_ask_health_on_the_served_port_and_wait_for_model_load() -> None:
    container = server(documents())
    config = served(container)
    (port,) = container["ports"]
    assert port["containerPort"] == config.port and config.host == "0.0.0.0"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"]) == ("/health", port["name"])
    startup = container["startupProbe"]
    # Downloading 16 GB of weights, loading them and compiling: 30 minutes, not seconds.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30 * 60
    ready = container["readinessProbe"]
    assert ready["periodSeconds"] * ready["failureThreshold"] <= 15  # out of rotation fast


def test_shutdown_leaves_room_for_the_drain() -> None:
    docs = documents()
    container = server(docs)
    grace = pod(docs)["spec"]["terminationGracePeriodSeconds"]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop + served(container).drain_timeout_s < grace


def test_the_7b_model_gets_a_gpu_and_shared_memory() -> None:
    docs = documents()
    container = server(docs)
    config = served(container)
    assert config.model == "Qwen/Qwen2-Audio-7B-Instruct" and config.resolved_device == "cuda"
    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"
    volumes = {v["name"]: v for v in pod(docs)["spec"]["volumes"]}
    shm = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
    assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory"


def test_vllm_accepts_the_command_line() -> None:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    argv = list(to_vllm(served(server(documents()))).argv)
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    assert args.model == "Qwen/Qwen2-Audio-7B-Instruct"
    assert args.gpu_memory_utilization == 0.9


def test_service_and_budget_select_the_servers() -> None:
    docs = documents()
    labels = pod(docs)["metadata"]["labels"]
    service = docs["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["ports"]} == {"http"}
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_autoscaler_scales_the_deployment_on_the_engine_queue() -> None:
    docs = documents()
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    deployment = docs["Deployment"]["metadata"]["name"]
    assert (hpa["scaleTargetRef"]["kind"], hpa["scaleTargetRef"]["name"]) == (
        "Deployment",
        deployment,
    )
    (metric,) = hpa["metrics"]
    # The adapter's rule turns vLLM's series into the metric the autoscaler reads.
    (rule,) = yaml.safe_load(docs["ConfigMap"]["data"]["config.yaml"])["rules"]
    assert rule["seriesQuery"].startswith(WAITING + "{")
    as_python = re.sub(r"\$\{(\d+)\}", r"\\\1", rule["name"]["as"])
    assert re.sub(rule["name"]["matches"], as_python, WAITING) == metric["pods"]["metric"]["name"]

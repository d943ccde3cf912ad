"""deploy/k8s: every built-in object valid for Kubernetes (kubernetes-validate's bundled schemas, strict, so
a misspelt field fails), KEDA's objects against keda-schema.json, and the references between the objects,
to the API's routes and to the CLI's commands resolved."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer
from jsonschema import Draft7Validator

from kinema.api.routes import router
from kinema.apps.registry import APPS
from kinema.cli.main import app as cli
from kinema.settings import Settings
from tests.deploy.files import K8S, PENDING_COMMANDS, k8s_files, k8s_objects, yaml_documents

# The oldest Kubernetes the manifests promise to work on, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
KEDA_SCHEMA = Path(__file__).with_name("keda-schema.json")
# Files applied on their own (docs/deploy.md says when), not by `kubectl apply -k deploy/k8s`.
APPLIED_SEPARATELY = {
    "secret.example.yaml",
    "ingress.yaml",
    "pull-weights-job.yaml",
    "keda/scaledobject.yaml",
    "keda/scaledobject-prometheus.yaml",
}


def objects_of(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in k8s_objects() if doc["kind"] == kind}


def is_keda(doc: dict[str, Any]) -> bool:
    return str(doc["apiVersion"]).startswith("keda.sh/")


def pod_specs() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(owner name, pod template metadata, pod spec) of every Deployment and Job."""
    return [
        (doc["metadata"]["name"], doc["spec"]["template"]["metadata"], doc["spec"]["template"]["spec"])
        for _, doc in k8s_objects()
        if doc["kind"] in ("Deployment", "Job")
    ]


def kustomization() -> dict[str, Any]:
    (doc,) = yaml_documents(K8S / "kustomization.yaml")
    return doc


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_built_in_objects_are_valid_kubernetes(version: str) -> None:
    checked = 0
    for path, doc in k8s_objects():
        if is_keda(doc):
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.relative_to(K8S)}: {doc['kind']} {doc['metadata']['name']}: {exc.message}")
        checked += 1
    assert checked >= 10


def test_keda_objects_follow_the_keda_schema() -> None:
    validator = Draft7Validator(json.loads(KEDA_SCHEMA.read_text()))
    keda = [(path, doc) for path, doc in k8s_objects() if is_keda(doc)]
    assert {doc["kind"] for _, doc in keda} == {"ScaledObject", "TriggerAuthentication"}
    for path, doc in keda:
        errors = [e.message for e in validator.iter_errors(doc)]
        assert errors == [], f"{path.relative_to(K8S)}: {errors}"


def test_keda_scaling_behaviour_is_a_valid_hpa_behaviour() -> None:
    """KEDA hands advanced.horizontalPodAutoscalerConfig.behavior to the HPA it creates: check it as one."""
    for path, doc in k8s_objects():
        if doc["kind"] != "ScaledObject":
            continue
        spec = doc["spec"]
        assert 0 <= spec["minReplicaCount"] <= 1 < spec["maxReplicaCount"], path
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "keda-hpa", "namespace": "kinema"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
                "minReplicas": 1,
                "maxReplicas": spec["maxReplicaCount"],
                "behavior": spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
            },
        }
        kubernetes_validate.validate(hpa, KUBERNETES_VERSIONS[-1], strict=True)


def test_autoscaling_counts_queued_and_running_tasks_of_gpu_apps() -> None:
    (postgres,) = yaml_documents(K8S / "keda" / "scaledobject.yaml")[1]["spec"]["triggers"]
    query = " ".join(postgres["metadata"]["query"].split())
    assert "FROM tasks" in query and "'queued'" in query and "'running'" in query
    assert "app NOT LIKE 'google/%'" in query
    (prometheus,) = yaml_documents(K8S / "keda" / "scaledobject-prometheus.yaml")[0]["spec"]["triggers"]
    assert "kinema_queue_depth" in prometheus["metadata"]["query"]
    assert "kinema_tasks_running" in prometheus["metadata"]["query"]  # per app, so google/* is left out


def test_kustomization_applies_every_manifest_but_the_separate_ones() -> None:
    doc = kustomization()
    resources = set(doc["resources"])
    assert all((K8S / name).is_file() for name in resources)
    files = {str(path.relative_to(K8S)) for path in k8s_files()} - {"kustomization.yaml"}
    assert files - resources == APPLIED_SEPARATELY
    images = {c["image"] for name in resources for d in yaml_documents(K8S / name) for c in containers(d)}
    assert images == {image["name"] for image in doc["images"]}


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] in ("Deployment", "Job"):
        return list(doc["spec"]["template"]["spec"]["containers"])
    return []


def test_namespaced_objects_are_in_the_kinema_namespace() -> None:
    for path, doc in k8s_objects():
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "kinema", path
    assert kustomization()["namespace"] == "kinema"


def test_selectors_services_and_ingress_find_their_pods() -> None:
    deployments = objects_of("Deployment")
    for name, doc in deployments.items():
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
    for name, service in objects_of("Service").items():
        matches = [
            d
            for d in deployments.values()
            if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matches) == 1, f"Service {name} selects {len(matches)} Deployments"
        ports = {p["name"] for c in containers(matches[0]) for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    for pdb in objects_of("PodDisruptionBudget").values():
        assert any(
            pdb["spec"]["selector"]["matchLabels"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
            for d in deployments.values()
        )
    services = objects_of("Service")
    for ingress in objects_of("Ingress").values():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                ports = {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
                assert backend["port"]["name"] in ports


def test_pods_refer_to_config_secrets_and_claims_that_exist() -> None:
    config_maps, secrets, claims = (
        objects_of("ConfigMap"),
        objects_of("Secret"),
        objects_of("PersistentVolumeClaim"),
    )
    for owner, _, spec in pod_specs():
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps, owner
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, owner
            mounts = {m["name"] for m in container.get("volumeMounts", [])}
            assert mounts <= {v["name"] for v in spec.get("volumes", [])}, owner
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, owner
    for claim in claims.values():
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "API and workers on many nodes share it"


def test_scaled_objects_target_the_worker_and_their_authentication_exists() -> None:
    deployments, auths, secrets = (
        objects_of("Deployment"),
        objects_of("TriggerAuthentication"),
        objects_of("Secret"),
    )
    for path, doc in k8s_objects():
        if doc["kind"] == "ScaledObject":
            assert doc["spec"]["scaleTargetRef"]["name"] == "kinema-worker" in deployments, path
            for trigger in doc["spec"]["triggers"]:
                if "authenticationRef" in trigger:
                    assert trigger["authenticationRef"]["name"] in auths, path
    for auth in auths.values():
        for ref in auth["spec"].get("secretTargetRef", []):
            assert ref["key"] in secrets[ref["name"]]["stringData"]


def test_gpu_workers_ask_for_one_gpu_each() -> None:
    worker = objects_of("Deployment")["kinema-worker"]["spec"]["template"]["spec"]
    (container,) = worker["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["command"] == ["kinema", "worker", "--gpus", "all"]
    assert any(t["key"] == "nvidia.com/gpu" for t in worker["tolerations"])
    assert {"mountPath": "/models", "name": "hf-cache"} in container["volumeMounts"]


def test_probes_name_real_routes() -> None:
    routes = {getattr(route, "path", None) for route in router.routes}
    for owner, _, spec in pod_specs():
        for container in spec["containers"]:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in container:
                    assert container[probe]["httpGet"]["path"] in routes, f"{owner} {probe}"


def command_exists(words: list[str]) -> bool:
    """Whether `kinema WORDS...` names a command of the CLI (options and arguments after it ignored)."""
    command: Any = typer.main.get_command(cli)
    path: list[str] = []
    for word in words:
        if not hasattr(command, "commands") or word.startswith("-"):  # a leaf command: the rest is its input
            break
        sub = command.commands.get(word)
        if sub is None:
            return tuple([*path, word]) in PENDING_COMMANDS
        command, path = sub, [*path, word]
    return bool(path)


def test_containers_run_real_kinema_commands_and_apps() -> None:
    assert command_exists(["serve"]) and not command_exists(["serv"])
    for owner, _, spec in pod_specs():
        for container in spec["containers"]:
            command = container.get("command")
            if command:
                assert command[0] == "kinema" and command_exists(command[1:]), owner
                assert all(word in APPS for word in command if "/" in word), owner


def test_config_and_secret_example_give_settings_kinema_accepts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = {
        **objects_of("ConfigMap")["kinema-config"]["data"],
        **objects_of("Secret")["kinema-secrets"]["stringData"],
    }
    for _, _, spec in pod_specs():
        for container in spec["containers"]:
            env.update({item["name"]: item["value"] for item in container.get("env", [])})
    for key in list(os.environ):
        if key.startswith("KINEMA_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.database.startswith("postgresql+psycopg://")
    assert settings.local_workers == 0  # the API pods' env

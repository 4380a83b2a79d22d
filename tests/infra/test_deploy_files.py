"""The deployment files under infra/ parse and hold what a security review checks first.

No Docker daemon, compose plugin or cluster is assumed here: the files are parsed as YAML (and
the Dockerfile as text) and checked for pinned images, secrets only by reference, non-root
users, resource limits and health checks, and for references to files that exist.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

# Module-scoped fixtures are made once: keep this module in one xdist worker.
pytestmark = pytest.mark.xdist_group("deploy-files")

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE = INFRA / "compose"
K8S = INFRA / "k8s"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|HMAC_KEYS|DATABASE_URL|CONNECTIONS__|AUTH_STRING", re.I)
PLACEHOLDER = re.compile(r"change-me")


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def pinned(image: str) -> bool:
    """A tag that names a version (or a digest), never latest or nothing."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return (
        bool(name)
        and "/" not in tag
        and tag not in ("", "latest")
        and any(c.isdigit() for c in tag)
    )


def test_every_yaml_file_under_infra_parses() -> None:
    files = sorted([*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml")])
    assert len(files) >= 8, files
    for path in files:
        assert load_all(path), f"{path} is empty"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    (doc,) = load_all(COMPOSE / "compose.yaml")
    assert isinstance(doc, dict)
    return doc


def test_compose_has_the_four_services_pinned_and_health_checked(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "seaweedfs", "prefect-server", "custody-init", "worker"}
    for name, service in services.items():
        assert pinned(service["image"].replace("${CUSTODY_IMAGE:-", "").rstrip("}")), name
        if name != "custody-init":  # a one-shot job: the worker waits for it to succeed
            assert service["healthcheck"]["test"], name
    for name in ("prefect-server", "custody-init", "worker"):
        build = services[name]["build"]
        assert (COMPOSE / build["context"] / build["dockerfile"]).resolve() == (
            INFRA / "docker" / "Dockerfile"
        )
    worker = services["worker"]
    assert worker["depends_on"]["custody-init"]["condition"] == "service_completed_successfully"
    assert worker["read_only"] is True and worker["cap_drop"] == ["ALL"]
    for volume in services["postgres"]["volumes"]:
        host = volume.split(":")[0]
        if host.startswith("."):
            assert (COMPOSE / host).exists(), volume
    assert (COMPOSE / "postgres-init" / "10-custody.sh").stat().st_mode & 0o111
    for port in [p for s in services.values() for p in s.get("ports", [])]:
        assert port.startswith("127.0.0.1:"), f"{port}: publish on loopback only"


def test_compose_secrets_come_only_from_the_env_file(compose: dict[str, Any]) -> None:
    example = (COMPOSE / ".env.example").read_text()
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", (COMPOSE / "compose.yaml").read_text()))
    assert required, "secrets must be required variables (${NAME:?message})"
    for name in required:
        line = re.search(rf"^{name}=(.*)$", example, re.M)
        assert line, f"{name} is missing from .env.example"
        if SECRET_NAME.search(name) or name.endswith(("_KEY", "_KEYS")):
            assert PLACEHOLDER.search(line.group(1)), f"{name} in .env.example is not a placeholder"
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key) or key.endswith("SECRET_ACCESS_KEY"):
                assert "${" in str(value), f"{name}: {key} is written inline"
    env = compose["services"]["worker"]["environment"]
    assert "custody_ingest:" in env["CUSTODY_DATABASE_URL"]  # least privilege for pipelines
    assert (
        "custody_owner:"
        in compose["services"]["custody-init"]["environment"]["CUSTODY_DATABASE_URL"]
    )


def test_dockerfile_pins_its_base_installs_the_constraints_and_drops_root() -> None:
    text = (INFRA / "docker" / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and pinned(base.group(1))
    assert "-c infra/dev/constraints.txt '.[mysql]'" in text  # MySQL/MariaDB sources migrate
    assert "libmariadb-dev" in text and "libmariadb3" in text  # built, then its runtime library
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root")
    for source in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
    assert '"custody", "worker"' in text.splitlines()[-1]  # the hardened worker (issue 15 item 1)


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    docs = [doc for path in sorted(K8S.glob("*.yaml")) for doc in load_all(path)]
    return {f"{d['kind']}/{d.get('metadata', {}).get('name', '')}": d for d in docs}


def test_k8s_worker_is_non_root_limited_and_reads_secrets_from_a_secret(
    k8s: dict[str, dict[str, Any]],
) -> None:
    deployment = k8s["Deployment/custody-worker"]
    pod = deployment["spec"]["template"]["spec"]
    assert f"ServiceAccount/{pod['serviceAccountName']}" in k8s
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"]
    (container,) = pod["containers"]
    assert pinned(container["image"])
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert container["livenessProbe"]
    sources = {next(iter(s)): next(iter(s.values()))["name"] for s in container["envFrom"]}
    assert sources["secretRef"] == "custody-worker"
    assert f"ConfigMap/{sources['configMapRef']}" in k8s
    for var in container.get("env", []):
        assert not SECRET_NAME.search(var["name"]), f"{var['name']} must come from the Secret"
    for key in k8s[f"ConfigMap/{sources['configMapRef']}"]["data"]:
        assert not SECRET_NAME.search(key), f"{key} belongs in the Secret, not the ConfigMap"
    assert not [k for k in k8s if k.startswith("Secret/")], "no Secret with values in the repo"
    example = (K8S / "secret.env.example").read_text()
    for line in re.findall(r"^[A-Z].*$", example, re.M):
        name, value = line.split("=", 1)
        if SECRET_NAME.search(name):
            assert PLACEHOLDER.search(value), f"{name} in secret.env.example is not a placeholder"


def test_kustomization_lists_every_manifest(k8s: dict[str, dict[str, Any]]) -> None:
    (kustomization,) = load_all(K8S / "kustomization.yaml")
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests
    (image,) = kustomization["images"]
    assert (
        image["name"]
        == k8s["Deployment/custody-worker"]["spec"]["template"]["spec"]["containers"][0][
            "image"
        ].split(":")[0]
    )


def test_issue_15_item_1_the_api_needs_a_password_and_workers_are_hardened(
    compose: dict[str, Any], k8s: dict[str, dict[str, Any]]
) -> None:
    """Issue 15 item 1: the shipped server asks for auth; the shipped workers are `custody worker`.

    Every client of the API (setup, worker) carries the same auth string the server requires.
    """
    services = compose["services"]
    server = services["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"]
    assert server.startswith("${PREFECT_API_AUTH_STRING:?")
    for name in ("custody-init", "worker"):
        assert services[name]["environment"]["PREFECT_API_AUTH_STRING"] == server, name
    assert services["worker"]["command"][:2] == ["custody", "worker"]
    (container,) = k8s["Deployment/custody-worker"]["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["custody", "worker"]
    assert re.search(r"^PREFECT_API_AUTH_STRING=", (K8S / "secret.env.example").read_text(), re.M)

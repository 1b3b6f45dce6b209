"""infra/ without a Docker engine: the compose file, its env template and the Kubernetes job template parse,
reference only what they define, take every secret from the environment with no default, and turn auth on.
The PostgreSQL init script runs for real against a throw-away server. The serve replicas' manifest
(Deployment, Service, HorizontalPodAutoscaler) is checked against the real CLI parser."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"
COMPOSE = INFRA / "docker-compose.yml"
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}; $$ escapes compose interpolation
_REF = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
_SECRET = re.compile(r"PASSWORD|SECRET|AUTH_STRING|ACCESS_KEY|ROOT_USER")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def env_example() -> dict[str, str]:
    pairs = {}
    for line in (INFRA / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def references(text: str) -> list[tuple[str, str, str]]:
    """(name, operator, default-or-message) of every compose interpolation (comments left out)."""
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    return [(m.group(1), m.group(2) or "", m.group(3) or "") for m in _REF.finditer(text)]


def test_every_variable_is_listed_in_env_example_and_secrets_are_required():
    refs = references(COMPOSE.read_text())
    example = env_example()
    assert refs, "the compose file takes its settings from the environment"
    for name, op, _ in refs:
        assert name in example, (
            f"${{{name}}} is used in docker-compose.yml but missing from infra/.env.example"
        )
        if _SECRET.search(name):
            assert op == ":?", f"secret ${{{name}}} must be required (${{{name}:?...}}), never defaulted"
            assert example[name] == "", f"infra/.env.example must not hold a value for the secret {name}"
    unused = set(example) - {name for name, _, _ in refs}
    assert not unused, f"infra/.env.example lists variables the compose file never uses: {sorted(unused)}"


def test_no_literal_secret_anywhere_in_the_services(compose: dict):
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        assert isinstance(env, dict), f"{name}: environment as a mapping, so it can be checked"
        for key, value in env.items():
            if _SECRET.search(key):
                assert isinstance(value, str) and re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", value), (
                    f"{name}.{key} must come from a required variable, not {value!r}"
                )
        # no credentials written into commands or URLs: only variables ($VAR) or a printf slot (%s) filled
        # from one
        text = json.dumps(service)
        assert not re.search(r"://[^:/@\s\"]+:(?![$%])[^@\s\"]+@", text), (
            f"{name}: literal credentials in a URL"
        )


def test_services_volumes_and_networks_are_defined(compose: dict):
    services, volumes, networks = compose["services"], compose.get("volumes", {}), compose.get("networks", {})
    expected = {"postgres", "minio", "minio-init", "mlflow", "prefect", "prefect-worker", "serve"}
    assert expected <= set(services)
    used_volumes, used_networks = set(), set()
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on undefined service {dep}"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):  # bind mount: the file must exist in the repo
                assert (INFRA / source).exists(), f"{name} mounts missing {source}"
            else:
                used_volumes.add(source)
        used_networks.update(service.get("networks", []))
        build = service.get("build")
        if build:
            assert (INFRA / build["context"] / build["dockerfile"]).is_file(), f"{name}: no Dockerfile"
    assert used_volumes <= set(volumes), used_volumes - set(volumes)
    assert used_networks <= set(networks), used_networks - set(networks)


def test_auth_is_on_and_each_service_has_its_own_database(compose: dict):
    s = compose["services"]
    mlflow = " ".join(s["mlflow"]["entrypoint"])
    assert "--app-name basic-auth" in mlflow and "--allowed-hosts" in mlflow
    assert {"MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"} <= set(s["mlflow"]["environment"])
    assert "PREFECT_SERVER_API_AUTH_STRING" in s["prefect"]["environment"]
    assert "PREFECT_API_AUTH_STRING" in s["prefect-worker"]["environment"]
    for client in ("prefect-worker", "serve"):
        assert s[client]["environment"]["MLFLOW_TRACKING_PASSWORD"].startswith(
            "${MLFLOW_AUTH_ADMIN_PASSWORD:?"
        )
    databases = {
        "mlflow": re.search(r"@postgres:5432/(\w+)\"", mlflow).group(1),
        "mlflow-auth": re.search(r"@postgres:5432/(\w+)\\n", mlflow).group(1),
        "prefect": s["prefect"]["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"].rsplit("/", 1)[1],
    }
    assert len(set(databases.values())) == 3, databases
    script = (INFRA / "postgres" / "init-databases.sh").read_text()
    for db in databases.values():
        assert f"CREATE DATABASE {db} " in script
    assert "serve" in s["serve"]["command"] and "--host 0.0.0.0" in s["serve"]["command"]


def test_the_init_script_creates_the_databases_on_a_real_postgres(tmp_path: Path):
    from tests import pgserver

    assert subprocess.run(["bash", "-n", str(INFRA / "postgres" / "init-databases.sh")]).returncode == 0
    server = pgserver.start()
    try:
        env = {**os.environ, "POSTGRES_USER": "postgres", "PGHOST": "127.0.0.1", "PGPORT": str(server.port),
               "MLFLOW_DB_PASSWORD": "test-only-1", "PREFECT_DB_PASSWORD": "test-only-2"}  # fmt: skip
        env["PATH"] = f"{server.bindir}{os.pathsep}{env['PATH']}"
        result = subprocess.run(
            ["bash", str(INFRA / "postgres" / "init-databases.sh")], env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        import psycopg

        with psycopg.connect(server.uri("postgres")) as conn:
            query = "SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE NOT datistemplate"
            owners = dict(conn.execute(query).fetchall())
        assert owners == {
            "postgres": "postgres",
            "mlflow": "mlflow",
            "mlflow_auth": "mlflow",
            "prefect": "prefect",
        }
        # a missing password stops the script instead of creating a role without one
        del env["PREFECT_DB_PASSWORD"]
        result = subprocess.run(
            ["bash", str(INFRA / "postgres" / "init-databases.sh")], env=env, capture_output=True, text=True
        )
        assert result.returncode != 0 and "PREFECT_DB_PASSWORD" in result.stderr
    finally:
        server.stop()


def test_kubernetes_job_template_targets_gpu_nodes_and_declares_its_variables():
    template = json.loads((INFRA / "k8s" / "gpu-training-job-template.json").read_text())
    config, variables = template["job_configuration"], template["variables"]["properties"]
    placeholders = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(config)))
    assert placeholders <= set(variables), placeholders - set(variables)
    pod = config["job_manifest"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == "{{ node_selector }}" and variables["node_selector"]["default"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    assert variables["gpus"]["default"] >= 1
    # secrets reach the job from a Kubernetes Secret, never from the template
    assert container["envFrom"] == [{"secretRef": {"name": "{{ secret_name }}"}}]
    assert not any(_SECRET.search(k) for k in variables if k != "secret_name")


# -- serve replicas on Kubernetes ------------------------------------------------------------------------
SERVE_MANIFEST = INFRA / "k8s" / "serve.yaml"


@pytest.fixture(scope="module")
def serve_manifest() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(SERVE_MANIFEST.read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), "one object of each kind"
    return by_kind


def test_serve_replicas_have_a_deployment_service_and_autoscaler(serve_manifest: dict[str, dict]):
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(serve_manifest)
    deployment, service = serve_manifest["Deployment"], serve_manifest["Service"]
    hpa, pdb = serve_manifest["HorizontalPodAutoscaler"], serve_manifest["PodDisruptionBudget"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items(), "the Deployment selects its own pods"
    assert service["spec"]["selector"].items() <= pod_labels.items(), "the Service reaches the serve pods"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"], "Deployment", deployment["metadata"]["name"],
    )  # fmt: skip
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a drain can always proceed"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    # CPU utilisation is measured against the request: without one the autoscaler cannot scale on CPU
    assert container["resources"]["requests"]["cpu"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in ports


def test_serve_replicas_are_ready_only_with_a_verified_model_and_run_the_real_command(
    serve_manifest: dict[str, dict],
):
    from flows.cli import _parser

    (container,) = serve_manifest["Deployment"]["spec"]["template"]["spec"]["containers"]
    readiness = container["readinessProbe"]["httpGet"]
    assert readiness["path"] == "/health"  # 200 only once a verified model serves (docs/serving.md)
    assert "httpGet" not in container["livenessProbe"], "liveness must not restart a replica awaiting a model"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert readiness["port"] in ports and container["livenessProbe"]["tcpSocket"]["port"] in ports
    assert container["args"][0] == "transferline"
    args = _parser().parse_args(container["args"][1:])  # the CLI itself accepts these flags
    assert args.command == "serve" and args.host == "0.0.0.0" and args.port == ports["http"]
    assert args.batch_window_ms > 0 and args.batch_requests > 1  # dynamic batching is on
    env = {e["name"]: e for e in container["env"]}
    # torch's thread pool matches the CPU limit, so replicas sharing a node do not oversubscribe it
    assert env["OMP_NUM_THREADS"]["value"] == str(container["resources"]["limits"]["cpu"])
    for name, entry in env.items():
        if _SECRET.search(name):
            assert "value" not in entry and entry["valueFrom"]["secretKeyRef"], f"{name}: from a Secret"
    security = serve_manifest["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert f"--uid {security['runAsUser']}" in (INFRA / "Dockerfile").read_text()

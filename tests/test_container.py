"""Container deploys: ``nbprod containerize`` and the manifests in ``deployments/``.

The unit tests (no Docker needed) cover resolving the bento from the run store, choosing a docker
client, the one-line errors, and the deployment manifests.

The integration test builds a real image of a real bento and serves predictions from it. It needs a
Docker daemon and a usable Python base image, so it runs only when ``NBPROD_CONTAINER_TESTS=1``:
CI sets that after ``.ci/setup-docker`` has installed and started Docker and built the base image,
and there a missing or broken Docker FAILS the test. Without the variable (``make test`` on a
laptop without Docker) it is reported as skipped with that reason, never as passed.

Isolation as in test_packaging: BentoML fixes its store at first import, so the bento is built by
running this file as a script in a subprocess with its own ``BENTOML_HOME`` and run store.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from bento_scripts import isolated_bentoml_env, run_script

from flows import container
from flows.bento_server import free_port
from flows.errors import ContainerizeError
from flows.run_records import new_version_id
from flows.serving import post_json
from flows.store import RunStore

REPO = Path(__file__).resolve().parents[1]
CONTAINER_TESTS_ENV = "NBPROD_CONTAINER_TESTS"
BUILD_TIMEOUT_S = 1200.0  # first build downloads uv, build tools and the wheels
READY_DEADLINE_S = 120.0
# What the `nbprod` console script runs (pyproject: nbprod = "flows.cli:entrypoint").
NBPROD = "from flows.cli import entrypoint; entrypoint()"
PIPELINE = "churn"


# --- unit tests: no Docker ------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbprod")
    container.register_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def _store_with(
    tmp_path: Path, *records: dict[str, Any], champion: int | None = None, pipeline: str = "churn"
) -> RunStore:
    store = RunStore(tmp_path / "runs")
    finals = []
    for record in records:
        version = new_version_id()
        store.begin(version)
        finals.append(store.finalize(version, {"pipeline": pipeline, **record}))
    if champion is not None:
        store.set_champion(
            pipeline, finals[champion], expected=None, reason="test", triggered_by="test"
        )
    return store


def test_register_commands_parses_version_tag_pipeline_and_store() -> None:
    args = _parser().parse_args(["containerize"])
    assert (args.version, args.image_tag, args.pipeline, args.store) == (None, None, None, None)
    assert args.func is container.cmd_containerize
    args = _parser().parse_args(
        ["containerize", "v1", "-t", "reg/x:v1", "--pipeline", "churn", "--store", "memory://s"]
    )
    assert (args.version, args.image_tag, args.pipeline, args.store) == (
        "v1",
        "reg/x:v1",
        "churn",
        "memory://s",
    )


def test_module_import_stays_light() -> None:
    """``nbprod --help`` imports this module: nothing heavy may come with it."""
    code = (
        "import sys, flows.container\n"
        "print([m for m in ('bentoml', 'prefect', 'yaml', 'pydantic', 'fsspec') "
        "if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "[]"


def test_cli_reports_no_champion_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main

    argv = ["containerize", "--pipeline", "churn", "--store", str(tmp_path / "runs")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "pipeline 'churn' has no champion" in err and "nbprod run" in err


def test_champion_and_accepted_runs_resolve_to_their_exact_bento(tmp_path: Path) -> None:
    accepted = {"status": "accepted", "bento_tag": "churn:v1", "model_tag": "m:a"}
    store = _store_with(tmp_path, accepted, {"status": "rejected"}, champion=0)
    champion_version = store.champion("churn")["version"]
    assert container.resolve_bento_tag(store, None, "churn") == (
        champion_version,
        "churn:v1",
        f"champion of churn {champion_version}",
    )
    assert container.resolve_bento_tag(store, champion_version, "churn")[1] == "churn:v1"
    # Each pipeline has its own champion: another pipeline has none yet.
    with pytest.raises(ContainerizeError, match="pipeline 'price' has no champion"):
        container.resolve_bento_tag(store, None, "price")


def test_unaccepted_or_unknown_runs_are_refused(tmp_path: Path) -> None:
    store = _store_with(tmp_path, {"status": "rejected"}, {"status": "accepted"})
    by_status = {r["status"]: r["version"] for r in store.list_runs()}
    rejected, no_bento = by_status["rejected"], by_status["accepted"]
    with pytest.raises(ContainerizeError, match=f"run {rejected} is rejected, not accepted"):
        container.resolve_bento_tag(store, rejected, "churn")
    with pytest.raises(ContainerizeError, match="no exact bento tag"):
        container.resolve_bento_tag(store, no_bento, "churn")
    with pytest.raises(Exception, match="v-missing"):  # RunStoreError, with recent versions
        container.resolve_bento_tag(store, "v-missing", "churn")


def test_bento_missing_from_the_store_names_bentoml_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"BENTOML_HOME": str(tmp_path / "bentoml")}
    with pytest.raises(ContainerizeError, match="BENTOML_HOME"):
        container.bento_path("churn:v1", env)
    bento = tmp_path / "bentoml" / "bentos" / "churn" / "v1"
    bento.mkdir(parents=True)
    (bento / "bento.yaml").write_text("image:\n  base_image: python:3.11-slim\n")
    assert container.bento_path("churn:v1", env) == bento
    assert container.base_image_of(bento) == "python:3.11-slim"
    # Without BENTOML_HOME: the project's store, whatever started nbprod.
    monkeypatch.setenv("NBPROD_HOME", str(tmp_path / "home"))
    assert container.bentoml_home({}) == tmp_path / "home" / "bentoml"


def _executable(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def _fake_docker(
    path: Path, *, version: str, buildx: bool, daemon_error: str = "", images: tuple[str, ...] = ()
) -> str:
    """A stand-in docker CLI: --version, buildx version, version --format, image inspect."""
    daemon = f'echo "{daemon_error}" >&2; exit 1' if daemon_error else 'echo "20.10.24"; exit 0'
    known = " ".join(f'"{image}"' for image in images)
    return _executable(
        path,
        "#!/bin/sh\n"
        f'if [ "$1" = "--version" ]; then echo "Docker version {version}, build x"; exit 0; fi\n'
        f'if [ "$1" = "buildx" ]; then exit {0 if buildx else 1}; fi\n'
        f'if [ "$1" = "version" ]; then {daemon}; fi\n'
        'if [ "$1" = "image" ]; then eval "last=\\${$#}"\n'
        f'  for known in {known}; do [ "$known" = "$last" ] && echo sha256:0123 && exit 0; done\n'
        "  exit 1\nfi\n"
        "exit 2\n",
    )


def test_docker_client_choice_prefers_buildkit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new_without_buildx = _fake_docker(tmp_path / "a" / "docker", version="28.2.2", buildx=False)
    old_builtin = _fake_docker(tmp_path / "b" / "docker", version="20.10.24", buildx=False)
    monkeypatch.setattr(container, "FALLBACK_CLIENTS", (old_builtin,))
    env = {"PATH": str(tmp_path / "a")}
    chosen = container.find_docker_client(env)
    assert (chosen.path, chosen.buildkit) == (old_builtin, True)

    monkeypatch.setattr(container, "FALLBACK_CLIENTS", ())
    chosen = container.find_docker_client(env)
    assert (chosen.path, chosen.buildkit) == (new_without_buildx, False)
    with container.builder_env(chosen) as build_env:
        assert build_env["DOCKER_BUILDKIT"] == "0"  # legacy builder rather than a buildx error
        first = build_env["PATH"].split(os.pathsep)[0]
        assert os.path.realpath(os.path.join(first, "docker")) == new_without_buildx

    with_buildx = _fake_docker(tmp_path / "c" / "docker", version="28.2.2", buildx=True)
    chosen = container.find_docker_client({"PATH": str(tmp_path / "c")})
    assert (chosen.path, chosen.buildkit) == (with_buildx, True)
    chosen = container.find_docker_client({"PATH": "", container.DOCKER_ENV_VAR: old_builtin})
    assert chosen.path == old_builtin


def test_no_docker_and_no_daemon_are_one_line_errors_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(container, "FALLBACK_CLIENTS", ())
    with pytest.raises(ContainerizeError, match="docker is not installed") as missing:
        container.find_docker_client({"PATH": str(tmp_path)})
    assert "setup-docker" in str(missing.value)

    no_daemon = _fake_docker(
        tmp_path / "d" / "docker",
        version="20.10.24",
        buildx=False,
        daemon_error="Cannot connect to the Docker daemon at unix:///var/run/docker.sock.",
    )
    client = container.DockerClient(path=no_daemon, version="20.10.24", buildkit=True)
    with pytest.raises(ContainerizeError) as down:
        container.check_daemon(client)
    message = str(down.value)
    assert "\n" not in message
    assert "cannot reach the Docker daemon" in message and "start it" in message


def test_failed_builds_are_one_line_errors_naming_the_fix(tmp_path: Path) -> None:
    """A base image that could not be pulled points at the offline builder; else the log's error."""
    failing_bentoml = _executable(
        tmp_path / "bentoml",
        "#!/bin/sh\necho '#4 [base-container 1/12] FROM docker.io/library/python:3.11-slim'\n"
        "echo 'ERROR: failed to solve: python:3.11-slim: pull access denied'\necho done\nexit 1\n",
    )
    bare = _fake_docker(tmp_path / "bare" / "docker", version="20.10.24", buildx=False)
    client = container.DockerClient(path=bare, version="20.10.24", buildkit=True)
    with pytest.raises(ContainerizeError) as no_base:
        container.build_image(
            client, "b:v1", "b:v1", base_image="python:3.11-slim", bentoml_command=[failing_bentoml]
        )
    message = str(no_base.value)
    assert "\n" not in message
    assert "python:3.11-slim is not available locally" in message and "setup-docker" in message

    has_base = _fake_docker(
        tmp_path / "base" / "docker", version="20.10.24", buildx=False, images=("python:3.11-slim",)
    )
    client = container.DockerClient(path=has_base, version="20.10.24", buildkit=True)
    with pytest.raises(ContainerizeError, match="failed \\(exit 1\\): ERROR: failed to solve"):
        container.build_image(
            client, "b:v1", "b:v1", base_image="python:3.11-slim", bentoml_command=[failing_bentoml]
        )


def test_kubernetes_manifest_probes_port_and_resources() -> None:
    docs = list(yaml.safe_load_all((REPO / container.K8S_MANIFEST).read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    service = next(d for d in docs if d["kind"] == "Service")
    pod = deployment["spec"]["template"]
    (bento,) = pod["spec"]["containers"]
    assert bento["image"] == container.K8S_IMAGE_PLACEHOLDER  # what `nbprod containerize` seds
    assert {"name": "http", "containerPort": 3000, "protocol": "TCP"} in bento["ports"]
    assert bento["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert bento["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert bento["startupProbe"]["httpGet"]["path"] == "/readyz"
    for kind in ("requests", "limits"):
        assert set(bento["resources"][kind]) == {"cpu", "memory"}
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"] == selector
    assert service["spec"]["ports"][0]["port"] == 3000


def test_compose_file_publishes_on_loopback_only() -> None:
    compose = yaml.safe_load((REPO / container.COMPOSE_FILE).read_text())
    services = compose["services"]
    assert all(s["image"].startswith("${NBPROD_IMAGE:?") for s in services.values())
    published = [port for s in services.values() for port in s.get("ports", [])]
    assert published == ["127.0.0.1:3000:3000"]
    assert "/readyz" in " ".join(services["model"]["healthcheck"]["test"])


# --- integration test: a real image of a real bento ---------------------------------------------


@pytest.fixture(scope="module")
def docker_client() -> container.DockerClient:
    """The docker client nbprod would use; skip unless requested, fail if requested but broken."""
    if os.environ.get(CONTAINER_TESTS_ENV) != "1":
        pytest.skip(
            f"container build not requested: set {CONTAINER_TESTS_ENV}=1 to build and run the "
            "bento image (needs Docker; .ci/run sets it after .ci/setup-docker)"
        )
    try:
        client = container.find_docker_client()
        container.check_daemon(client)
    except ContainerizeError as exc:
        pytest.fail(f"{CONTAINER_TESTS_ENV}=1 but Docker is not usable: {exc}")
    return client


@pytest.fixture(scope="module")
def champion(
    docker_client: container.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A run store whose champion has a real bento, in a private BentoML home."""
    workdir = tmp_path_factory.mktemp("container")
    env = isolated_bentoml_env(
        workdir / "bentoml", NBPROD_RUN_STORE_URL=str(workdir / "runs"), DO_NOT_TRACK="1"
    )
    env.pop("PREFECT_API_URL", None)
    env.pop("NBPROD_ONNX_RUNTIME", None)  # a user's default: ONNX Runtime, when it checks out
    result = run_script(__file__, workdir, env, timeout=300)
    result["env"] = env
    return result


@pytest.mark.integration
def test_containerized_champion_serves_the_models_predictions(
    docker_client: container.DockerClient, champion: dict[str, Any], tmp_path: Path
) -> None:
    import joblib
    import pandas as pd

    docker = docker_client.path
    suffix = uuid.uuid4().hex[:8]
    image = f"nbprod-test-{suffix}:{champion['version']}"
    name = f"nbprod-test-{suffix}"
    rows: list[dict[str, Any]] = champion["rows"]
    model = joblib.load(champion["model_path"])
    frame = pd.DataFrame(rows)
    expected = model.predict(frame).tolist()
    expected_proba = model.predict_proba(frame)[:, 1].tolist()

    try:
        started = time.monotonic()
        built = subprocess.run(
            [sys.executable, "-c", NBPROD, "containerize", "--pipeline", PIPELINE, "-t", image],
            cwd=tmp_path,
            env=champion["env"],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
        build_s = time.monotonic() - started
        assert built.returncode == 0, f"nbprod containerize failed:\n{built.stderr[-6000:]}"
        assert f"built image {image}" in built.stdout
        assert champion["bento_tag"] in built.stdout

        port = free_port()
        started = time.monotonic()
        _docker(docker, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:3000", image)
        base = f"http://127.0.0.1:{port}"
        _wait_ready(docker, name, base)
        ready_s = time.monotonic() - started
        print(f"containerize {build_s:.1f} s, container ready {ready_s:.1f} s")

        assert _request(base + "/livez", None)[0] == 200
        # The service's contract (bentos/service.py): labels as in the data, one probability
        # per class, within 1e-5 of the model's (ONNX Runtime's tree scores are float32). The
        # rows are the model's training rows: many sit exactly on a split it learned.
        status, body = _request(base + "/predict", {"records": rows})
        assert status == 200, body
        assert [r["prediction"] for r in body] == expected
        assert [r["probabilities"]["1"] for r in body] == pytest.approx(expected_proba, abs=1e-5)
        status, body = _request(base + "/metadata", {})
        assert (status, body["model_tag"]) == (200, champion["model_tag"])
        assert (body["run_version"], body["pipeline"]) == (champion["version"], PIPELINE)
        # Packaged with the defaults: the double-precision conversion serves.
        assert body["runtime"]["name"] == "onnxruntime", body["runtime"]
        assert body["fast_paths"]["onnx"] is True
    finally:
        subprocess.run([docker, "rm", "-f", name], capture_output=True, check=False)
        subprocess.run([docker, "rmi", "-f", image], capture_output=True, check=False)


def _docker(docker: str, *args: str) -> str:
    proc = subprocess.run([docker, *args], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"docker {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout.strip()


def _request(url: str, payload: dict[str, Any] | None) -> tuple[int, Any]:
    """GET (payload None) or POST JSON; (status, decoded body) even for 4xx/5xx."""
    status, body, _ = post_json(url, payload, timeout=30)
    return status, body


def _wait_ready(docker: str, name: str, base: str) -> None:
    """Poll /readyz until 200; fail with the container's log if it exits or the deadline passes."""
    deadline = time.monotonic() + READY_DEADLINE_S
    while time.monotonic() < deadline:
        try:
            if _request(base + "/readyz", None)[0] == 200:
                return
        except OSError:
            pass  # not listening yet
        if _docker(docker, "inspect", "--format", "{{.State.Running}}", name) != "true":
            break
        time.sleep(0.5)
    logs = subprocess.run([docker, "logs", name], capture_output=True, text=True, check=False)
    pytest.fail(
        f"container {name} not ready within {READY_DEADLINE_S}s:\n{logs.stdout}{logs.stderr}"
    )


# --- the packaging script, run in a subprocess with an isolated BENTOML_HOME ---------------------


def _make_champion(workdir: Path) -> None:
    """Fit and package the churn model, record it as the pipeline's champion; write result.json."""
    from served_models import PIPELINES, make_frame, package

    version = new_version_id()
    packaged = package(PIPELINE, workdir, REPO / "bentos", version)
    store = RunStore(os.environ["NBPROD_RUN_STORE_URL"])
    store.begin(version)
    record = store.finalize(
        version,
        {
            "status": "accepted",
            "pipeline": PIPELINE,
            "model_tag": packaged["model_tag"],
            "bento_tag": packaged["bento_tag"],
        },
    )
    store.set_champion(PIPELINE, record, expected=None, reason="test champion", triggered_by="test")
    _, target, id_column, time_column = PIPELINES[PIPELINE]
    features = make_frame(PIPELINE).drop(columns=[id_column, time_column, target])
    rows = [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
        for r in features.to_dict(orient="records")
    ]
    result = {**packaged, "version": version, "rows": rows}
    (workdir / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    _make_champion(Path(sys.argv[1]))

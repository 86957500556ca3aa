"""``nbprod containerize``: an OCI image of an accepted run's bento, via ``bentoml containerize``.

Why a wrapper rather than telling people to run ``bentoml containerize`` themselves:

- it resolves *which* bento from the run store (a pipeline's champion, or an accepted run
  version), so the image is always the approved, exactly-pinned model and never ``:latest``;
- it picks a docker client that can drive BuildKit. BentoML sets ``DOCKER_BUILDKIT=1``, and from
  docker CLI 23.0 on, ``docker build`` with BuildKit needs the buildx plugin: a CLI without it
  fails with "buildx component is missing". Older CLIs (e.g. Debian's ``docker.io`` 20.10) carry
  BuildKit built in. When no client qualifies, it falls back to the legacy builder
  (``DOCKER_BUILDKIT=0``), which BentoML supports;
- it turns the usual failures (no docker, no daemon, no champion, a base image that cannot be
  pulled) into one line that names the fix, instead of a traceback or a wall of build log.

Only the standard library is imported at module level (``nbprod --help`` must stay fast); the run
store is imported when the command runs. BentoML itself runs in a subprocess, with the bento store
``$BENTOML_HOME``, else the project's ``.nbprod/bentoml``, as for every other nbprod command.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from flows.bento_server import stop_server, use_bentoml_home
from flows.errors import ContainerizeError
from flows.options import add_pipeline_option, add_store_option, open_store, resolve_pipeline

# Set to a docker client binary to use exactly that one (no detection).
DOCKER_ENV_VAR = "NBPROD_DOCKER"
# Where clients live when the one first on PATH is not BuildKit-capable (Debian's docker.io
# installs /usr/bin/docker, while standalone downloads usually go to /usr/local/bin).
FALLBACK_CLIENTS = ("/usr/bin/docker", "/usr/local/bin/docker")
# From this CLI major version on, BuildKit builds go through the buildx plugin.
BUILDX_REQUIRED_FROM_MAJOR = 23
PROBE_TIMEOUT_S = 30.0
# Build-log lines kept to explain a failure (the full log is streamed as it happens).
LOG_TAIL_LINES = 80
SETUP_SCRIPT = ".ci/setup-docker"
K8S_MANIFEST = "deployments/k8s/bento.yaml"
K8S_IMAGE_PLACEHOLDER = "PIPELINE_IMAGE:CHAMPION_VERSION"
COMPOSE_FILE = "deployments/docker-compose.yaml"
# BentoML 1.4's containerize declares --quiet twice; click warns on every run. Noise, not news.
BENTOML_WARNING_FILTER = "ignore:The parameter --quiet is used more than once:UserWarning"


@dataclasses.dataclass(frozen=True)
class DockerClient:
    """A docker CLI binary and whether BentoML may use BuildKit through it."""

    path: str
    version: str
    buildkit: bool


def register_commands(subparsers: Any) -> None:
    """Add ``containerize`` to the ``nbprod`` sub-command parser (argparse subparsers action)."""
    parser = subparsers.add_parser(
        "containerize",
        help="build a Docker/OCI image of a pipeline champion's bento (or of an accepted run)",
        description="Build an OCI image of an accepted run's bento with `bentoml containerize`. "
        "Needs a docker client and a running Docker daemon.",
    )
    parser.add_argument(
        "version",
        nargs="?",
        default=None,
        metavar="VERSION",
        help="an accepted run version (default: the pipeline's current champion)",
    )
    parser.add_argument(
        "-t",
        "--image-tag",
        default=None,
        metavar="NAME:TAG",
        help="image name and tag (default: the bento tag, <pipeline>:<version>)",
    )
    add_pipeline_option(parser)
    add_store_option(parser)
    parser.set_defaults(func=cmd_containerize)


def cmd_containerize(args: argparse.Namespace) -> int:
    """Resolve the bento, check docker, build the image, say how to run and deploy it."""
    store = open_store(args.store)
    run_version, bento_tag, source = resolve_bento_tag(store, args.version, resolve_pipeline(args))
    use_bentoml_home()  # the subprocess's store, whatever the entry point
    bento_dir = bento_path(bento_tag)
    client = find_docker_client()
    check_daemon(client)
    image_tag = args.image_tag or bento_tag
    print(
        f"containerizing bento {bento_tag} ({source}) as image {image_tag} with {client.path} "
        f"(docker {client.version}, {'BuildKit' if client.buildkit else 'legacy builder'})",
        file=sys.stderr,
        flush=True,
    )
    started = time.monotonic()
    image_id = build_image(client, bento_tag, image_tag, base_image=base_image_of(bento_dir))
    elapsed = time.monotonic() - started
    print(render_success(image_tag, image_id, bento_tag, run_version, source, elapsed))
    return 0


def resolve_bento_tag(store: Any, version: str | None, pipeline: str) -> tuple[str, str, str]:
    """Return (run version, exact bento tag, description): the pipeline's champion, or a run.

    Only accepted runs have a bento; a rejected or failed run is refused by name, so an image of
    an unapproved model cannot be built through nbprod by mistake.
    """
    if version is None:
        champion = store.champion(pipeline)
        if champion is None:
            raise ContainerizeError(
                f"pipeline {pipeline!r} has no champion in {store.url} yet: run `nbprod run` "
                "until a model is accepted, or pass --pipeline, or an accepted VERSION "
                "(see `nbprod runs`)"
            )
        record, source = champion, f"champion of {pipeline}"
    else:
        record, source = store.get_run(version), "accepted run"
        if record.get("status") != "accepted":
            raise ContainerizeError(
                f"run {version} is {record.get('status')}, not accepted: only accepted runs have "
                "a bento; pick an accepted version from `nbprod runs`"
            )
    bento_tag = record.get("bento_tag")
    name, _, tag_version = str(bento_tag or "").partition(":")
    if not name or not tag_version or tag_version == "latest":
        raise ContainerizeError(
            f"run {record.get('version')} records no exact bento tag ({bento_tag!r}): "
            "re-run the pipeline to package it"
        )
    return str(record["version"]), str(bento_tag), f"{source} {record['version']}"


def bentoml_home(env: Mapping[str, str] | None = None) -> Path:
    """The BentoML store: ``BENTOML_HOME`` of ``env``, else the project's ``.nbprod/bentoml``."""
    env = os.environ if env is None else env
    if env.get("BENTOML_HOME"):
        return Path(env["BENTOML_HOME"]).expanduser()
    from flows.paths import home_dir

    return home_dir() / "bentoml"


def bento_path(bento_tag: str, env: Mapping[str, str] | None = None) -> Path:
    """Locate the bento on disk; a missing one usually means a different BENTOML_HOME."""
    home = bentoml_home(env)
    name, _, version = bento_tag.partition(":")
    path = home / "bentos" / name / version
    if not (path / "bento.yaml").is_file():
        raise ContainerizeError(
            f"bento {bento_tag} is not in the BentoML store at {home}: set BENTOML_HOME to the "
            "store the run packaged into (nbprod's default is .nbprod/bentoml)"
        )
    return path


def base_image_of(bento_dir: Path) -> str | None:
    """The image BentoML's Dockerfile starts FROM, read from the bento's bento.yaml."""
    import yaml  # a dependency of nbprod; imported here to keep module import stdlib-only

    try:
        info = yaml.safe_load((bento_dir / "bento.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    image = info.get("image") or info.get("docker") or {}
    base = image.get("base_image") if isinstance(image, dict) else None
    return str(base) if base else None


def _run(command: list[str], *, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """Run a short probe command; a hung docker counts as a failure, not a hang."""
    try:
        proc = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
            env=None if env is None else dict(env),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, "", str(exc)
    return proc.returncode, proc.stdout, proc.stderr


def describe_client(path: str) -> DockerClient | None:
    """Version and BuildKit capability of one docker CLI, or None if it does not run."""
    code, out, _ = _run([path, "--version"])
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
    if code != 0 or match is None:
        return None
    major = int(match.group(1))
    if major >= BUILDX_REQUIRED_FROM_MAJOR:
        buildkit = _run([path, "buildx", "version"])[0] == 0
    else:
        buildkit = (major, int(match.group(2))) >= (18, 9)
    return DockerClient(path=path, version=match.group(0), buildkit=buildkit)


def find_docker_client(env: Mapping[str, str] | None = None) -> DockerClient:
    """Pick the docker CLI for BentoML: $NBPROD_DOCKER, else the first BuildKit-capable one.

    Candidates are ``docker`` on PATH, then FALLBACK_CLIENTS. If none can drive BuildKit, the
    first one found is used with the legacy builder (see ``builder_env``).
    """
    env = os.environ if env is None else env
    explicit = env.get(DOCKER_ENV_VAR)
    if explicit:
        client = describe_client(explicit)
        if client is None:
            raise ContainerizeError(
                f"${DOCKER_ENV_VAR}={explicit} is not a working docker client: "
                f"fix the path or unset {DOCKER_ENV_VAR}"
            )
        return client
    candidates: list[str] = []
    on_path = shutil.which("docker", path=env.get("PATH", os.defpath))
    for path in (on_path, *FALLBACK_CLIENTS):
        if path and os.access(path, os.X_OK):
            real = os.path.realpath(path)
            if real not in {os.path.realpath(c) for c in candidates}:
                candidates.append(path)
    clients = [c for c in map(describe_client, candidates) if c is not None]
    if not clients:
        raise ContainerizeError(
            "docker is not installed (no `docker` on PATH): install Docker "
            "(https://docs.docker.com/engine/install/), or on Debian without registry access run "
            f"`sudo {SETUP_SCRIPT}`"
        )
    return next((c for c in clients if c.buildkit), clients[0])


def check_daemon(client: DockerClient, env: Mapping[str, str] | None = None) -> str:
    """Return the daemon's version, or fail with how to start it or reach it."""
    code, out, err = _run([client.path, "version", "--format", "{{.Server.Version}}"], env=env)
    if code == 0 and out.strip():
        return out.strip()
    detail = next((line.strip() for line in err.splitlines() if line.strip()), "no answer")
    if "permission denied" in err.lower():
        fix = "add your user to the `docker` group (then log in again), or run as root"
    else:
        fix = (
            "start it (`sudo systemctl start docker`; on machines without systemd "
            f"`sudo {SETUP_SCRIPT}` starts dockerd), or point DOCKER_HOST at a running daemon"
        )
    raise ContainerizeError(f"cannot reach the Docker daemon ({detail}): {fix}")


def image_id(client: DockerClient, image: str) -> str | None:
    """The local image's ID, or None when the daemon does not have it."""
    code, out, _ = _run([client.path, "image", "inspect", "--format", "{{.Id}}", image])
    return out.strip() if code == 0 and out.strip() else None


@contextlib.contextmanager
def builder_env(client: DockerClient) -> Iterator[dict[str, str]]:
    """Environment for ``bentoml containerize``: this client first on PATH, BuildKit decided.

    BentoML finds docker with ``shutil.which("docker")``, so the chosen client is put first on
    PATH through a temporary directory holding only a ``docker`` symlink (prepending the client's
    own directory could shadow other tools, e.g. ``/usr/bin/python3``).
    """
    env = dict(os.environ)
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    env.setdefault("DO_NOT_TRACK", "1")
    env["PYTHONWARNINGS"] = ",".join(
        filter(None, [env.get("PYTHONWARNINGS"), BENTOML_WARNING_FILTER])
    )
    if not client.buildkit and "DOCKER_BUILDKIT" not in env:
        env["DOCKER_BUILDKIT"] = "0"
    with tempfile.TemporaryDirectory(prefix="nbprod-docker-") as tmp:
        os.symlink(client.path, os.path.join(tmp, "docker"))
        env["PATH"] = os.pathsep.join([tmp, env.get("PATH", os.defpath)])
        yield env


def build_image(
    client: DockerClient,
    bento_tag: str,
    image_tag: str,
    *,
    base_image: str | None = None,
    bentoml_command: list[str] | None = None,
) -> str:
    """Run ``bentoml containerize`` streaming its log to stderr; return the new image's ID.

    ``bentoml_command`` replaces ``python -m bentoml`` (tests use a stand-in).
    """
    command = [
        *(bentoml_command or [sys.executable, "-m", "bentoml"]),
        "containerize",
        bento_tag,
        "--image-tag",
        image_tag,
        "--backend",
        "docker",
    ]
    tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
    with builder_env(client) as env:
        try:
            proc = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                env=env,
                start_new_session=True,  # Ctrl-C is handled here, then passed to the group
            )
        except OSError as exc:
            raise ContainerizeError(
                f"could not start `bentoml containerize` ({exc}): fix the venv (`make venv`)"
            ) from exc
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stderr.write(line)
                tail.append(line.rstrip())
            code = proc.wait()
        except KeyboardInterrupt:
            stop_server(proc, grace_s=20)  # the build's whole process group
            raise
    built = image_id(client, image_tag)
    if code == 0 and built:
        return built
    if base_image and image_id(client, base_image) is None:
        raise ContainerizeError(
            f"building the image of {bento_tag} failed: its base image {base_image} is not "
            f"available locally and could not be pulled: `docker pull {base_image}` where a "
            f"registry is reachable, or build it offline with `sudo {SETUP_SCRIPT}`"
        )
    raise ContainerizeError(
        f"`bentoml containerize {bento_tag}` failed (exit {code}): {_last_error(tail)}; "
        "the build log is above"
    )


def _last_error(lines: collections.deque[str]) -> str:
    """The most telling line of a failed build log, for the one-line error."""
    markers = ("error", "failed", "denied", "exception")
    for line in reversed(lines):
        if any(marker in line.lower() for marker in markers):
            return line.strip()[:300]
    return next((line.strip()[:300] for line in reversed(lines) if line.strip()), "no output")


def render_success(
    image_tag: str, built_id: str, bento_tag: str, run_version: str, source: str, elapsed: float
) -> str:
    """What was built and the three ways to run it (docker, compose, Kubernetes)."""
    return "\n".join(
        [
            f"built image {image_tag} ({built_id[:19]}) from bento {bento_tag} ({source}, "
            f"run {run_version}) in {elapsed:.0f} s",
            f"  run:      docker run --rm -p 127.0.0.1:3000:3000 {image_tag}",
            f"  compose:  NBPROD_IMAGE={image_tag} docker compose -f {COMPOSE_FILE} up -d",
            "  k8s:      push it to a registry the cluster pulls from, then",
            f"            sed 's|{K8S_IMAGE_PLACEHOLDER}|<registry>/{image_tag}|' "
            f"{K8S_MANIFEST} | kubectl apply -f -",
            "  serves:   POST /predict /metadata; GET /livez /readyz /metrics on port 3000",
        ]
    )

"""Champion history and rollback on a real run store and a real BentoML store.

The bentos are real (a one-endpoint service built with ``bentoml.bentos.build``), so the check
that a rollback target's bento still exists runs against BentoML itself.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flows import cli
from flows.errors import RollbackError
from flows.history import history_rows, register_commands, rollback
from flows.run_records import new_version_id
from flows.store import RunStore

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
BENTO_NAME = "nbprod_rollback_test"
PIPELINE = "training"
SERVICE = """import bentoml


@bentoml.service
class Tiny:
    @bentoml.api
    def ping(self) -> str:
        return "ok"
"""


def build_bento(version: str, ctx: Path) -> str:
    import bentoml

    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "tiny_service.py").write_text(SERVICE)
    bento = bentoml.bentos.build(
        "tiny_service:Tiny", name=BENTO_NAME, version=version, build_ctx=str(ctx)
    )
    return str(bento.tag)


def add_run(store: RunStore, status: str, **extra: Any) -> dict[str, Any]:
    version = new_version_id()
    store.begin(version)
    record = {
        "status": status,
        "pipeline": PIPELINE,
        "flow": "training_pipeline",
        "metrics": {"candidate": {"roc_auc": 0.8}, "champion": None},
        "model_tag": f"m:{version}",
        "bento_tag": f"{BENTO_NAME}:{version}",
        **extra,
    }
    return store.finalize(version, record)


def promote(
    store: RunStore,
    run: dict[str, Any],
    triggered_by: str = "flow-run-id",
    pipeline: str = PIPELINE,
) -> None:
    current = store.champion(pipeline)
    store.set_champion(
        pipeline,
        {k: run[k] for k in ("version", "model_tag", "bento_tag")},
        expected=current["version"] if current else None,
        reason="gate",
        triggered_by=triggered_by,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two real bentos, built once: for the first and second champions (not the third)."""
    ctx = tmp_path_factory.mktemp("bento-ctx")
    versions = {"first": new_version_id(), "second": new_version_id()}
    for version in versions.values():
        build_bento(version, ctx)
    return versions


@pytest.fixture
def store(tmp_path: Path, built: dict[str, str]) -> RunStore:
    """first -> second -> third (a drift retrain), plus a rejected and a monitoring run."""
    store = RunStore(tmp_path / "runs")
    for name in ("first", "second"):
        version = built[name]
        store.begin(version)
        run = store.finalize(
            version,
            {
                "status": "accepted",
                "pipeline": PIPELINE,
                "flow": "training_pipeline",
                "metrics": {"candidate": {"roc_auc": 0.8}},
                "model_tag": f"m:{version}",
                "bento_tag": f"{BENTO_NAME}:{version}",
                "triggered_by": "manual",
            },
        )
        promote(store, run)
    third = add_run(store, "accepted", triggered_by="drift:vmonitoring")
    promote(store, third)
    add_run(store, "rejected")
    store.begin("v-monitoring")
    store.finalize(
        "v-monitoring",
        {
            "status": "completed",
            "kind": "monitoring",
            "pipeline": PIPELINE,
            "flow": "monitoring_pipeline",
        },
    )
    return store


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``nbprod`` in-process, through flows.cli.main and its one-line error handling."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_history_lists_every_change_with_why(store: RunStore, built: dict[str, str]) -> None:
    rows = history_rows(store, PIPELINE)
    assert [r["why"] for r in rows] == ["gate", "gate", "retrain"]
    assert rows[0]["from_version"] is None and rows[0]["to_version"] == built["first"]
    assert rows[1]["from_version"] == built["first"] and rows[1]["to_version"] == built["second"]
    code, out, _ = run_cli("history", "--store", store.url)  # the project's one pipeline
    assert code == 0 and "retrain" in out and built["second"] in out
    code, out, _ = run_cli("history", "--json", "--store", store.url, "--pipeline", PIPELINE)
    assert json.loads(out)[2]["run_triggered_by"] == "drift:vmonitoring"


def _assert_columns_align(out: str, columns: tuple[str, ...]) -> None:
    """Every row's fields start where the header's titles do: no value runs into the next column."""
    header, *rows = out.splitlines()
    starts = [header.index(title) for title in columns]
    assert rows
    for row in rows:
        for start in starts[1:]:
            assert row[start - 1] == " " and row[start] != " ", (header, row)


def test_tables_fit_the_version_ids(store: RunStore) -> None:
    # Versions are 26 characters (milliseconds); a fixed 24-wide column shifted every later field.
    code, out, _ = run_cli("history", "--store", store.url)
    assert code == 0
    _assert_columns_align(out, ("WHEN", "FROM", "TO", "WHY"))
    code, out, _ = run_cli("runs", "--store", store.url)
    assert code == 0
    _assert_columns_align(out, ("VERSION", "STATUS"))  # the metrics are right-aligned


def test_rollback_defaults_to_the_previous_champion(store: RunStore, built: dict[str, str]) -> None:
    code, out, err = run_cli(
        "rollback", "--reason", "third misbehaves", "--store", store.url, "--pipeline", PIPELINE
    )
    assert code == 0, err
    assert f"-> {built['second']}" in out
    champion = store.champion(PIPELINE)
    assert champion["version"] == built["second"]
    assert champion["bento_tag"] == f"{BENTO_NAME}:{built['second']}"
    assert champion["reason"] == "rollback" and champion["note"] == "third misbehaves"
    last = history_rows(store, PIPELINE)[-1]
    assert last["why"] == "rollback" and last["to_version"] == built["second"]
    assert last["note"] == "third misbehaves" and last["triggered_by"].startswith("cli (")


def test_rollback_to_a_named_version(store: RunStore, built: dict[str, str]) -> None:
    pointer = rollback(
        store, built["first"], pipeline=PIPELINE, reason="back to basics", triggered_by="test"
    )
    assert pointer["version"] == built["first"]
    assert len(store.champion_history(PIPELINE)) == 4


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("v20990101-000000-abcdef", "not found"),
        ("rejected", "it was rejected, only an accepted"),
        ("v-monitoring", "it was completed, only an accepted"),
        ("no-bento", "is no longer in the BentoML store"),
        ("current", "is already the champion"),
        ("../../../../x/evil", "is not a run version"),
        ("v1/../../x", "is not a run version"),
        ("..", "is not a run version"),
        ("other-pipeline", "it is a run of pipeline other"),
    ],
)
def test_bad_rollback_is_one_line_and_changes_nothing(
    store: RunStore, target: str, message: str
) -> None:
    runs = {r["status"]: r["version"] for r in store.list_runs()}
    champion = store.champion(PIPELINE)
    # An accepted run of another pipeline, whose bento exists: only the pipeline is wrong.
    other = add_run(store, "accepted", pipeline="other", bento_tag=champion["bento_tag"])
    resolved = {
        "rejected": runs["rejected"],
        "no-bento": champion["version"],  # the third champion's bento was never built
        "current": champion["version"],
        "other-pipeline": other["version"],
    }.get(target, target)
    if target == "no-bento":
        # Make it a rollback target: move to the second champion first, then try to go back.
        rollback(store, None, pipeline=PIPELINE, reason="setup", triggered_by="test")
    before = (store.champion(PIPELINE), store.champion_history(PIPELINE))
    code, out, err = run_cli(
        "rollback", resolved, "--reason", "test", "--store", store.url, "--pipeline", PIPELINE
    )
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and message in err, err
    assert (store.champion(PIPELINE), store.champion_history(PIPELINE)) == before
    assert store.champion("other") is None


def test_rollback_without_champion_or_reason(tmp_path: Path) -> None:
    empty = RunStore(tmp_path / "empty")
    with pytest.raises(RollbackError, match="no champion yet"):
        rollback(empty, None, pipeline=PIPELINE, reason="x", triggered_by="test")
    with pytest.raises(RollbackError, match="needs a reason"):
        rollback(empty, None, pipeline=PIPELINE, reason=" ", triggered_by="test")


def test_commands_register_without_heavy_imports() -> None:
    code = (
        "import sys, argparse\nfrom flows.history import register_commands\n"
        "p = argparse.ArgumentParser(); register_commands(p.add_subparsers())\n"
        "p.format_help()\n"
        "print([m for m in ('prefect', 'evidently', 'bentoml', 'pandas', 'pydantic') "
        "if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    register_commands(sub)
    assert parser.parse_args(["rollback", "--reason", "r"]).version is None
    assert (
        parser.parse_args(["rollback", "--reason", "r", "--pipeline", "churn"]).pipeline == "churn"
    )
    assert parser.parse_args(["history", "--pipeline", "churn"]).pipeline == "churn"


def test_two_pipelines_keep_their_own_champion_history_and_rollback(
    store: RunStore, built: dict[str, str]
) -> None:
    """A second pipeline in the same store: its commands never see training's champion."""
    churn = [add_run(store, "accepted", pipeline="churn") for _ in range(2)]
    for run in churn:
        promote(store, run, pipeline="churn")
    training_before = (store.champion(PIPELINE), store.champion_history(PIPELINE))

    code, out, _ = run_cli("champion", "--store", store.url, "--pipeline", "churn")
    assert code == 0 and f"champion of churn: {churn[1]['version']}" in out
    code, out, _ = run_cli("history", "--json", "--store", store.url, "--pipeline", "churn")
    assert [r["to_version"] for r in json.loads(out)] == [r["version"] for r in churn]
    code, out, _ = run_cli("runs", "--store", store.url)
    assert code == 0 and out.startswith("PIPELINE") and "churn" in out
    _assert_columns_align(out, ("PIPELINE", "VERSION", "STATUS", "STARTED", "METRICS"))
    code, out, _ = run_cli("runs", "--store", store.url, "--pipeline", "churn")
    assert code == 0 and out.startswith("VERSION")
    listed = [line.split()[0] for line in out.splitlines()[1:]]
    assert listed == sorted(r["version"] for r in churn)  # by version

    # Rolling churn back needs churn's own history: training's champions are not candidates.
    with pytest.raises(RollbackError, match=f"roll back to {churn[0]['version']}: its bento"):
        rollback(store, None, pipeline="churn", reason="x", triggered_by="test")
    with pytest.raises(RollbackError, match="it is a run of pipeline training"):
        rollback(store, built["first"], pipeline="churn", reason="x", triggered_by="test")
    assert (store.champion(PIPELINE), store.champion_history(PIPELINE)) == training_before


def test_an_old_layout_store_works_after_its_migration(
    tmp_path: Path, built: dict[str, str]
) -> None:
    """Files written by hand as the previous code wrote them: root champion, flow-named records."""
    old = RunStore(tmp_path / "old")
    root = tmp_path / "old"
    for sequence, (before, name) in enumerate([(None, "first"), ("first", "second")], start=1):
        version = built[name]
        old.begin(version)
        old.finalize(
            version,
            {
                "status": "accepted",
                "pipeline": "training_pipeline",
                "model_tag": f"m:{version}",
                "bento_tag": f"{BENTO_NAME}:{version}",
                "metrics": {"candidate": {"roc_auc": 0.8}},
            },
        )
        event = {
            "at": "2025-01-01T00:00:00+00:00",
            "from_version": built[before] if before else None,
            "to_version": version,
            "reason": "gate",
            "note": None,
            "triggered_by": "flow-run",
            "model_tag": f"m:{version}",
            "bento_tag": f"{BENTO_NAME}:{version}",
        }
        (root / "champion_history").mkdir(exist_ok=True)
        (root / "champion_history" / f"{sequence:06d}-{new_version_id()}.json").write_text(
            json.dumps(event, indent=2)
        )
    pointer = {
        "version": built["second"],
        "model_tag": f"m:{built['second']}",
        "bento_tag": f"{BENTO_NAME}:{built['second']}",
        "metrics": {"roc_auc": 0.8},
        "since": "2025-01-01T00:00:00+00:00",
        "reason": "gate",
    }
    (root / "champion.json").write_text(json.dumps(pointer, indent=2))

    code, out, err = run_cli("champion", "--store", str(root), "--pipeline", PIPELINE)
    assert code == 0 and f"champion of training: {built['second']}" in out
    assert err.count("\n") == 1 and "moved the champion and its history (2 changes)" in err
    assert not (root / "champion.json").exists() and not (root / "champion_history").exists()

    code, out, err = run_cli("runs", "--store", str(root), "--pipeline", PIPELINE)
    assert code == 0 and err == ""  # migrated once: nothing more to say
    listed = [line.split()[0] for line in out.splitlines()[1:]]
    assert listed == sorted([built["first"], built["second"]])
    code, out, err = run_cli("history", "--json", "--store", str(root), "--pipeline", PIPELINE)
    assert [r["to_version"] for r in json.loads(out)] == [built["first"], built["second"]]
    code, out, err = run_cli(
        "rollback", "--reason", "r", "--store", str(root), "--pipeline", PIPELINE
    )
    assert code == 0 and err == "" and f"-> {built['first']}" in out, err
    new = RunStore(root)
    assert new.champion(PIPELINE)["version"] == built["first"]  # type: ignore[index]
    assert [e["to_version"] for e in new.champion_history(PIPELINE)][-1] == built["first"]
    assert new.pipelines() == [PIPELINE]

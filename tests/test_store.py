from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.errors import RunStoreError
from flows.faults import FAULT_ENV_VAR
from flows.run_records import new_version_id
from flows.store import ChampionMove, RunStore


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> RunStore:
    if request.param == "local":
        return RunStore(tmp_path / "runs")
    return RunStore(f"memory://nbprod-test-{new_version_id()}")


def test_version_listed_only_after_finalize(store: RunStore, tmp_path: Path) -> None:
    version = new_version_id()
    store.begin(version)
    store.put_json(version, "parameters.json", {"a": 1})
    assert store.list_runs() == []  # in progress: never listed half-written
    with pytest.raises(RunStoreError, match="not found"):
        store.get_run(version)
    store.finalize(version, {"status": "accepted"})
    runs = store.list_runs()
    assert [r["version"] for r in runs] == [version]
    assert runs[0]["status"] == "accepted" and "finished_at" in runs[0]


def test_finalised_version_is_immutable(store: RunStore, tmp_path: Path) -> None:
    version = new_version_id()
    store.begin(version)
    store.finalize(version, {"status": "failed", "error": "boom"})
    local = tmp_path / "x.txt"
    local.write_text("x")
    with pytest.raises(RunStoreError, match="immutable"):
        store.put_file(version, "x.txt", local)
    with pytest.raises(RunStoreError, match="immutable"):
        store.finalize(version, {"status": "accepted"})
    with pytest.raises(RunStoreError, match="already exists"):
        store.begin(version)
    assert store.get_run(version)["status"] == "failed"


def test_status_must_be_known(store: RunStore) -> None:
    version = new_version_id()
    store.begin(version)
    with pytest.raises(RunStoreError, match="status"):
        store.finalize(version, {"status": "running"})


def test_champion_moves_with_history_and_refuses_stale_expectation(store: RunStore) -> None:
    assert store.champion("training") is None
    store.set_champion(
        "training",
        {"version": "v1", "model_tag": "m:1"},
        expected=None,
        reason="gate",
        triggered_by="t",
    )
    store.set_champion(
        "training",
        {"version": "v2", "model_tag": "m:2"},
        expected="v1",
        reason="gate",
        triggered_by="t",
    )
    assert store.champion("training")["version"] == "v2"  # type: ignore[index]
    with pytest.raises(RunStoreError, match="champion of pipeline training moved"):
        store.set_champion(
            "training", {"version": "v3"}, expected="v1", reason="gate", triggered_by="t"
        )
    assert store.champion("training")["version"] == "v2"  # type: ignore[index]
    history = store.champion_history("training")
    assert [(h["from_version"], h["to_version"]) for h in history] == [(None, "v1"), ("v1", "v2")]
    assert store.champion("training")["pipeline"] == "training"  # type: ignore[index]


def test_put_tree_and_files_and_fetch(store: RunStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    version = new_version_id()
    store.begin(version)
    store.put_tree(version, "outputs", src)
    assert store.files(version) == ["outputs/a.txt", "outputs/sub/b.txt"]
    got = store.fetch(version, "outputs/sub/b.txt", tmp_path / "back" / "b.txt")
    assert got.read_text() == "b"


def test_versions_are_unique_and_sortable() -> None:
    ids = [new_version_id() for _ in range(50)]
    assert len(set(ids)) == 50
    assert all(i.startswith("v") and i == i.lower() for i in ids)


def test_versions_made_within_one_second_sort_in_the_order_they_were_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Runs that fail fast can start within one second; the random suffix must not reorder them."""
    import secrets
    from datetime import UTC, datetime

    import flows.run_records

    moments = iter(
        [datetime(2026, 1, 2, 3, 4, 5, 100_000, UTC), datetime(2026, 1, 2, 3, 4, 5, 900_000, UTC)]
    )
    suffixes = iter(["ffffff", "000000"])  # the later run draws the smaller suffix

    class Clock(datetime):
        @classmethod
        def now(cls, tz: object = None) -> datetime:  # type: ignore[override]
            return next(moments)

    monkeypatch.setattr(flows.run_records, "datetime", Clock)
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(suffixes))
    first, second = new_version_id(), new_version_id()
    assert sorted([second, first]) == [first, second]
    assert first.startswith("v20260102-030405100-")


@pytest.mark.parametrize(
    "url", ["/tmp/x/runs", "/tmp/x/runs/", "runs", "./runs", ".", "~/runs", "/"]
)
def test_plain_local_paths_resolve_as_fsspec_resolves_them(url: str) -> None:
    import fsspec

    from flows.store import plain_local_root

    assert plain_local_root(url) == fsspec.core.url_to_fs(url)[1]


@pytest.mark.parametrize("url", ["memory://x", "file:///tmp/x", "simplecache::memory://x"])
def test_urls_go_through_fsspec(url: str) -> None:
    from flows.store import plain_local_root

    assert plain_local_root(url) is None
    assert RunStore(url)._fs is not None


def test_reading_a_local_store_does_not_import_fsspec(tmp_path: Path) -> None:
    """Reading a run from a local store works without fsspec (0.1 s+ to import)."""
    import subprocess
    import sys

    store = RunStore(tmp_path / "runs")
    version = new_version_id()
    store.begin(version)
    store.finalize(version, {"status": "completed"})
    code = (
        "import sys; from flows.store import RunStore\n"
        f"s = RunStore({str(tmp_path / 'runs')!r})\n"
        f"assert s.get_run({version!r})['status'] == 'completed'\n"
        "print('fsspec' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- one champion per pipeline ------------------------------------------------------------------
def promote(store: RunStore, pipeline: str, version: str, expected: str | None) -> dict:
    return store.set_champion(
        pipeline,
        {"version": version, "model_tag": f"{pipeline}:{version}"},
        expected=expected,
        reason="gate",
        triggered_by="test",
    )


def add_run(store: RunStore, **record: object) -> str:
    version = new_version_id()
    store.begin(version)
    store.finalize(version, {"status": "accepted", **record})
    return version


def test_pipelines_have_independent_champions_and_histories(store: RunStore) -> None:
    churn = [add_run(store, pipeline="churn", flow="training_pipeline") for _ in range(2)]
    price = add_run(store, pipeline="price", flow="training_pipeline")
    promote(store, "churn", churn[0], None)
    promote(store, "price", price, None)  # the churn champion is not price's expectation
    promote(store, "churn", churn[1], churn[0])

    assert store.champion("churn")["version"] == churn[1]  # type: ignore[index]
    assert store.champion("price")["version"] == price  # type: ignore[index]
    assert store.champion("training") is None
    assert [e["to_version"] for e in store.champion_history("churn")] == churn
    assert [e["to_version"] for e in store.champion_history("price")] == [price]
    assert {e["pipeline"] for e in store.champion_history("churn")} == {"churn"}
    with pytest.raises(RunStoreError, match="champion of pipeline price moved"):
        promote(store, "price", churn[0], churn[1])  # another pipeline's champion: stale
    assert [r["version"] for r in store.list_runs("churn")] == sorted(churn)  # by version
    assert [r["version"] for r in store.list_runs("price")] == [price]
    assert store.list_runs("training") == []
    assert len(store.list_runs()) == 3
    assert store.pipelines() == ["churn", "price"]


def test_history_ignores_temp_files_of_failed_writes_and_stays_gap_free(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs")
    promote(store, "churn", "v1", None)
    history = tmp_path / "runs" / "pipelines" / "churn" / "champion_history"
    (history / "000002-vdead.json.tmp-0123").write_text("")  # a write cut short by a full disk
    promote(store, "churn", "v2", "v1")
    assert [e["to_version"] for e in store.champion_history("churn")] == ["v1", "v2"]
    numbers = sorted(p.name[:6] for p in history.glob("*.json"))
    assert numbers == ["000001", "000002"]


def test_a_failed_write_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import flows.run_records

    store = RunStore(tmp_path / "runs")
    promote(store, "churn", "v1", None)

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(flows.store.os, "fsync", full_disk)
    with pytest.raises(RunStoreError, match="champion of pipeline churn.*No space.*unchanged"):
        promote(store, "churn", "v2", "v1")
    monkeypatch.undo()
    pipeline_dir = tmp_path / "runs" / "pipelines" / "churn"
    assert not [p for p in pipeline_dir.rglob("*") if ".tmp-" in p.name]
    assert store.champion("churn")["version"] == "v1"  # type: ignore[index]
    promote(store, "churn", "v2", "v1")  # the next write needs no manual step
    assert [e["to_version"] for e in store.champion_history("churn")] == ["v1", "v2"]


def test_records_name_their_pipeline_old_and_new() -> None:
    from flows.run_records import flow_of, pipeline_of

    new = {"pipeline": "churn", "flow": "training_pipeline"}
    assert (pipeline_of(new), flow_of(new)) == ("churn", "training_pipeline")
    old = {"pipeline": "training_pipeline"}
    assert (pipeline_of(old), flow_of(old)) == ("training", "training_pipeline")
    old_spec = {"pipeline": "notebook_pipeline", "spec": "report"}
    assert (pipeline_of(old_spec), flow_of(old_spec)) == ("report", "notebook_pipeline")
    old_monitoring = {"kind": "monitoring", "status": "completed"}
    assert (pipeline_of(old_monitoring), flow_of(old_monitoring)) == (
        "training",
        "monitoring_pipeline",
    )


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "", "Churn", "churn_model", "-x"])
def test_pipeline_names_cannot_leave_the_store(store: RunStore, name: str) -> None:
    with pytest.raises(RunStoreError, match="not a pipeline name"):
        store.champion(name)
    with pytest.raises(RunStoreError, match="not a pipeline name"):
        promote(store, name, "v1", None)
    with pytest.raises(RunStoreError, match="not a pipeline name"):
        store.list_runs(name)


@pytest.mark.parametrize("version", ["../../x/evil", "v1/../../x", "..", "/etc", "v1/run", ""])
def test_versions_cannot_leave_the_store(store: RunStore, version: str) -> None:
    with pytest.raises(RunStoreError, match="not a run version"):
        store.get_run(version)
    with pytest.raises(RunStoreError, match="not a run version"):
        store.files(version)
    with pytest.raises(RunStoreError, match="not a run version"):
        store.begin(version)


def test_the_store_checks_pipeline_names_as_specs_do() -> None:
    from flows.run_records import PIPELINE_NAME_PATTERN
    from flows.spec import NAME_PATTERN

    assert PIPELINE_NAME_PATTERN == NAME_PATTERN


# -- the previous layout ------------------------------------------------------------------------
def write_old_layout(store: RunStore, spec: str | None = None) -> dict[str, object]:
    """A store as the code before per-pipeline champions left it, written by hand as it did."""
    import json

    extra = {"spec": spec} if spec else {}
    first = add_run(store, pipeline="training_pipeline", **extra)
    second = add_run(store, pipeline="training_pipeline", **extra)
    rejected = add_run(store, pipeline="training_pipeline", **{**extra, "status": "rejected"})
    notebook = add_run(store, pipeline="notebook_pipeline", spec="report", status="completed")
    monitoring = add_run(store, pipeline="monitoring_pipeline", kind="monitoring")
    events = [(None, first), (first, second)]
    store.fs.makedirs(f"{store.root}/champion_history", exist_ok=True)
    for sequence, (before, after) in enumerate(events, start=1):
        event = {"at": "2025-01-01T00:00:00+00:00", "from_version": before, "to_version": after}
        event |= {"reason": "gate", "note": None, "triggered_by": "flow-run"}
        event |= {"model_tag": f"m:{after}", "bento_tag": f"b:{after}"}
        name = f"{sequence:06d}-{new_version_id()}.json"
        store.fs.pipe_file(
            f"{store.root}/champion_history/{name}", json.dumps(event, indent=2).encode()
        )
    store.fs.pipe_file(  # a temp file of a write cut short: garbage, not history
        f"{store.root}/champion_history/000003-{new_version_id()}.json.tmp-0123", b""
    )
    pointer = {"version": second, "model_tag": f"m:{second}", "bento_tag": f"b:{second}"}
    pointer |= {"metrics": {"roc_auc": 0.8}, "since": "2025-01-01T00:00:00+00:00"}
    pointer |= {"reason": "gate"}
    store.fs.pipe_file(f"{store.root}/champion.json", json.dumps(pointer, indent=2).encode())
    return {
        "first": first,
        "second": second,
        "rejected": rejected,
        "notebook": notebook,
        "monitoring": monitoring,
    }


def old_files(store: RunStore) -> list[str]:
    return [
        p for p in ("champion.json", "champion_history") if store.fs.exists(f"{store.root}/{p}")
    ]


def test_old_layout_is_migrated_once_with_one_line(
    store: RunStore, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = write_old_layout(store)
    champion = store.champion("training")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "moved the champion and its history (2 changes)" in err
    assert "pipelines/training/" in err
    assert champion is not None and champion["version"] == runs["second"]
    assert champion["pipeline"] == "training" and champion["metrics"] == {"roc_auc": 0.8}
    assert old_files(store) == []
    history = store.champion_history("training")
    assert [(e["from_version"], e["to_version"]) for e in history] == [
        (None, runs["first"]),
        (runs["first"], runs["second"]),
    ]
    training = [r["version"] for r in store.list_runs("training")]
    assert training == sorted([runs["first"], runs["second"], runs["rejected"], runs["monitoring"]])
    assert [r["version"] for r in store.list_runs("report")] == [runs["notebook"]]
    assert store.pipelines() == ["report", "training"]

    again = RunStore(store.url)  # a later command: nothing left to move, nothing said
    assert again.champion("training") == champion
    assert again.champion_history("training") == history
    assert capsys.readouterr().err == ""
    third = add_run(again, pipeline="training", flow="training_pipeline")
    promote(again, "training", third, runs["second"])  # the history goes on from 000002
    names = [
        p.rsplit("/", 1)[-1][:6]
        for p in again.fs.ls(f"{again.root}/pipelines/training/champion_history", detail=False)
    ]
    assert sorted(names) == ["000001", "000002", "000003"]


def test_old_champion_of_a_named_pipeline_moves_to_that_pipeline(store: RunStore) -> None:
    runs = write_old_layout(store, spec="churn")
    assert store.champion("churn")["version"] == runs["second"]  # type: ignore[index]
    assert store.champion("training") is None
    assert len(store.champion_history("churn")) == 2


def test_an_interrupted_migration_is_finished_by_the_next_call(
    store: RunStore, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """History first, pointer last, old files removed after: a cut anywhere is resumable."""
    runs = write_old_layout(store)
    cut = RunStore(store.url)
    real_write = cut._atomic_write

    def fail_on_pointer(path: str, data: bytes) -> None:
        if path.endswith("/champion.json"):
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(cut, "_atomic_write", fail_on_pointer)
    with pytest.raises(RunStoreError, match="previous layout.*No space"):
        cut.champion("training")
    assert "champion.json" in old_files(store)  # the old pointer is still the truth
    assert not store.fs.exists(f"{store.root}/pipelines/training/champion.json")
    capsys.readouterr()

    resumed = RunStore(store.url)
    assert resumed.champion("training")["version"] == runs["second"]  # type: ignore[index]
    assert len(resumed.champion_history("training")) == 2  # copied once, not twice
    assert old_files(store) == []
    assert capsys.readouterr().err.count("\n") == 1


# -- racing processes ---------------------------------------------------------------------------
def race_for_champion(
    url: str, version: str, expected: str | None, barrier: object, results: object
) -> None:
    """One process of the race: wait for the others, then try to move the champion."""
    store = RunStore(url)
    barrier.wait(timeout=120)  # type: ignore[attr-defined]
    try:
        promote(store, "churn", version, expected)
        results.put((version, "won"))  # type: ignore[attr-defined]
    except RunStoreError:
        results.put((version, "lost"))  # type: ignore[attr-defined]


def test_racing_processes_move_the_champion_once_per_round(tmp_path: Path) -> None:
    """8 processes released together, 3 rounds: exactly one wins each, the history is gap-free."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    store = RunStore(tmp_path / "runs")
    racers, winners = 8, []
    for round_ in range(3):
        expected = winners[-1] if winners else None
        barrier, results = ctx.Barrier(racers), ctx.Queue()
        versions = [f"v{round_}-{i}" for i in range(racers)]
        procs = [
            ctx.Process(target=race_for_champion, args=(store.url, v, expected, barrier, results))
            for v in versions
        ]
        for proc in procs:
            proc.start()
        outcomes = dict(results.get(timeout=120) for _ in procs)
        for proc in procs:
            proc.join(timeout=60)
            assert proc.exitcode == 0
        won = [v for v, outcome in outcomes.items() if outcome == "won"]
        assert len(won) == 1, outcomes
        winners.append(won[0])
        assert store.champion("churn")["version"] == won[0]  # type: ignore[index]
    history = store.champion_history("churn")
    assert [(e["from_version"], e["to_version"]) for e in history] == list(
        zip([None, *winners[:-1]], winners, strict=True)
    )
    folder = tmp_path / "runs" / "pipelines" / "churn" / "champion_history"
    assert sorted(p.name[:6] for p in folder.glob("*.json")) == ["000001", "000002", "000003"]


def test_a_move_cut_between_its_two_writes_leaves_the_history_at_the_champion(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """History first, pointer second: a cut in between is not a change, and leaves no gap."""
    promote(store, "churn", "v1", None)
    real_write = store._atomic_write

    def fail_on_pointer(path: str, data: bytes) -> None:
        if path.endswith("/champion.json"):
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(store, "_atomic_write", fail_on_pointer)
    with pytest.raises(RunStoreError, match="it is unchanged"):
        promote(store, "churn", "v2", "v1")
    monkeypatch.undo()
    assert [e["to_version"] for e in store.champion_history("churn")] == ["v1"]

    # A process killed between the two writes: its change is on disk, the pointer is not.
    folder = store.pipeline_path("churn", "champion_history")
    event = {"from_version": "v1", "to_version": "v-killed", "reason": "gate"}
    store.fs.pipe_file(f"{folder}/000002-{new_version_id()}.json", json.dumps(event).encode())
    assert [e["to_version"] for e in store.champion_history("churn")] == ["v1"]
    promote(store, "churn", "v3", "v1")
    assert [e["to_version"] for e in store.champion_history("churn")] == ["v1", "v3"]
    names = sorted(p.rsplit("/", 1)[-1][:6] for p in store.fs.ls(folder, detail=False))
    assert names == ["000001", "000002"]


def crown(version: str, expected: str | None) -> ChampionMove:
    return ChampionMove(
        "churn", {"version": version, "bento_tag": f"churn:{version}"}, expected, "gate", "test"
    )


def test_an_accepted_run_is_listed_and_crowned_in_one_step(store: RunStore) -> None:
    """The run record names the pointer it set; the history ends at it."""
    store.begin("v1")
    final = store.finalize(
        "v1", {"status": "accepted", "pipeline": "churn"}, crown=crown("v1", None)
    )
    assert final["champion_after"]["version"] == "v1"
    assert store.get_run("v1")["champion_after"] == store.champion("churn")
    assert [e["to_version"] for e in store.champion_history("churn")] == ["v1"]


def test_a_refused_crown_lists_nothing(store: RunStore) -> None:
    """A champion moved meanwhile: no run record is written, the caller records a failure."""
    promote(store, "churn", "v1", None)
    store.begin("v2")
    with pytest.raises(RunStoreError, match="moved from None to v1"):
        store.finalize("v2", {"status": "accepted", "pipeline": "churn"}, crown=crown("v2", None))
    assert store.list_runs("churn") == []
    store.finalize("v2", {"status": "failed", "pipeline": "churn"})  # still writable


@pytest.mark.parametrize("point", ["write:run.json", "write:champion.json"])
def test_a_full_disk_during_the_crown_leaves_the_run_unlisted_and_the_champion_unchanged(
    store: RunStore, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    promote(store, "churn", "v1", None)
    store.begin("v2")
    monkeypatch.setenv(FAULT_ENV_VAR, f"enospc:{point}")
    with pytest.raises(RunStoreError, match="it is unchanged"):
        store.finalize("v2", {"status": "accepted", "pipeline": "churn"}, crown=crown("v2", "v1"))
    monkeypatch.delenv(FAULT_ENV_VAR)
    assert store.list_runs("churn") == []
    assert store.champion("churn")["version"] == "v1"  # type: ignore[index]
    assert [e["to_version"] for e in store.champion_history("churn")] == ["v1"]
    promote(store, "churn", "v3", "v1")  # the next move works, numbered without a gap
    assert [e["to_version"] for e in store.champion_history("churn")] == ["v1", "v3"]


def crown_then_die(url: str) -> None:
    store = RunStore(url)
    store.begin("v2")
    store.finalize("v2", {"status": "accepted", "pipeline": "churn"}, crown=crown("v2", "v1"))


def test_a_run_killed_between_its_record_and_the_pointer_becomes_champion(tmp_path: Path) -> None:
    """The record says the run became champion: the next reader completes the move."""
    import multiprocessing
    import os
    import signal

    store = RunStore(tmp_path / "runs")
    promote(store, "churn", "v1", None)
    os.environ[FAULT_ENV_VAR] = "kill:champion-move"
    try:
        proc = multiprocessing.get_context("spawn").Process(
            target=crown_then_die, args=(store.url,)
        )
        proc.start()
        proc.join(timeout=120)
    finally:
        del os.environ[FAULT_ENV_VAR]
    assert proc.exitcode == -signal.SIGKILL
    pointer = json.loads((tmp_path / "runs/pipelines/churn/champion.json").read_text())
    assert pointer["version"] == "v1"  # the pointer write never happened
    assert store.get_run("v2")["status"] == "accepted"

    assert store.champion("churn")["version"] == "v2"  # type: ignore[index]
    assert [e["to_version"] for e in store.champion_history("churn")] == ["v1", "v2"]
    promote(store, "churn", "v3", "v2")
    assert [e["to_version"] for e in store.champion_history("churn")] == ["v1", "v2", "v3"]

from __future__ import annotations

from pathlib import Path

import pytest

from flows.errors import RunStoreError
from flows.store import RunStore, new_version_id


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
    assert store.champion() is None
    store.set_champion(
        {"version": "v1", "model_tag": "m:1"}, expected=None, reason="gate", triggered_by="t"
    )
    store.set_champion(
        {"version": "v2", "model_tag": "m:2"}, expected="v1", reason="gate", triggered_by="t"
    )
    assert store.champion()["version"] == "v2"  # type: ignore[index]
    with pytest.raises(RunStoreError, match="champion moved"):
        store.set_champion({"version": "v3"}, expected="v1", reason="gate", triggered_by="t")
    assert store.champion()["version"] == "v2"  # type: ignore[index]
    history = store.champion_history()
    assert [(h["from_version"], h["to_version"]) for h in history] == [(None, "v1"), ("v1", "v2")]


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

    import flows.store

    moments = iter(
        [datetime(2026, 1, 2, 3, 4, 5, 100_000, UTC), datetime(2026, 1, 2, 3, 4, 5, 900_000, UTC)]
    )
    suffixes = iter(["ffffff", "000000"])  # the later run draws the smaller suffix

    class Clock(datetime):
        @classmethod
        def now(cls, tz: object = None) -> datetime:  # type: ignore[override]
            return next(moments)

    monkeypatch.setattr(flows.store, "datetime", Clock)
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(suffixes))
    first, second = new_version_id(), new_version_id()
    assert sorted([second, first]) == [first, second]
    assert first.startswith("v20260102-030405100-")


def test_reruns_are_recorded_next_to_the_version_they_reuse(store: RunStore) -> None:
    version = new_version_id()
    store.begin(version)
    with pytest.raises(RunStoreError, match="not found"):
        store.add_rerun(version, {"at": "then"})  # not finalised: nothing to answer with
    store.finalize(version, {"status": "completed"})
    assert store.reruns(version) == []
    store.add_rerun(version, {"at": "first"})
    store.add_rerun(version, {"at": "second"})
    assert [r["at"] for r in store.reruns(version)] == ["first", "second"]
    assert store.files(version) == ["run.json"]  # the finalised version itself is untouched


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
    """What flows.uptodate needs of a local store works without fsspec (0.1 s+ to import)."""
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
        f"s.add_rerun({version!r}, {{'at': 'now'}})\n"
        "print('fsspec' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert [r["at"] for r in store.reruns(version)] == ["now"]

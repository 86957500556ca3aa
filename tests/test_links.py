"""The links in Prefect artifacts (flows.links): local store, base URL, object store."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from flows.errors import ConfigError
from flows.links import (
    DEFAULT_UI_PORT,
    PUBLIC_URL_ENV,
    UI_PORT_ENV,
    base_url,
    public_url,
    resolve_links,
    signing_problem,
    store_path,
)
from flows.store import RunStore

VERSION = "v20260101-000000000-abcdef"


class SigningMemoryFileSystem(MemoryFileSystem):
    """fsspec's memory filesystem with ``sign`` implemented as object stores do (s3fs, gcsfs):
    an https URL carrying its expiry. fsspec's own memory filesystem cannot sign."""

    protocol = "signmem"

    def sign(self, path: str, expiration: int = 100, **kwargs: Any) -> str:
        return (
            f"https://objects.example/{self._strip_protocol(path).lstrip('/')}?Expires={expiration}"
        )


@pytest.fixture(autouse=True)
def _no_link_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PUBLIC_URL_ENV, raising=False)
    monkeypatch.delenv(UI_PORT_ENV, raising=False)


def test_local_store_links_to_the_local_nbprod_ui(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs")
    url = public_url(store, VERSION, "reports/data_drift.html")
    assert url == f"http://127.0.0.1:{DEFAULT_UI_PORT}/versions/{VERSION}/reports/data_drift.html"
    assert public_url(store, VERSION) == f"http://127.0.0.1:{DEFAULT_UI_PORT}/versions/{VERSION}/"
    # Names are quoted; no link leaves the store's layout.
    assert store_path(VERSION, "notebooks/my nb.html").endswith("notebooks/my%20nb.html")
    resolved = resolve_links({"report": url})
    assert resolved.urls == {"report": url} and resolved.expires is None
    assert "`nbprod ui`" in str(resolved.notice)


def test_port_and_base_url_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RunStore(tmp_path / "runs")
    monkeypatch.setenv(UI_PORT_ENV, "4999")
    assert public_url(store, VERSION, "run.json").startswith("http://127.0.0.1:4999/versions/")
    monkeypatch.setenv(PUBLIC_URL_ENV, "https://runs.example.com/nbprod/")
    url = public_url(store, VERSION, "reports/data_drift.html")
    assert url == f"https://runs.example.com/nbprod/versions/{VERSION}/reports/data_drift.html"
    assert resolve_links({"r": url}).notice is None  # a team's server: nothing to add
    # The base URL wins for an object store too: the team serves the bucket.
    assert public_url(RunStore("memory://linked"), VERSION, "run.json").startswith(
        "https://runs.example.com/nbprod/versions/"
    )


def test_a_bad_setting_is_an_error_for_the_command_and_a_warning_for_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PUBLIC_URL_ENV, "runs.example.com")
    with pytest.raises(ConfigError, match="NBPROD_PUBLIC_URL='runs.example.com' is not an http"):
        base_url()
    url = public_url(RunStore(tmp_path / "runs"), VERSION, "run.json")
    assert url.startswith(f"http://127.0.0.1:{DEFAULT_UI_PORT}/")


def test_object_store_links_are_signed_when_published_with_their_expiry() -> None:
    fsspec.register_implementation("signmem", SigningMemoryFileSystem, clobber=True)
    store = RunStore("signmem://bucket/runs")
    assert signing_problem(store) is None
    url = public_url(store, VERSION, "reports/data_drift.html")
    assert url == f"signmem://bucket/runs/versions/{VERSION}/reports/data_drift.html"
    published = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    resolved = resolve_links({"data_drift report": url}, now=published)
    signed = resolved.urls["data_drift report"]
    assert urlsplit(signed).scheme == "https"
    assert parse_qs(urlsplit(signed).query)["Expires"] == [str(7 * 24 * 3600)]
    assert resolved.expires == "link expires at 2026-01-08 12:00 UTC"
    assert "signed signmem URLs: they expire at 2026-01-08 12:00 UTC (7 days after" in str(
        resolved.notice
    )


def test_object_store_that_cannot_sign_links_to_nbprod_ui_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = RunStore("memory://unsigned/runs")
    assert signing_problem(store) == "fsspec's MemoryFileSystem cannot make signed URLs"
    with caplog.at_level("WARNING", logger="nbprod"):
        url = public_url(store, VERSION, "reports/data_drift.html")
    assert url == f"http://127.0.0.1:{DEFAULT_UI_PORT}/versions/{VERSION}/reports/data_drift.html"
    assert (
        "run store memory://unsigned/runs: no signed URLs (fsspec's MemoryFileSystem cannot "
        "make signed URLs); links point to nbprod ui at http://127.0.0.1:4280: run "
        "`nbprod ui --store memory://unsigned/runs`"
    ) in caplog.text
    # A URL that fails to sign at publishing is kept, and the summary says so.
    resolved = resolve_links({"report": "memory://unsigned/runs/x.html"})
    assert resolved.urls["report"] == "memory://unsigned/runs/x.html"
    assert "Could not sign: report: NotImplementedError" in str(resolved.notice)


def test_s3_store_links_are_signed_by_s3fs_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real S3 filesystem (s3fs) signs locally: an https URL with its expiry, no request sent
    (the endpoint is a closed local port, so any request would fail)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDNBPRODTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    store = RunStore("s3://nbprod-runs/team")
    assert signing_problem(store) is None
    url = public_url(store, VERSION, "reports/data_drift.html")
    assert url == f"s3://nbprod-runs/team/versions/{VERSION}/reports/data_drift.html"
    published = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    resolved = resolve_links({"data_drift report": url}, now=published)
    signed = urlsplit(resolved.urls["data_drift report"])
    assert signed.path.endswith(f"/team/versions/{VERSION}/reports/data_drift.html")
    query = parse_qs(signed.query)
    assert query["AWSAccessKeyId"] == ["AKIDNBPRODTEST"] and query["Signature"][0]
    assert int(query["Expires"][0]) > datetime.now(UTC).timestamp()
    assert resolved.expires is not None and resolved.expires.startswith("link expires at ")
    assert "not-a-real-secret" not in resolved.urls["data_drift report"]

"""Addresses of stored run files that a browser opens from the Prefect UI.

Browsers never open ``file://`` links from an http page, and a path on a worker's disk means
nothing to a Prefect server elsewhere, so every link is an http(s) URL, chosen in this order:

1. ``NBPROD_PUBLIC_URL`` set: ``<base>/versions/<version>/<file>``, the run store's own layout,
   so any web server that serves the store folder (``nbprod ui``, nginx, a bucket's website
   endpoint) answers it.
2. A local run store: the local ``nbprod ui`` address, ``http://127.0.0.1:<NBPROD_UI_PORT>``.
3. An object store: the object store's own URL, signed by fsspec when the artifacts are
   published (:func:`resolve_links`), so the artifact states the exact expiry. A filesystem
   that cannot sign (fsspec's default ``sign`` raises NotImplementedError) gets the local
   ``nbprod ui`` address instead (``nbprod ui --store URL`` serves any fsspec store) and the
   artifact says why.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from flows.errors import ConfigError
from flows.run_records import check_version

if TYPE_CHECKING:
    from flows.store import RunStore

PUBLIC_URL_ENV = "NBPROD_PUBLIC_URL"
UI_PORT_ENV = "NBPROD_UI_PORT"
UI_HOST = "127.0.0.1"
DEFAULT_UI_PORT = 4280
# S3's longest presigned URL (SigV4): a week. The artifact states the resulting time.
SIGNED_URL_TTL_S = 7 * 24 * 3600
WEB_SCHEMES = ("http", "https")


def ui_port() -> int:
    """The port ``nbprod ui`` listens on by default: ``$NBPROD_UI_PORT``, else 4280."""
    raw = os.environ.get(UI_PORT_ENV, "").strip()
    if not raw:
        return DEFAULT_UI_PORT
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"{UI_PORT_ENV}={raw!r} is not a port number (1-65535)")
    return int(raw)


def local_ui_url(port: int | None = None) -> str:
    """The address of ``nbprod ui`` on this machine."""
    return f"http://{UI_HOST}:{port or ui_port()}"


def base_url() -> str | None:
    """``$NBPROD_PUBLIC_URL`` without its trailing slash, or None when unset."""
    raw = os.environ.get(PUBLIC_URL_ENV, "").strip()
    if not raw:
        return None
    if urlsplit(raw).scheme not in WEB_SCHEMES or not urlsplit(raw).netloc:
        raise ConfigError(
            f"{PUBLIC_URL_ENV}={raw!r} is not an http(s) URL: set it to the address that serves "
            "the run store folder, e.g. https://runs.example.com/nbprod"
        )
    return raw.rstrip("/")


def store_path(version: str, *parts: str) -> str:
    """A version's file as a URL path relative to the store root (a folder ends with ``/``)."""
    rel = "/".join(p.strip("/") for p in parts if p.strip("/"))
    return f"versions/{check_version(version)}/" + quote(rel, safe="/")


def public_url(store: RunStore, version: str, *parts: str) -> str:
    """The link to a stored file (no ``parts``: the version's page) for the Prefect UI.

    An object store's link is its fsspec URL here, signed later by :func:`resolve_links`. A
    bad ``NBPROD_PUBLIC_URL`` or ``NBPROD_UI_PORT`` is logged, never fails a run.
    """
    try:
        base, local = base_url(), local_ui_url()
    except ConfigError as exc:
        local = local_ui_url(DEFAULT_UI_PORT)
        _warn_once(f"{exc}; links point to nbprod ui at {local} instead")
        base = None
    if base is None and not store.is_local:
        problem = signing_problem(store)
        if problem is None:
            return store.uri(version, *(parts or ("run.json",)))
        _warn_once(
            f"run store {store.url}: no signed URLs ({problem}); links point to nbprod ui at "
            f"{local}: run `nbprod ui --store {store.url}` or set {PUBLIC_URL_ENV}"
        )
    return f"{base or local}/{store_path(version, *parts)}"


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        import logging

        _warned.add(message)
        logging.getLogger("nbprod").warning(message)


def signing_problem(store: RunStore) -> str | None:
    """Why fsspec cannot sign URLs of this store (None when it can)."""
    try:
        store.fs.sign(store.version_path("v0", "run.json"), expiration=SIGNED_URL_TTL_S)
    except NotImplementedError:
        return f"fsspec's {type(store.fs).__name__} cannot make signed URLs"
    except Exception as exc:  # missing credentials and the like: each backend has its own
        return f"signing failed: {type(exc).__name__}: {exc}"
    return None


@dataclass(frozen=True)
class ResolvedLinks:
    """Links a browser opens, and a sentence on when they stop working (None: they do not)."""

    urls: dict[str, str]
    notice: str | None = None
    expires: str | None = None  # "expires at 2026-12-13 10:00 UTC" for signed links


def resolve_links(
    links: Mapping[str, str], *, now: datetime | None = None, ttl_s: int = SIGNED_URL_TTL_S
) -> ResolvedLinks:
    """Sign the object-store URLs among ``links`` (made by :func:`public_url`) for publishing."""
    now = now or datetime.now(UTC)
    urls: dict[str, str] = {}
    signed: set[str] = set()
    problems: list[str] = []
    for name, url in links.items():
        scheme = urlsplit(url).scheme
        if scheme in WEB_SCHEMES or scheme in ("", "file"):
            urls[name] = url
            continue
        try:
            import fsspec

            fs, path = fsspec.core.url_to_fs(url)
            urls[name] = fs.sign(path, expiration=ttl_s)
            signed.add(scheme)
        except Exception as exc:
            urls[name] = url
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
    notes = []
    try:
        local = local_ui_url()
    except ConfigError:
        local = local_ui_url(DEFAULT_UI_PORT)
    if any(url == local or url.startswith(local + "/") for url in urls.values()):
        notes.append(
            f"Links open while `nbprod ui` runs on the machine that ran this ({local}; "
            f"`--store URL` for another run store), or set {PUBLIC_URL_ENV} to a web server "
            "that serves the run store."
        )
    expires = None
    if signed:
        until = (now + timedelta(seconds=ttl_s)).strftime("%Y-%m-%d %H:%M UTC")
        expires = f"link expires at {until}"
        notes.append(
            f"Links are signed {', '.join(sorted(signed))} URLs: they expire at {until} "
            f"({_duration(ttl_s)} after publishing). For lasting links set {PUBLIC_URL_ENV} to a "
            "web server that serves the run store."
        )
    if problems:
        notes.append("Could not sign: " + "; ".join(problems))
    return ResolvedLinks(urls, " ".join(notes) or None, expires)


def _duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    return f"{days} days" if days and not rest else f"{seconds // 3600} h"


__all__ = [
    "DEFAULT_UI_PORT",
    "PUBLIC_URL_ENV",
    "UI_PORT_ENV",
    "ResolvedLinks",
    "base_url",
    "local_ui_url",
    "public_url",
    "resolve_links",
    "signing_problem",
    "store_path",
    "ui_port",
]

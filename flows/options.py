"""Command-line pieces shared by every command module (standard library only at import).

Why a module of its own: command modules (serving, history, promote, ...) need the same options
and helpers as ``flows.cli``, which assembles them; importing ``flows.cli`` from them would make
a cycle.
"""

from __future__ import annotations

import argparse
import ast
from collections.abc import Sequence
from typing import Any


class UsageError(Exception):
    """A command-line value that cannot be used as given."""


def parse_assignment(text: str) -> tuple[str, Any]:
    """``k=v`` with v read as a Python literal when it is one (5, 0.1, True), else a string."""
    if "=" not in text:
        raise UsageError(f"--param {text!r} is not NAME=VALUE: write e.g. --param max_depth=4")
    name, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return name.strip(), value


def open_store(url: str | None) -> Any:
    """The run store named on the command line, else the configured one."""
    from flows.settings import load_settings
    from flows.store import RunStore

    return RunStore(url or load_settings().resolved_run_store_url)


def add_store_option(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--store URL`` for every command that reads or writes the run store."""
    parser.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="run store: folder or fsspec URL (default: $NBPROD_RUN_STORE_URL or .nbprod/runs)",
    )
    return parser


def add_pipeline_option(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--pipeline NAME`` for every command that works on one pipeline's runs or champion."""
    parser.add_argument(
        "--pipeline",
        default=None,
        metavar="NAME",
        help="pipeline (deployments/NAME.yaml); default: the project's only training "
        "pipeline, else 'training'",
    )
    return parser


def resolve_pipeline(args: argparse.Namespace) -> str:
    """The pipeline a command works on: ``--pipeline``, else the project's default."""
    given = getattr(args, "pipeline", None)
    if given:
        from flows.run_records import check_pipeline_name

        return check_pipeline_name(str(given))  # it names a file and a store folder
    from flows.spec import default_pipeline

    return default_pipeline()


# Flags declared with add_duration_option: their value may be a duration before now (-24h).
DURATION_OPTIONS: set[str] = set()


def add_duration_option(parser: argparse.ArgumentParser, flag: str, help: str) -> None:
    """``flag WHEN``: a date, or a duration before now written as ``-24h`` (see join_durations)."""
    parser.add_argument(flag, default=None, metavar="WHEN", help=help)
    DURATION_OPTIONS.add(flag)


def join_durations(argv: Sequence[str]) -> list[str]:
    """``--start -24h`` as ``--start=-24h`` for the duration options, so it parses as written.

    Why: argparse reads a separate value that starts with ``-`` as an option (only a plain
    number such as ``-24`` is taken as a value), and fails with "expected one argument".
    """
    out: list[str] = []
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--":
            return out + tokens[i:]
        value = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token in DURATION_OPTIONS and value[:1] == "-" and value[1:2].isdigit():
            out.append(f"{token}={value}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out

"""``nbprod gc``: remove what failed, rejected, killed or unlisted runs left behind.

Only the standard library is imported at module level: ``register_commands`` runs for every
``nbprod --help``.
"""

from __future__ import annotations

import argparse
from typing import Any

from flows.options import add_store_option


def cmd_gc(args: argparse.Namespace) -> int:
    raise NotImplementedError


def register_commands(subparsers: Any) -> None:
    """Add ``gc`` to ``nbprod``'s parser."""
    gc = add_store_option(
        subparsers.add_parser(
            "gc",
            help="remove scratch folders, partial versions, and the bentos and models of "
            "failed, rejected or unlisted runs (never a champion's or an accepted version's)",
        )
    )
    gc.add_argument("--dry-run", action="store_true", help="list what would go, remove nothing")
    gc.add_argument("--json", action="store_true", help="machine-readable output")
    gc.set_defaults(func=cmd_gc)

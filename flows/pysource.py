"""Parsing Python source from the threads of one process.

CPython 3.11 keeps the AST constructor's recursion counter per interpreter, not per thread: two
threads turning source into ``ast`` objects at once can fail with "SystemError: AST constructor
recursion depth mismatch" (python/cpython#106905; seen here when a grid's notebook tasks, run in
threads, each parsed their notebook's cells). nbprod's parses take turns on one lock; each takes
milliseconds.
"""

from __future__ import annotations

import ast
import threading

_PARSE_LOCK = threading.Lock()


def parse_source(source: str, filename: str = "<unknown>") -> ast.Module:
    """``ast.parse``, one thread at a time (SyntaxError as ``ast.parse`` raises it)."""
    with _PARSE_LOCK:
        return ast.parse(source, filename=filename)

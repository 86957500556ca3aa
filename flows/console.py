"""What ``nbprod`` prints: usage errors, failures as one line, and how much of Prefect's log.

Only the standard library at import: ``nbprod --help`` builds its parser from here.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, NoReturn

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_REJECTED = 0, 1, 2, 3

EXIT_CODES_EPILOG = f"""\
exit status:
  {EXIT_OK}  accepted or completed
  {EXIT_ERROR}  error: one line on stderr, `nbprod: error: ...`, naming the stage, notebook
     and cell where there is one, and what to do
  {EXIT_USAGE}  usage error (an unknown option, a missing or invalid argument)
  {EXIT_REJECTED}  rejected by the gate or the infra check (`nbprod run`)
With --json, an error is {{"error": ..., "type": ...}} on stdout, with the same exit status.
A failed run's traceback is in the run's log (Prefect UI); -v/--verbose also prints it here.
"""

VERBOSE_HELP = "also print Prefect's errors and tracebacks of a failed run (always in its log)"

# Loggers of a flow or task run (Prefect's engine and get_run_logger): their records also go to
# the run's log in the Prefect server, through the API handler Prefect attaches to them.
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class CommandLineParser(argparse.ArgumentParser):
    """argparse's parser; with ``json_errors``, a usage error is JSON on stdout (exit 2)."""

    def __init__(self, *args: Any, json_errors: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.json_errors = json_errors

    def add_subparsers(self, **kwargs: Any) -> Any:
        """Subcommands report usage errors as their parent does."""
        kwargs.setdefault("parser_class", partial(type(self), json_errors=self.json_errors))
        return super().add_subparsers(**kwargs)

    def error(self, message: str) -> NoReturn:
        if self.json_errors:
            print(json.dumps({"error": message, "type": "UsageError"}))
            self.exit(EXIT_USAGE)
        super().error(message)


def add_verbose_option(parser: argparse.ArgumentParser, subparsers: Any) -> None:
    """``-v/--verbose`` before the command (``nbprod -v run``) or after it (``nbprod run -v``)."""
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    for command in {id(p): p for p in subparsers.choices.values()}.values():
        command.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP
        )


def report_failure(args: argparse.Namespace, exc: BaseException, kind: str, message: str) -> None:
    """``nbprod: KIND: MESSAGE`` on stderr; with ``--json``, ``{"error", "type"}`` on stdout
    instead, so a script reading stdout always gets JSON. ``--verbose`` adds the traceback."""
    if getattr(args, "verbose", False):
        traceback.print_exception(exc, file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"error": message, "type": type(exc).__name__}))
    else:
        print(f"nbprod: {kind}: {message}", file=sys.stderr)


class RunErrorsOffConsole(logging.Filter):
    """Drops a flow or task run's errors (a failure's traceback above all) from the terminal.

    Attached to the console handler only: the run's log in the Prefect server keeps them, and
    nbprod prints the failure itself, as one line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        run_record = record.name.startswith(RUN_LOGGERS)
        return not (run_record and record.levelno >= logging.ERROR)


RUN_ERRORS_OFF_CONSOLE = RunErrorsOffConsole()


@contextmanager
def run_errors_on_console(verbose: bool) -> Iterator[None]:
    """Unless ``verbose``, keep run errors off Prefect's console handler while in this block
    (see RunErrorsOffConsole). Enter once Prefect is imported: that attaches the handler."""
    from prefect.logging.handlers import PrefectConsoleHandler

    handlers = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    if not verbose:
        for handler in handlers:
            handler.addFilter(RUN_ERRORS_OFF_CONSOLE)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(RUN_ERRORS_OFF_CONSOLE)

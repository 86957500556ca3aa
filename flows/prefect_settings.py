"""Prefect settings for the flows nbprod's commands run in their own process.

Flow-run heartbeats (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, on by default since Prefect 3.9)
let an automation mark a run whose process vanished as crashed; Prefect joins the heartbeat
thread when a flow ends, which costs up to 1 s per run. A command's flow run ends with the
command, in the user's terminal, so its heartbeats are off unless the user set a frequency
(environment, profile or ``prefect.toml``). Deployment runs keep whatever the worker sets.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

HEARTBEAT_SETTING = "flows.heartbeat_frequency"


def command_flow_settings() -> AbstractContextManager[Any]:
    """Prefect's current settings with flow-run heartbeats off unless configured."""
    from prefect.settings import temporary_settings

    return temporary_settings(set_defaults={HEARTBEAT_SETTING: None})

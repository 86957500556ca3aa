"""flows.prefect_settings: a command's flow runs without heartbeats unless the user set them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = (
    "from prefect import flow\n"
    "from prefect.settings import get_current_settings\n"
    "from flows.prefect_settings import command_flow_settings\n"
    "@flow\n"
    "def probe():\n"
    "    return get_current_settings().flows.heartbeat_frequency\n"
    "print(get_current_settings().flows.heartbeat_frequency)\n"
    "with command_flow_settings():\n"
    "    print(probe())\n"
)


def heartbeat_frequencies(**env: str) -> list[str]:
    """Prefect's heartbeat frequency outside, then inside a flow run under the command settings."""
    environ = {k: v for k, v in os.environ.items() if "HEARTBEAT" not in k}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        env={**environ, **env},
        cwd=ROOT,
        timeout=300,
        check=True,
    )
    return proc.stdout.split()[-2:]


def test_heartbeats_are_off_in_a_command_flow_run_unless_configured(prefect_server: None) -> None:
    from prefect.settings import PREFECT_API_URL

    api = {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
    assert heartbeat_frequencies(**api) == ["180", "None"]  # Prefect 3.9's default, then off
    configured = heartbeat_frequencies(**api, PREFECT_FLOWS_HEARTBEAT_FREQUENCY="60")
    assert configured == ["60", "60"]  # the user's setting wins

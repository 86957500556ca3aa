"""flows.kernel_client against real ipykernel kernels: ready, connected, and honest when dead."""

from __future__ import annotations

import asyncio
import queue
from pathlib import Path
from typing import Any

import pytest

from flows import kernels
from flows.kernel_client import ReadyKernelClient

pytestmark = pytest.mark.integration


def started_kernel(tmp_path: Path) -> Any:
    """A fresh kernel's started AsyncKernelManager (nbprod's: it hands out ReadyKernelClient)."""
    return kernels.start_kernel("python3", tmp_path, kernels.kernel_environment(1))


async def stream_text(client: ReadyKernelClient, code: str) -> str:
    """Run ``code``; what the kernel printed for this request, read from IOPub."""
    msg_id = client.execute(code)
    printed = []
    while True:
        msg = await client.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            printed.append(msg["content"]["text"])
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return "".join(printed)


def test_a_ready_client_sees_the_first_requests_output(tmp_path: Path) -> None:
    """Ready means IOPub is connected: the output of the first request is not lost."""
    manager = started_kernel(tmp_path)

    async def check() -> tuple[str, bool]:
        client = manager.client()
        assert isinstance(client, ReadyKernelClient)
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=60)
            printed = await stream_text(client, "print('hello from the kernel')")
            try:  # nothing left over from the kernel_info round trips
                leftover = await client.get_iopub_msg(timeout=0)
            except queue.Empty:
                leftover = None
            return printed, leftover is None
        finally:
            client.stop_channels()

    try:
        printed, drained = asyncio.run(check())
    finally:
        kernels.stop_kernel(manager).result(60)
    assert printed == "hello from the kernel\n"
    assert drained


def test_waiting_on_a_dead_kernel_raises_instead_of_hanging(tmp_path: Path) -> None:
    manager = started_kernel(tmp_path)
    kernels.on_kernel_loop(manager.shutdown_kernel(now=True)).result(60)

    async def wait() -> None:
        client = manager.client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=30)
        finally:
            client.stop_channels()

    with pytest.raises(RuntimeError, match="died"):
        asyncio.run(wait())

"""What a Prefect server recorded of a flow run, read through Prefect's client."""

from __future__ import annotations

from typing import Any
from uuid import UUID


def read_artifacts(flow_run_id: str) -> list[Any]:
    """Every artifact the flow run created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)])
            )
        )


def run_summary(flow_run_id: str) -> str:
    """The markdown of the flow run's ``nbprod-run-summary`` artifact."""
    return next(a.data for a in read_artifacts(flow_run_id) if a.key == "nbprod-run-summary")

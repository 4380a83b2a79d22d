"""Read artifacts back from the test Prefect server, all of them, filtered on the server.

The session's server collects artifacts from every flow test; an unfiltered read returns only
the API's first page, so a test that looks for its own artifact must filter or page.
"""

from __future__ import annotations

from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.client.schemas.objects import Artifact

PAGE = 200


async def read_artifacts(
    key_like: str | None = None, flow_run_id: str | None = None
) -> list[Artifact]:
    """Every artifact whose key contains ``key_like`` and/or that ``flow_run_id`` created."""
    artifact_filter = ArtifactFilter(
        key=ArtifactFilterKey(like_=key_like) if key_like else None,
        flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)]) if flow_run_id else None,
    )
    found: list[Artifact] = []
    async with get_client() as client:
        while True:
            page = await client.read_artifacts(
                artifact_filter=artifact_filter, limit=PAGE, offset=len(found)
            )
            found.extend(page)
            if len(page) < PAGE:
                return found

"""What GET /v1/index shows each caller: an admin key sees the whole index; any other key sees
the counts of what it can read, and the versions and last ingest time without other tenants'
counts."""

from __future__ import annotations

from serve_app.auth import Caller
from serve_app.index_status.protocol import IndexStatus, IndexVersion
from serve_app.stages import Stages


class IndexStatusService:
    def __init__(self, stages: Stages):
        self.stages = stages

    async def status(self, caller: Caller) -> IndexStatus:
        everything = caller.admin
        found = await self.stages.index_status(None if everything else caller.access.read_filter())
        versions = [
            IndexVersion(**(v if everything else {k: v[k] for k in ("version", "created_at", "served", "embedding_model")}))
            for v in found["versions"]
        ]
        last = found["last_ingest"]
        if last is not None and not everything:
            last = {k: last[k] for k in ("finished_at", "age_s") if k in last}
        return IndexStatus(
            scope="all" if everything else "tenant",
            tenant=None if everything else caller.access.tenant,
            index_version=found["index_version"],
            embedding_model=found["embedding_model"],
            created_at=found["created_at"],
            chunks=found["chunks"],
            documents=found["documents"],
            sources=found["sources"],
            versions=versions,
            last_ingest=last,
        )

"""The uploads registry as one detached Ray actor on the head node, where the ingest driver, the
index's manifest and its writer lock live: every Ingress replica, on any node, reaches the same
registry by name, and uploads travel to the head through Ray's object store, with no shared disk.
A background thread follows the running ingest job and starts the next one."""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from rag_core.access import Access
from rag_core.logs import configure_json_logging
from rag_core.settings import RAGSettings
from serve_app.documents.registry import RayJobs, UnknownId, Upload, UploadRegistry, UploadRejected, start_run_loop
from serve_app.stages import ServiceUnavailable

log = logging.getLogger("serve_app.documents")

NAMESPACE = "rag-documents"
# Ray gives the head node this resource; a sliver of it pins the actor there.
HEAD_NODE_RESOURCE = "node:__internal_head__"


class DocumentRegistryActor:
    def __init__(self, settings: RAGSettings):
        configure_json_logging()
        self.registry = UploadRegistry(settings, RayJobs(settings.documents.ray_dashboard))
        self._stop = start_run_loop(self.registry)

    def configure(self, settings: RAGSettings) -> None:
        self.registry.configure(settings, RayJobs(settings.documents.ray_dashboard))

    def stage(self, access: Access, uploads: list[Upload], metadata: dict[str, Any], uploaded_by: str, admin: bool) -> dict[str, Any]:
        return self.registry.stage(access, uploads, metadata, uploaded_by, admin)

    def delete(self, access: Access, admin: bool, doc: str) -> dict[str, Any]:
        return self.registry.delete(access, admin, doc)

    def documents(self, access: Access, admin: bool, include_deleted: bool) -> list[dict[str, Any]]:
        return self.registry.documents(access, admin, include_deleted)

    def document(self, access: Access, admin: bool, doc: str) -> dict[str, Any]:
        return self.registry.document(access, admin, doc)

    def job(self, access: Access, admin: bool, job: str) -> dict[str, Any]:
        return self.registry.job(access, admin, job)

    def status(self) -> dict[str, Any]:
        return {**self.registry.status(), "time": time.time()}


def registry_actor_name(settings: RAGSettings) -> str:
    """One registry per uploads folder (so per index); two services on one cluster keep theirs apart."""
    return "uploads-" + hashlib.sha256(str(settings.uploads_dir).encode()).hexdigest()[:16]


class ActorRegistry:
    """The DocumentService's way to the registry on a cluster: calls on the actor, which the first
    document request creates on the head node (or finds, by name, when another replica did). Lazy,
    so an app whose callers never use the document API starts no actor. Detached, so it outlives
    redeploys of the app; restarted by Ray if it dies, reading its state back from disk."""

    def __init__(self, settings: RAGSettings):
        self.settings = settings
        self._actor: Any = None

    def _handle(self) -> Any:
        if self._actor is None:
            self._actor = (
                ray.remote(DocumentRegistryActor)
                .options(
                    name=registry_actor_name(self.settings),
                    namespace=NAMESPACE,
                    get_if_exists=True,
                    lifetime="detached",
                    num_cpus=0,
                    resources={HEAD_NODE_RESOURCE: 0.001},
                    max_restarts=-1,
                    max_concurrency=8,
                )
                .remote(self.settings)
            )
            self._actor.configure.remote(self.settings)  # it may have been created by an earlier deployment
        return self._actor

    async def call(self, method: str, *args: Any) -> Any:
        try:
            return await getattr(self._handle(), method).remote(*args)
        except RayTaskError as exc:  # the registry's own errors (refusals, unknown ids) as raised there
            if isinstance(exc.cause, UploadRejected | UnknownId):
                raise exc.cause from None
            raise
        except RayActorError as exc:
            # Dead or restarting: ask for it again next time (by name; Ray restarts it from its disk state).
            self._actor = None
            raise ServiceUnavailable(f"the document registry is restarting, retry shortly ({type(exc).__name__})", 5) from None

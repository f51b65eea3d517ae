"""The document API's logic in the Ingress: checks an upload before any byte leaves the replica,
decides the tenant and groups from the caller's key, and asks the registry actor on the head node."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.formparsers import MultiPartException

from rag_core.access import Access, AccessError
from rag_core.settings import RAGSettings
from rag_core.sidecar import validate_sidecar
from serve_app.auth import Caller
from serve_app.documents.protocol import DeletionAccepted, Document, DocumentList, IngestJob, UploadAccepted
from serve_app.documents.registry import UnknownId, Upload, UploadRejected, check_filename
from serve_app.http_common import ClientError, Forbidden, NotFound


class DocumentService:
    def __init__(self, registry: Any, settings: RAGSettings):
        """`registry`: where the registry runs, with `async call(method, *args)`: the head node's
        actor (serve_app.documents.actor.ActorRegistry) or this process (in_process.InProcessRegistry)."""
        self.registry = registry
        self.settings = settings

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            return await self.registry.call(method, *args)
        except UploadRejected as exc:
            raise ClientError(exc.status, str(exc)) from None
        except UnknownId as exc:
            raise NotFound(f"no document or job {exc.args[0]!r} for this API key") from None

    def upload_access(self, caller: Caller, tenant: str | None, groups: str | None) -> Access:
        """The caller's tenant and groups; an admin key may name others, any key may narrow its groups."""
        try:
            wanted_groups = [g.strip() for g in groups.split(",") if g.strip()] if groups is not None else None
            if tenant is not None and tenant != caller.access.tenant:
                if not caller.admin:
                    raise Forbidden("only an admin key may upload for another tenant")
                return Access.of(tenant, wanted_groups or [])
            if wanted_groups is None:
                return caller.access
            if not caller.admin and not set(wanted_groups) <= set(caller.access.groups):
                raise Forbidden("this API key may only give documents groups it belongs to")
            if not caller.admin and not wanted_groups and caller.access.groups:
                raise Forbidden("a document open to the whole tenant (no groups) needs an admin key")
            return Access.of(caller.access.tenant, wanted_groups)
        except AccessError as exc:
            raise ClientError(422, str(exc)) from None

    def upload_metadata(self, metadata: str | None) -> dict[str, Any]:
        if not metadata:
            return {}
        try:
            value = validate_sidecar(json.loads(metadata))
        except ValueError as exc:
            raise ClientError(422, f"metadata: {exc}") from None
        for key in ("tenant", "groups"):
            if key in value:
                raise ClientError(422, f"metadata: {key!r} is set by the API key (admins: the form field {key!r})")
        return value

    async def upload(self, request: Request, caller: Caller) -> UploadAccepted:
        """The multipart body is read here, after the key and its rate limit were checked: a caller
        without a valid key never gets a large body parsed."""
        limits = self.settings.documents
        try:
            async with request.form(max_files=limits.max_files, max_fields=8) as form:
                files = form.getlist("files")
                fields = {name: form.get(name) for name in ("metadata", "tenant", "groups")}
                if not files:
                    raise ClientError(422, "no files: send them as the multipart field 'files'")
                if not all(isinstance(file, StarletteUploadFile) for file in files):
                    raise ClientError(422, "'files' must be file parts (with a filename)")
                if any(value is not None and not isinstance(value, str) for value in fields.values()):
                    raise ClientError(422, "'metadata', 'tenant' and 'groups' must be text fields")
                access = self.upload_access(caller, fields["tenant"], fields["groups"])
                metadata = self.upload_metadata(fields["metadata"])
                uploads = [await self._read(file) for file in files]
        except MultiPartException as exc:
            raise ClientError(422, f"invalid multipart body: {exc.message}") from None
        staged = await self._call("stage", access, uploads, metadata, caller.name, caller.admin)
        return UploadAccepted.model_validate(staged)

    async def _read(self, file: StarletteUploadFile) -> Upload:
        limits = self.settings.documents
        try:
            name = check_filename(file.filename, self.settings.ingest.extensions)
        except UploadRejected as exc:
            raise ClientError(exc.status, str(exc)) from None
        max_bytes = int(limits.max_file_mb * 2**20)
        data = await file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ClientError(413, f"{name!r} is over the {limits.max_file_mb:g} MB limit of a file")
        if not data:
            raise ClientError(422, f"{name!r} is empty")
        return Upload(name, data)

    async def documents(self, caller: Caller, include_deleted: bool) -> DocumentList:
        found = await self._call("documents", caller.access, caller.admin, include_deleted)
        return DocumentList(documents=[Document.model_validate(d) for d in found])

    async def document(self, caller: Caller, doc: str) -> Document:
        return Document.model_validate(await self._call("document", caller.access, caller.admin, doc))

    async def delete(self, caller: Caller, doc: str) -> DeletionAccepted:
        document = Document.model_validate(await self._call("delete", caller.access, caller.admin, doc))
        purge = self.settings.documents.purge_deleted
        if document.status == "deleted" and document.deleted_in_version is None:
            effective = "now: it never reached the index"
            job = None
        elif document.status == "deleted":
            effective = f"since index version {document.deleted_in_version}"
            job = document.job_id
        else:
            job = document.job_id
            effective = (
                f"when job {job} has succeeded (GET /v1/ingest/jobs/{job}): its index version no longer holds the document, "
                "and every replica and cached answer moves to that version within seconds"
            )
        return DeletionAccepted(document=document, job_id=job, effective=effective, kept_versions_purged=purge)

    async def job(self, caller: Caller, job: str) -> IngestJob:
        return IngestJob.model_validate(await self._call("job", caller.access, caller.admin, job))

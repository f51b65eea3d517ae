"""Who may read a chunk: a tenant and optional groups per document, stored on every chunk, and the
filter that confines a caller to what it may read. Ingest writes the fields; serving enforces them.

A chunk is visible to a caller when the tenants are equal and either the chunk has no groups
(open to the whole tenant) or it shares at least one group with the caller.

Per document, in rising priority: `ingest.default_tenant`, the first `ingest.access` rule whose
folder prefix matches the file's path, and the keys `tenant` / `groups` of its `.meta.json`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)

TENANT_FIELD = "acl_tenant"
OPEN_FIELD = "acl_open"  # true when the document has no groups
GROUP_FIELD_PREFIX = "acl_group__"  # one boolean field per group: Chroma filters cannot search lists
RESERVED_PREFIX = "acl_"


class AccessError(ValueError):
    """An invalid tenant or group name."""


def valid_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise AccessError(f"{what} must match {NAME_PATTERN}: {value!r}")
    return value


@dataclass(frozen=True)
class Access:
    tenant: str
    groups: tuple[str, ...] = ()

    @classmethod
    def of(cls, tenant: Any, groups: Iterable[Any] = ()) -> Access:
        names = tuple(sorted({valid_name(g, "group") for g in groups}))
        return cls(valid_name(tenant, "tenant"), names)

    def chunk_metadata(self) -> dict[str, Any]:
        """The fields written on every chunk of a document with this access."""
        fields: dict[str, Any] = {TENANT_FIELD: self.tenant, OPEN_FIELD: not self.groups}
        fields.update({f"{GROUP_FIELD_PREFIX}{g}": True for g in self.groups})
        return fields

    def read_filter(self) -> dict[str, Any]:
        """A normalized `where` filter (see serve_app.filters) for what this caller may read."""
        visible = [{OPEN_FIELD: {"$eq": True}}] + [{f"{GROUP_FIELD_PREFIX}{g}": {"$eq": True}} for g in self.groups]
        groups = visible[0] if len(visible) == 1 else {"$or": visible}
        return {"$and": [{TENANT_FIELD: {"$eq": self.tenant}}, groups]}

    @property
    def scope_key(self) -> str:
        """Identifies what this caller may read (for cache keys)."""
        return f"{self.tenant}|{','.join(self.groups)}"


def document_access(relative_path: str, sidecar: dict[str, Any], rules: Iterable[Any], default_tenant: str) -> Access:
    """The access of one document: the sidecar's tenant/groups over the first matching rule over
    the default. `rules` have `prefix`, `tenant` and `groups` (rag_core.settings.AccessRule)."""
    tenant, groups = default_tenant, ()
    for rule in rules:
        prefix = rule.prefix.strip("/")
        if not prefix or relative_path == prefix or relative_path.startswith(prefix + "/"):
            tenant, groups = rule.tenant, tuple(rule.groups)
            break
    if "tenant" in sidecar:
        tenant = sidecar["tenant"]
    if "groups" in sidecar:
        value = sidecar["groups"]
        groups = tuple(value) if isinstance(value, list) else (value,)
    return Access.of(tenant, groups)


def combine(access_filter: dict[str, Any] | None, client_filter: dict[str, Any] | None) -> dict[str, Any] | None:
    """The caller's access AND the client's own filter: a client filter can narrow, never widen."""
    if access_filter and client_filter:
        return {"$and": [access_filter, client_filter]}
    return access_filter or client_filter

"""What Office Open XML and OpenDocument files share: the ZIP package, and password protection
(an encrypted OOXML file is an OLE container, opened with msoffcrypto-tool)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence

from rag_core.parsing.base import DocumentParseError

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def open_package(data: bytes, kind: str, passwords: Sequence[str]) -> bytes:
    """The package's ZIP bytes, decrypted when needed; a clear reason when it cannot be opened."""
    if data.startswith(OLE_MAGIC):
        data = _decrypt(data, kind, passwords)
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise DocumentParseError(f"corrupt or truncated .{kind} file (not a readable ZIP package)")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as package:
            broken = package.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DocumentParseError(f"corrupt or truncated .{kind} file: {exc}") from exc
    if broken is not None:
        raise DocumentParseError(f"corrupt .{kind} file: member {broken} fails its checksum")
    return data


def _decrypt(data: bytes, kind: str, passwords: Sequence[str]) -> bytes:
    import msoffcrypto
    from msoffcrypto.exceptions import FileFormatError, InvalidKeyError

    try:
        office = msoffcrypto.OfficeFile(io.BytesIO(data))
        encrypted = office.is_encrypted()
    except Exception as exc:  # not an encrypted OOXML container
        raise DocumentParseError(f"not an Office Open XML .{kind} file (a legacy binary Office file?): {exc}") from exc
    if not encrypted:
        raise DocumentParseError(f"legacy binary Office format, not Office Open XML .{kind}: save it as .{kind}")
    for password in passwords:
        try:
            office.load_key(password=password, verify_password=True)
            out = io.BytesIO()
            office.decrypt(out)
            return out.getvalue()
        except (InvalidKeyError, FileFormatError):
            continue
        except Exception:  # msoffcrypto raises assorted errors for a wrong key on some schemes
            continue
    raise DocumentParseError(f"password-protected .{kind} file: no configured password opens it (ingest.passwords)")

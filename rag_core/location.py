"""Where a chunk sits in its document: the typed location that citations name.

`page` stays a plain integer for clients that only know pages: a PDF's page, a slide's number, a
sheet's position in its workbook, a TIFF frame; 1 for documents without pages (Word, HTML, text).
The other fields say what that number means and narrow it down: the slide, the sheet and its row
range, the heading of the section.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

LocationKind = Literal["page", "slide", "sheet", "section"]
LOCATION_KINDS: tuple[str, ...] = ("page", "slide", "sheet", "section")

# The chunk-metadata keys a location is stored under (flat scalars: Chroma metadata has no nesting),
# prefixed so that they never collide with the natural names users give sidecar keys ("sheet").
_STORED = {
    "kind": "location_kind",
    "slide": "location_slide",
    "sheet": "location_sheet",
    "rows": "location_rows",
    "heading": "location_heading",
}
LOCATION_METADATA_KEYS = frozenset(_STORED.values())


@dataclass(frozen=True)
class Location:
    kind: LocationKind = "page"
    page: int = 1
    slide: int | None = None
    sheet: str | None = None
    rows: str | None = None  # "12-40": the sheet's own row numbers, as a spreadsheet program shows them
    heading: str | None = None  # the section's heading path, outermost first: "Benefits > Vacation"

    def with_rows(self, first: int, last: int) -> Location:
        return replace(self, rows=str(first) if first == last else f"{first}-{last}")

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}

    def to_metadata(self) -> dict[str, Any]:
        """Chunk metadata for Chroma and filters (page is stored apart, as it always was)."""
        metadata: dict[str, Any] = {}
        for field_name, key in _STORED.items():
            value = getattr(self, field_name)
            if value is not None:
                metadata[key] = value
        return metadata

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> Location:
        """The location of a stored chunk; chunks indexed before locations existed are pages."""
        kind = metadata.get(_STORED["kind"], "page")
        slide = metadata.get(_STORED["slide"])
        return cls(
            kind=kind if kind in LOCATION_KINDS else "page",
            page=int(metadata.get("page", 1)),
            slide=int(slide) if isinstance(slide, (int, float)) else None,
            sheet=_text(metadata.get(_STORED["sheet"])),
            rows=_text(metadata.get(_STORED["rows"])),
            heading=_text(metadata.get(_STORED["heading"])),
        )

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Location:
        return cls(**raw)

    def describe(self) -> str:
        """A short human citation: 'page 3', 'slide 2', "sheet 'Q3', rows 2-14", "section 'Intro'"."""
        if self.kind == "section":
            return f"section '{self.heading}'" if self.heading else "text"
        if self.kind == "sheet":
            return f"sheet '{self.sheet}'" + (f", rows {self.rows}" if self.rows else "")
        text = f"slide {self.slide or self.page}" if self.kind == "slide" else f"page {self.page}"
        return f"{text}, '{self.heading}'" if self.heading else text


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None

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

# The chunk-metadata keys a location is stored under (flat scalars: Chroma metadata has no nesting).
LOCATION_METADATA_KEYS = frozenset({"location_kind", "slide", "sheet", "rows", "heading"})


@dataclass(frozen=True)
class Location:
    kind: LocationKind = "page"
    page: int = 1
    slide: int | None = None
    sheet: str | None = None
    rows: str | None = None  # "12-40": the sheet's own row numbers, as a spreadsheet program shows them
    heading: str | None = None  # the section's heading path, outermost first: "Benefits > Vacation"

    def with_rows(self, first: int, last: int) -> "Location":
        return replace(self, rows=str(first) if first == last else f"{first}-{last}")

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}

    def to_metadata(self) -> dict[str, Any]:
        """Chunk metadata for Chroma and filters (page is stored apart, as it always was)."""
        metadata: dict[str, Any] = {"location_kind": self.kind}
        for key in ("slide", "sheet", "rows", "heading"):
            value = getattr(self, key)
            if value is not None:
                metadata[key] = value
        return metadata

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> "Location":
        """The location of a stored chunk; chunks indexed before locations existed are pages."""
        kind = metadata.get("location_kind", "page")
        slide = metadata.get("slide")
        return cls(
            kind=kind if kind in LOCATION_KINDS else "page",
            page=int(metadata.get("page", 1)),
            slide=int(slide) if slide is not None else None,
            sheet=metadata.get("sheet"),
            rows=metadata.get("rows"),
            heading=metadata.get("heading"),
        )

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Location":
        return cls(**raw)

    def describe(self) -> str:
        """A short human citation: 'page 3', 'slide 2', "sheet 'Q3', rows 2-14", "section 'Intro'"."""
        if self.kind == "slide":
            text = f"slide {self.slide or self.page}"
        elif self.kind == "sheet":
            text = f"sheet '{self.sheet}'" + (f", rows {self.rows}" if self.rows else "")
        elif self.kind == "section":
            text = f"section '{self.heading}'" if self.heading else "text"
            return text
        else:
            text = f"page {self.page}"
        if self.heading and self.kind != "sheet":
            text += f", '{self.heading}'"
        return text

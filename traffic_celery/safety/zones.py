"""Named zones and masks of one camera, and which of them a road user is in.

A zone (`crosswalk`, `lane-north`) or a mask (a parking row to ignore) is a polygon in **normalised image
coordinates**: x and y from 0 to 1 across the frame, so one set of zones fits every resolution the camera may send
(and the page draws them over whatever size the video has). A road user is in a zone when its box's bottom-centre
(where it touches the road) is inside or on the edge of the polygon; a masked road user is neither grouped nor
assessed. Geometry is shapely's: validity (no self-intersection) and point-in-polygon with edges included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import shapely
from pydantic import BaseModel, ConfigDict, Field, field_validator
from shapely.geometry import Point, Polygon
from shapely.validation import explain_validity

from traffic_celery.vision.types import BBox

ZONE_NAME = r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,47}$"
MAX_POINTS = 64
MIN_AREA = 1e-5  # of the frame: a polygon smaller than this is a slip of the mouse, not a zone

NormPoint = tuple[float, float]


def check_inside_frame(points: Sequence[NormPoint], what: str) -> None:
    for i, (x, y) in enumerate(points):
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise ValueError(f"{what} point {i} ({x}, {y}) is outside the frame: coordinates are fractions of "
                             f"the frame's width and height, from 0 to 1")


class Zone(BaseModel):
    """A named polygon: `kind` zone (road users in it carry its name) or mask (road users in it are ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=ZONE_NAME, description="letters, digits, space, '_', '-', '.'; 1-48 characters")
    kind: Literal["zone", "mask"] = "zone"
    points: list[NormPoint] = Field(min_length=3, max_length=MAX_POINTS,
                                    description="[x, y] pairs, fractions of the frame's width and height (0-1)")

    @field_validator("points")
    @classmethod
    def _valid_polygon(cls, points: list[NormPoint]) -> list[NormPoint]:
        check_inside_frame(points, "the")
        polygon = Polygon(points)
        # points all on one line (or repeated) are not "crossing edges": say what is wrong with them first
        if polygon.convex_hull.area < MIN_AREA:
            raise ValueError(f"the polygon has no area ({polygon.convex_hull.area:.2g} of the frame); give at least "
                             f"three points that are not on one line")
        if not polygon.is_valid:
            raise ValueError(f"the polygon is not simple ({explain_validity(polygon)}): its edges may not cross; "
                             f"click the points in order around the area")
        if polygon.area < MIN_AREA:
            raise ValueError(f"the polygon has no area ({polygon.area:.2g} of the frame); give at least three points "
                             f"that are not on one line")
        return points

    def polygon(self) -> Polygon:
        return Polygon(self.points)


def bottom_centre(bbox: BBox, width: int, height: int) -> NormPoint:
    """Where a box touches the road, in normalised coordinates."""
    return ((bbox[0] + bbox[2]) / 2 / max(width, 1), bbox[3] / max(height, 1))


class ZoneSet:
    """The zones and masks of one camera, prepared for fast point queries."""

    def __init__(self, zones: Sequence[Zone] = ()):
        names = [z.name for z in zones]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"zone names must be unique; repeated: {', '.join(duplicates)}")
        self.zones = [z for z in zones if z.kind == "zone"]
        self.masks = [z for z in zones if z.kind == "mask"]
        self._zone_polys = [z.polygon() for z in self.zones]
        self._mask_polys = [z.polygon() for z in self.masks]
        for poly in self._zone_polys + self._mask_polys:
            shapely.prepare(poly)

    def __bool__(self) -> bool:
        return bool(self.zones or self.masks)

    def zones_at(self, point: NormPoint) -> list[str]:
        """Names of the zones that contain `point` (edges included), in the order they were given."""
        p = Point(point)
        return [z.name for z, poly in zip(self.zones, self._zone_polys, strict=True) if poly.covers(p)]

    def masked(self, point: NormPoint) -> bool:
        p = Point(point)
        return any(poly.covers(p) for poly in self._mask_polys)

    def of_box(self, bbox: BBox, width: int, height: int) -> tuple[bool, list[str]]:
        """(masked, zones) of a road user by its box's bottom-centre."""
        point = bottom_centre(bbox, width, height)
        return self.masked(point), self.zones_at(point)

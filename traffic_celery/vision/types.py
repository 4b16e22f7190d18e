"""The project's own value types. ultralytics results and LLM text are converted into these once, at the edge.

Their `to_event` methods give the camelCase shapes of the WebSocket protocol (README, "The web tier").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from traffic_celery.protocol import ConflictFacts

VEHICLE_CLASSES = frozenset({"bicycle", "car", "motorcycle", "bus", "truck", "train"})
PEDESTRIAN_CLASSES = frozenset({"person"})

BBox = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels


@dataclass(frozen=True)
class Detection:
    """One detected object in one frame."""

    track_id: int | None  # stable across frames with tracking (None until the track is confirmed); the index
    # within the frame without tracking
    cls: str
    confidence: float
    bbox: BBox
    zones: tuple[str, ...] = ()  # the camera's zones its bottom-centre is in
    masked: bool = False  # in a mask: shown, never grouped nor assessed
    speed: float | None = None  # smoothed: km/h on a calibrated camera, else object heights/s

    @property
    def width(self) -> float:
        return self.bbox[2] - self.bbox[0]

    @property
    def height(self) -> float:
        return self.bbox[3] - self.bbox[1]

    @property
    def is_vehicle(self) -> bool:
        return self.cls in VEHICLE_CLASSES

    @property
    def is_pedestrian(self) -> bool:
        return self.cls in PEDESTRIAN_CLASSES

    def to_event(self) -> dict[str, Any]:
        event: dict[str, Any] = {"trackId": self.track_id, "class": self.cls,
                                 "confidence": round(self.confidence, 3), "bbox": [round(v, 1) for v in self.bbox],
                                 "zones": list(self.zones),
                                 "speed": None if self.speed is None else round(self.speed, 2)}
        if self.masked:
            event["masked"] = True
        return event


@dataclass(frozen=True)
class GroupFeatures:
    """What the prompt states about a group, in units of object height so that resolution does not matter."""

    object_count: int
    class_counts: dict[str, int]
    min_gap: float  # smallest gap between two members, in heights of the smaller one (0 = touching/overlapping)
    pedestrian_vehicle_gap: float | None  # same, only between a pedestrian and a vehicle; None without such pair
    approach_speed: float | None = None  # fastest closing speed of a pair with a vehicle, heights/s (<0: apart)
    time_to_contact: float | None = None  # shortest gap / closing speed of such a pair, seconds; None: none closing
    zones: tuple[str, ...] = ()  # every zone one of its members is in
    conflict: ConflictFacts | None = None  # its worst pair's near-miss metrics (safety.conflicts)

    def to_dict(self) -> dict[str, Any]:
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 3)

        return {"objectCount": self.object_count, "classCounts": dict(self.class_counts),
                "minGap": round(self.min_gap, 3), "pedestrianVehicleGap": rounded(self.pedestrian_vehicle_gap),
                "approachSpeed": rounded(self.approach_speed), "timeToContact": rounded(self.time_to_contact),
                "zones": list(self.zones), "conflict": None if self.conflict is None else self.conflict.to_wire()}


@dataclass(frozen=True)
class TrafficGroup:
    """Objects close enough to interact."""

    group_id: str
    group_index: int
    members: tuple[Detection, ...]
    bbox: BBox
    features: GroupFeatures
    risk_level: str | None = None

    @property
    def member_ids(self) -> list[int]:
        """Track ids of the members that have one (unconfirmed tracks have none yet)."""
        return [m.track_id for m in self.members if m.track_id is not None]

    @property
    def classes(self) -> list[str]:
        return sorted({m.cls for m in self.members})

    def to_event(self) -> dict[str, Any]:
        return {"groupId": self.group_id, "groupIndex": self.group_index, "objectCount": len(self.members),
                "bbox": [round(v, 1) for v in self.bbox], "classes": self.classes,
                "memberTrackIds": self.member_ids, "riskLevel": self.risk_level,
                "zones": list(self.features.zones),
                "conflict": None if self.features.conflict is None else self.features.conflict.to_wire()}


@dataclass
class FrameAnalysis:
    """Everything the capture loop learnt from one frame."""

    camera_id: str
    timestamp: float
    image_width: int
    image_height: int
    detections: list[Detection]
    groups: list[TrafficGroup] = field(default_factory=list)
    process_time: float = 0.0
    units: str = "relative"  # of speeds and distances: "metric" on a calibrated camera

    def to_event(self, frame_b64: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "cameraId": self.camera_id, "timestamp": self.timestamp, "imageWidth": self.image_width,
            "imageHeight": self.image_height, "detectedObjects": [d.to_event() for d in self.detections],
            "trafficGroups": [g.to_event() for g in self.groups], "processTime": round(self.process_time, 4),
            "units": self.units, "calibrated": self.units == "metric"}
        if frame_b64 is not None:
            data["frame"] = frame_b64
        return data

"""Clusters the detections of one frame into traffic groups.

Two objects are linked when the gap between their boxes is at most `link_factor` times the height of the smaller
of the two: a distance relative to object size, so the same scene gives the same groups at any resolution (the
old system used a fixed 150 px). Groups are the connected components of that relation with at least
`min_size` members; each gets features stated in the same relative unit.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence

from traffic_celery.vision.geometry import relative_box_gap
from traffic_celery.vision.motion import Motion
from traffic_celery.vision.types import BBox, Detection, GroupFeatures, TrafficGroup


def relative_gap(a: Detection, b: Detection) -> float:
    """Gap between two objects in heights of the smaller one."""
    return relative_box_gap(a.bbox, b.bbox)


def _components(n: int, linked: Sequence[tuple[int, int]]) -> list[list[int]]:
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in linked:
        parent[find(i)] = find(j)
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(find(i), []).append(i)
    return list(comps.values())


def group_features(members: Sequence[Detection], motion: Motion | None = None,
                   ts: float = 0.0) -> GroupFeatures:
    """Counts, the smallest gaps inside a group (relative to object height) and, with the camera's track
    history, the fastest approach and the shortest time-to-contact of a pair that includes a vehicle."""
    min_gap = math.inf
    ped_veh = math.inf
    speed: float | None = None
    ttc: float | None = None
    for i, a in enumerate(members):
        for b in members[i + 1:]:
            gap = relative_gap(a, b)
            min_gap = min(min_gap, gap)
            if is_pedestrian_vehicle(a, b):
                ped_veh = min(ped_veh, gap)
            if motion is not None and (a.is_vehicle or b.is_vehicle):
                moving = motion.approach(a, b, ts)
                if moving is not None:
                    speed = moving[0] if speed is None else max(speed, moving[0])
                    if moving[1] is not None:
                        ttc = moving[1] if ttc is None else min(ttc, moving[1])
    return GroupFeatures(
        object_count=len(members),
        class_counts=dict(sorted(Counter(m.cls for m in members).items())),
        min_gap=0.0 if min_gap is math.inf else min_gap,
        pedestrian_vehicle_gap=None if ped_veh is math.inf else ped_veh,
        approach_speed=speed,
        time_to_contact=ttc,
    )


def union_box(members: Sequence[Detection]) -> BBox:
    return (min(m.bbox[0] for m in members), min(m.bbox[1] for m in members),
            max(m.bbox[2] for m in members), max(m.bbox[3] for m in members))


def is_pedestrian_vehicle(a: Detection, b: Detection) -> bool:
    return (a.is_pedestrian and b.is_vehicle) or (a.is_vehicle and b.is_pedestrian)


def group_detections(detections: Sequence[Detection], link_factor: float = 1.0,
                     min_size: int = 2, id_prefix: str = "g", motion: Motion | None = None,
                     ts: float = 0.0, pv_link_factor: float | None = None) -> list[TrafficGroup]:
    """Traffic groups of one frame, ordered left to right (so `groupIndex` is reproducible for a scene). A
    pedestrian and a vehicle link up to `pv_link_factor` (default: `link_factor`), the pair that matters most.
    With the camera's `motion` (and the frame's time `ts`) the features include approach speed and
    time-to-contact."""
    pv_factor = link_factor if pv_link_factor is None else pv_link_factor

    def linked_pair(a: Detection, b: Detection) -> bool:
        return relative_gap(a, b) <= (pv_factor if is_pedestrian_vehicle(a, b) else link_factor)

    linked = [(i, j) for i in range(len(detections)) for j in range(i + 1, len(detections))
              if linked_pair(detections[i], detections[j])]
    comps = [c for c in _components(len(detections), linked) if len(c) >= min_size]
    member_lists = [[detections[i] for i in sorted(c, key=lambda k: detections[k].bbox[0])] for c in comps]
    member_lists.sort(key=lambda ms: (union_box(ms)[0], union_box(ms)[1]))
    return [TrafficGroup(group_id=f"{id_prefix}{index}", group_index=index, members=tuple(ms),
                         bbox=union_box(ms), features=group_features(ms, motion, ts))
            for index, ms in enumerate(member_lists)]


class GroupIds:
    """Gives one camera's groups ids that stay the same while their members persist (alerts then stay with
    their group; the old system's indexes jumped between frames). A group takes the id of the previous frame's
    group it shares the most tracked members with, if they share at least half of the smaller one; a new group
    gets a new id `g<n>`."""

    def __init__(self) -> None:
        self._previous: dict[str, frozenset[int]] = {}
        self._next = 1

    def assign(self, groups: Sequence[TrafficGroup]) -> list[TrafficGroup]:
        members = [frozenset(g.member_ids) for g in groups]
        pairs = sorted(((len(m & prev), gid, i) for i, m in enumerate(members)
                        for gid, prev in self._previous.items()
                        if m & prev and len(m & prev) * 2 >= min(len(m), len(prev))), reverse=True)
        ids: dict[int, str] = {}
        taken: set[str] = set()
        for _overlap, gid, i in pairs:  # greedy, largest overlap first: one id per group and group per id
            if i not in ids and gid not in taken:
                ids[i], taken = gid, taken | {gid}
        for i in range(len(groups)):
            if i not in ids:
                ids[i], self._next = f"g{self._next}", self._next + 1
        self._previous = {ids[i]: m for i, m in enumerate(members)}
        return [dataclasses.replace(g, group_id=ids[i]) for i, g in enumerate(groups)]

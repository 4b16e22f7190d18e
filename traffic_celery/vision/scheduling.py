"""When to ask the LLM about a traffic group: when it matters, not on every sampled frame.

One :class:`AssessmentScheduler` per camera remembers, for each group id, its tracked members and features at its
last assessment. A group in a frame is assessed when:

- `near_miss`: its worst pair (`features.conflict`) crossed a near-miss threshold (severity medium or high) it had
  not reached at the last assessment: asked at once, whatever `min_interval` says;
- `appeared`: its id is new (a new group is never delayed);
- `members_changed`: its set of tracked members differs from the last assessment;
- `worsened`: its pedestrian–vehicle gap or smallest gap shrank by `worsen_ratio` (and by at least
  `MIN_GAP_CHANGE` heights), or it now closes towards contact within `ttc_horizon` seconds, or its
  time-to-contact (or its pair's TTC or PET) shrank by `worsen_ratio`;
- `reassess`: nothing changed for `reassess_interval` seconds.

Groups without a vehicle (people walking together) are not traffic situations: they are never asked about
unless `pedestrian_groups` is on (`TC_ASSESS_PEDESTRIAN_GROUPS`).

Except for a new group, two assessments of one group are at least `min_interval` apart, so tracks that flicker do
not turn into a call per frame. Every group of a frame that is not assessed counts as a call saved, against the
old policy of one call per group per sampled frame.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from traffic_celery.protocol import SEVERITY_RANK
from traffic_celery.settings import Settings
from traffic_celery.vision.types import GroupFeatures, TrafficGroup

APPEARED, MEMBERS_CHANGED, WORSENED, REASSESS = "appeared", "members_changed", "worsened", "reassess"
NEAR_MISS = "near_miss"
REASONS = (NEAR_MISS, APPEARED, MEMBERS_CHANGED, WORSENED, REASSESS)
MIN_GAP_CHANGE = 0.05  # heights: a smaller change of a gap is detector noise


@dataclass(frozen=True)
class _Assessed:
    members: frozenset[int]
    features: GroupFeatures
    at: float


def _shrank(before: float | None, now: float | None, ratio: float) -> bool:
    if now is None:
        return False
    if before is None:
        return True
    return now <= before * (1 - ratio) and before - now >= MIN_GAP_CHANGE


def worsened(before: GroupFeatures, now: GroupFeatures, ratio: float, ttc_horizon: float) -> bool:
    """Whether `now` is worse than `before` past the threshold (see the module docstring)."""
    if now.pedestrian_vehicle_gap is not None and _shrank(before.pedestrian_vehicle_gap,
                                                          now.pedestrian_vehicle_gap, ratio):
        return True
    if _shrank(before.min_gap, now.min_gap, ratio):
        return True
    if before.conflict is not None and now.conflict is not None:
        for metric in ("ttc", "pet"):
            then_value, now_value = getattr(before.conflict, metric), getattr(now.conflict, metric)
            if then_value is not None and now_value is not None and now_value <= then_value * (1 - ratio):
                return True
    ttc = now.time_to_contact
    if ttc is not None and ttc <= ttc_horizon:
        return before.time_to_contact is None or before.time_to_contact > ttc_horizon \
            or ttc <= before.time_to_contact * (1 - ratio)
    return False


def severity(features: GroupFeatures) -> int:
    """The rank (0 none ... 3 high) of the group's worst pair's near-miss severity."""
    conflict = features.conflict
    return 0 if conflict is None or conflict.severity is None else SEVERITY_RANK[conflict.severity]


class AssessmentScheduler:
    """Picks the groups of a frame to assess, and counts calls made (per reason) and saved."""

    def __init__(self, reassess_interval: float = 30.0, min_interval: float = 2.0, worsen_ratio: float = 0.3,
                 ttc_horizon: float = 5.0, pedestrian_groups: bool = True):
        self.reassess_interval = reassess_interval
        self.min_interval = min_interval
        self.worsen_ratio = worsen_ratio
        self.ttc_horizon = ttc_horizon
        self.pedestrian_groups = pedestrian_groups
        self._memory: dict[str, _Assessed] = {}
        self.calls: Counter[str] = Counter()
        self.saved = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> AssessmentScheduler:
        return cls(settings.reassess_interval, settings.assess_min_interval, settings.assess_worsen_ratio,
                   settings.assess_ttc_horizon, settings.assess_pedestrian_groups)

    def reason(self, group: TrafficGroup, now: float) -> str | None:
        """Why `group` is due at `now`, or None if it is not."""
        if not self.pedestrian_groups and not any(m.is_vehicle for m in group.members):
            return None
        last = self._memory.get(group.group_id)
        if severity(group.features) >= SEVERITY_RANK["medium"] and \
                (last is None or severity(group.features) > severity(last.features)):
            return NEAR_MISS
        if last is None:
            return APPEARED
        if now - last.at < self.min_interval:
            return None
        if frozenset(group.member_ids) != last.members:
            return MEMBERS_CHANGED
        if worsened(last.features, group.features, self.worsen_ratio, self.ttc_horizon):
            return WORSENED
        if now - last.at >= self.reassess_interval:
            return REASSESS
        return None

    def pending(self, groups: Sequence[TrafficGroup], now: float) -> list[tuple[TrafficGroup, str]]:
        """The groups of one frame to assess now, with the reason. Nothing is remembered as assessed until
        :meth:`assessed` says the call was really enqueued: a group whose enqueue failed (the broker or Redis
        away) stays due on the next frame instead of waiting for `reassess_interval`."""
        chosen: list[tuple[TrafficGroup, str]] = []
        for group in groups:
            why = self.reason(group, now)
            if why is None:
                self.saved += 1
            else:
                chosen.append((group, why))
        present = {g.group_id for g in groups}  # a group id that is gone never comes back (GroupIds)
        self._memory = {gid: m for gid, m in self._memory.items() if gid in present}
        return chosen

    def assessed(self, group: TrafficGroup, reason: str, now: float) -> None:
        """Record that `group` was sent to the LLM at `now` (its task is on the broker)."""
        self.calls[reason] += 1
        self._memory[group.group_id] = _Assessed(frozenset(group.member_ids), group.features, now)

    def due(self, groups: Sequence[TrafficGroup], now: float) -> list[tuple[TrafficGroup, str]]:
        """:meth:`pending`, each recorded as assessed at `now` (for callers whose sends cannot fail)."""
        chosen = self.pending(groups, now)
        for group, why in chosen:
            self.assessed(group, why, now)
        return chosen

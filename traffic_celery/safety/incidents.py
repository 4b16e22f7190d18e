"""Incidents: one near miss or dangerous verdict, from the moment it opens to the moment it ends.

One :class:`IncidentTracker` per camera, driven by its capture loop (the one process that sees the camera's
every frame, so an incident has exactly one owner and one ordered stream of events):

- **opens** when a pair of road users crosses a near-miss threshold (severity medium or high, from
  `safety.conflicts`), or when an LLM verdict of medium or high arrives for a group that has no open incident;
- **updates** while it lasts: a higher severity, a lower TTC or PET than its worst so far, new zones, a new verdict
  (verdicts of a group whose tracks belong to the incident are attached to it, each once: the callback delivers
  each task's verdict once, see `store.store_assessment`);
- **ends** when nothing kept it open (its pair's near miss, or a verdict of medium or high) for `quiet` seconds:
  the road users separated, or left. Its `end` event goes out once its clip (the post-roll included) is written,
  so `end` is always the last event of an incident and carries the clip.

The tracker only decides; the capture loop draws snapshots, keeps frames for clips, and hands the events to the
recorder (`safety.recorder`), which stores them in the SQL history and publishes them.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from traffic_celery.protocol import (
    SEVERITY_RANK,
    Assessment,
    ConflictFacts,
    Incident,
    IncidentState,
    Severity,
    Verdict,
)

logger = logging.getLogger(__name__)

METRIC_UPDATE_INTERVAL = 1.0  # seconds between two updates that only carry better metrics
METRIC_IMPROVEMENT = 0.1  # a TTC or PET this fraction lower than the worst so far is news

Pair = tuple[int, int]


def badness(metrics: ConflictFacts | None) -> tuple[float, float, float]:
    """Sort key of a moment, lower is worse: the lowest TTC, else the lowest PET, else the closest distance."""
    if metrics is None:
        return (math.inf, math.inf, math.inf)
    return (math.inf if metrics.ttc is None else metrics.ttc, math.inf if metrics.pet is None else metrics.pet,
            metrics.minDistance)


def _max_severity(a: Severity, b: str) -> Severity:
    if SEVERITY_RANK.get(b, 0) > SEVERITY_RANK[a] and b in ("low", "medium", "high"):
        return b  # type: ignore[return-value]  # checked against the literal's values just above
    return a


@dataclass
class Change:
    """An event to send: the incident as it is now, and whether this frame is its worst moment so far (the
    capture loop then keeps this frame, with boxes, as the incident's snapshot)."""

    incident: Incident
    worst_moment: bool = False
    send: bool = True  # False: only a new worst moment (a snapshot to keep), no event yet


@dataclass
class _Open:
    incident: Incident
    pair: Pair | None
    last_active: float
    last_sent: float
    ended_at: float | None = None
    verdict_ids: set[str] = field(default_factory=set)


class IncidentTracker:
    """The open incidents of one camera."""

    def __init__(self, camera_id: str, quiet: float, new_id: Callable[[], str] = lambda: uuid.uuid4().hex):
        self.camera_id = camera_id
        self.quiet = quiet
        self._new_id = new_id
        self._open: dict[str, _Open] = {}  # incident id -> state, open ones only (ended ones are handed over)

    # --- queries -------------------------------------------------------------------------------------------
    def open_incidents(self) -> list[Incident]:
        return [o.incident for o in self._open.values()]

    def incident_for(self, track_ids: Iterable[int]) -> str | None:
        """The open incident that involves any of these tracks (the job of their group carries its id)."""
        tracks = set(track_ids)
        for incident_id, state in self._open.items():
            if tracks & set(state.incident.trackIds):
                return incident_id
        return None

    def earliest_start(self) -> float | None:
        return min((o.incident.startedAt for o in self._open.values()), default=None)

    # --- inputs --------------------------------------------------------------------------------------------
    def observe(self, ts: float, conflicts: dict[Pair, ConflictFacts], zones: dict[int, tuple[str, ...]],
                groups: dict[Pair, str] | None = None) -> list[Change]:
        """One frame's near-miss metrics: open incidents for pairs at medium or high, update the open ones."""
        changes: list[Change] = []
        by_pair = {o.pair: iid for iid, o in self._open.items() if o.pair is not None}
        for pair, metrics in conflicts.items():
            incident_id = by_pair.get(pair)
            severe = metrics.severity is not None and SEVERITY_RANK[metrics.severity] >= SEVERITY_RANK["medium"]
            pair_zones = sorted({z for track in pair for z in zones.get(track, ())})
            if incident_id is None:
                if severe:
                    changes.append(self._open_near_miss(ts, pair, metrics, pair_zones, (groups or {}).get(pair)))
                continue
            state = self._open[incident_id]
            if severe:
                state.last_active = ts
            change = self._merge_metrics(state, ts, metrics, pair_zones)
            if change is not None:
                changes.append(change)
        return changes

    def verdict(self, ts: float, assessment: Assessment,
                seen: dict[int, tuple[str, tuple[str, ...]]] | None = None) -> list[Change]:
        """An LLM verdict about one of this camera's groups: attached to its incident, or opening one. `seen`
        gives the class and zones of the tracks in the current frame (the verdict itself names only track ids)."""
        seen = seen or {}
        classes = {seen[t][0] for t in assessment.memberTrackIds if t in seen}
        zones = {z for t in assessment.memberTrackIds if t in seen for z in seen[t][1]}
        severe = SEVERITY_RANK[assessment.riskLevel] >= SEVERITY_RANK["medium"]
        incident_id = assessment.incidentId if assessment.incidentId in self._open else \
            self.incident_for(assessment.memberTrackIds)
        if incident_id is None and not severe:
            return []
        verdict = Verdict(taskId=assessment.taskId, riskLevel=assessment.riskLevel, riskTypes=assessment.riskTypes,
                          description=assessment.description, confidence=assessment.confidence,
                          llmModel=assessment.llmModel, apiKeyId=assessment.apiKeyId,
                          at=assessment.assessedAt or ts)
        if incident_id is None:
            level: Severity = assessment.riskLevel  # type: ignore[assignment]  # severe: medium or high
            incident = Incident(incidentId=self._new_id(), cameraId=self.camera_id, state=IncidentState.NEW,
                                severity=level, openedBy="verdict", startedAt=ts, updatedAt=ts,
                                groupId=assessment.groupId, trackIds=sorted(assessment.memberTrackIds),
                                classes=sorted(classes), zones=sorted(zones), verdicts=[verdict])
            self._open[incident.incidentId] = _Open(incident, None, ts, ts, verdict_ids={verdict.taskId})
            logger.info("camera %s: incident %s opened by a %s verdict (%s)", self.camera_id, incident.incidentId,
                        level, assessment.description)
            return [Change(incident, worst_moment=True)]
        state = self._open[incident_id]
        if verdict.taskId in state.verdict_ids:
            return []
        state.verdict_ids.add(verdict.taskId)
        if severe:
            state.last_active = max(state.last_active, ts)
        old = state.incident
        state.incident = old.model_copy(update={
            "verdicts": [*old.verdicts, verdict], "severity": _max_severity(old.severity, verdict.riskLevel),
            "updatedAt": ts, "trackIds": sorted(set(old.trackIds) | set(assessment.memberTrackIds)),
            "classes": sorted(set(old.classes) | classes), "zones": sorted(set(old.zones) | zones),
            "state": IncidentState.UPDATE if state.ended_at is None else IncidentState.END})
        if state.ended_at is not None:
            return []  # in its post-roll: the verdict goes out with the end event
        state.last_sent = ts
        return [Change(state.incident)]

    def expire(self, ts: float) -> list[Incident]:
        """Incidents quiet for `quiet` seconds end now (their `end` event waits for the clip's post-roll)."""
        ended = []
        for state in self._open.values():
            if state.ended_at is None and ts - state.last_active >= self.quiet:
                state.ended_at = ts
                state.incident = state.incident.model_copy(update={"state": IncidentState.END, "endedAt": ts,
                                                                   "updatedAt": ts})
                ended.append(state.incident)
                logger.info("camera %s: incident %s ended (quiet for %.1fs)", self.camera_id,
                            state.incident.incidentId, ts - state.last_active)
        return ended

    def finished(self, ts: float, post_roll: float) -> list[Incident]:
        """Ended incidents whose post-roll is over: handed over (clip, then the end event) and forgotten here."""
        done = [iid for iid, o in self._open.items() if o.ended_at is not None and ts >= o.ended_at + post_roll]
        return [self._open.pop(iid).incident for iid in done]

    def flush(self) -> list[Incident]:
        """Every incident, ended now (the camera stops)."""
        incidents = []
        for state in self._open.values():
            ts = state.incident.updatedAt if state.ended_at is None else state.ended_at
            incidents.append(state.incident.model_copy(update={"state": IncidentState.END,
                                                               "endedAt": state.ended_at or ts}))
        self._open.clear()
        return incidents

    # --- internals -----------------------------------------------------------------------------------------
    def _open_near_miss(self, ts: float, pair: Pair, metrics: ConflictFacts, zones: list[str],
                        group_id: str | None) -> Change:
        severity: Severity = metrics.severity or "medium"
        incident = Incident(incidentId=self._new_id(), cameraId=self.camera_id, state=IncidentState.NEW,
                            severity=severity, openedBy="near_miss", startedAt=ts, updatedAt=ts, groupId=group_id,
                            zones=zones, classes=sorted(set(metrics.classes)), trackIds=list(pair),
                            conflictType=metrics.conflictType, metrics=metrics)
        self._open[incident.incidentId] = _Open(incident, pair, ts, ts)
        logger.info("camera %s: incident %s opened by a %s near miss (%s, TTC %s, PET %s)", self.camera_id,
                    incident.incidentId, severity, metrics.conflictType, metrics.ttc, metrics.pet)
        return Change(incident, worst_moment=True)

    def _merge_metrics(self, state: _Open, ts: float, metrics: ConflictFacts, zones: list[str]) -> Change | None:
        if state.ended_at is not None:
            return None
        old = state.incident
        worse = badness(metrics) < badness(old.metrics)
        much_worse = old.metrics is None or any(
            new is not None and (then is None or new <= then * (1 - METRIC_IMPROVEMENT))
            for new, then in ((metrics.ttc, old.metrics.ttc), (metrics.pet, old.metrics.pet)))
        severity = _max_severity(old.severity, metrics.severity or "low")
        new_zones = sorted(set(old.zones) | set(zones))
        kept = metrics if worse else old.metrics
        if kept is not None and old.metrics is not None:  # the closest approach over the whole incident
            kept = kept.model_copy(update={"minDistance": min(metrics.minDistance, old.metrics.minDistance)})
        state.incident = old.model_copy(update={"metrics": kept, "severity": severity, "zones": new_zones,
                                                "updatedAt": ts, "state": IncidentState.UPDATE})
        news = severity != old.severity or new_zones != old.zones or \
            (much_worse and ts - state.last_sent >= METRIC_UPDATE_INTERVAL)
        if not news:
            return Change(state.incident, worst_moment=True, send=False) if worse else None
        state.last_sent = ts
        return Change(state.incident, worst_moment=worse)

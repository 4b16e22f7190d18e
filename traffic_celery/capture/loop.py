"""One camera's capture loop: take the newest frame, detect and track, group, publish, and enqueue assessments.

The source (:mod:`traffic_celery.capture.sources`) keeps only the newest frame and reconnects by itself; its state
changes go to `report` (the capture node records them and publishes `camera_status`). The loop thread
(:class:`CaptureLoop`) wakes every `frame_interval` seconds (a file at `file_pace=fast`: as soon as the next frame
is there), takes its turn (:mod:`traffic_celery.capture.turns`: the loops of a node analyse one frame at a time,
the most overdue first), analyses the newest frame and:

- detects where something moved (:class:`~traffic_celery.vision.gating.MotionGate`: crops of the moving regions,
  the whole frame at keyframes, nothing when the scene is still; `TC_GATE=off`: the whole frame every time), at
  the camera's own input size (`imgsz`) when it has one, and tracks;
- publishes `detection_result` (with the frame as JPEG/base64) on the camera's channel;
- asks the camera's :class:`~traffic_celery.vision.scheduling.AssessmentScheduler` which groups are due, stores each
  due group's crop in Redis with a TTL and hands a job per group to `enqueue` (which puts `assess_group` on the
  chosen key's queue); calls made and saved are counted in `tc:stats:assess`;
- the safety layer: road users get the camera's zones (masked ones are shown but neither grouped nor assessed),
  speeds and, per pair with a vehicle, near-miss metrics (`safety.conflicts`, in metres on a calibrated camera);
  a pair at a near-miss threshold that is not one traffic group becomes a group of its own (`pair-<a>-<b>`), so
  it is assessed at once; the camera's :class:`~traffic_celery.safety.incidents.IncidentTracker` opens, updates
  and ends incidents from those metrics and from the verdicts the callback queues for it, and the process's
  recorder (`safety.recorder`) stores and publishes them, with a snapshot and a clip (`safety.clips`).

Zones, masks, calibration and context are read from the registry's config at every frame
(:meth:`CaptureLoop.reconfigure`): editing them does not restart the camera.

A camera that fails stops only itself, and says why (`camera_status` offline and an `error` event). Redis or
the broker going away is not a camera failure: the loop keeps running, drops the results of the frames it cannot
publish, and resumes with the first frame after they answer.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import redis
from kombu.exceptions import OperationalError
from numpy.typing import NDArray

from traffic_celery import names, store
from traffic_celery.capture.sources import FrameSource, SourceOptions
from traffic_celery.capture.turns import Turns
from traffic_celery.llm import budget
from traffic_celery.protocol import (
    SEVERITY_RANK,
    Assessment,
    CameraState,
    ConflictFacts,
    ErrorCode,
    ErrorEvent,
    EventType,
    GroupFacts,
    Job,
    StreamStopped,
    encode,
)
from traffic_celery.registry import CameraConfig
from traffic_celery.safety import clips
from traffic_celery.safety import recorder as recording
from traffic_celery.safety.calibration import GroundPlane
from traffic_celery.safety.conflicts import ConflictMonitor, Thresholds
from traffic_celery.safety.incidents import Change, IncidentTracker
from traffic_celery.safety.zones import ZoneSet
from traffic_celery.settings import Settings
from traffic_celery.telemetry import instruments
from traffic_celery.vision.detection import Detector
from traffic_celery.vision.gating import GateConfig, MotionGate
from traffic_celery.vision.grouping import GroupIds, group_detections, group_features, union_box
from traffic_celery.vision.motion import Motion
from traffic_celery.vision.scheduling import AssessmentScheduler
from traffic_celery.vision.tracking import Tracker
from traffic_celery.vision.types import Detection, FrameAnalysis, TrafficGroup

logger = logging.getLogger(__name__)

Enqueue = Callable[[Job], str]  # job -> task id
Report = Callable[[CameraState, str], None]  # (state, message)


def encode_jpeg(image: NDArray[np.uint8], quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def crop(frame: NDArray[np.uint8], bbox: tuple[float, float, float, float], pad: float = 0.1) -> NDArray[np.uint8]:
    """The group's box with a margin of `pad` times its size, clipped to the frame."""
    h, w = frame.shape[:2]
    x1, y1, x2, y2 = bbox
    px, py = (x2 - x1) * pad, (y2 - y1) * pad
    return frame[max(0, int(y1 - py)):min(h, int(y2 + py) + 1), max(0, int(x1 - px)):min(w, int(x2 + px) + 1)]


class CaptureLoop:
    """The loop thread of one camera. `stop()` ends it; `done` is set when it has ended for any reason, with
    `ended` (the source is over for good: the camera is marked stopped) or `failed` (a fault of this
    process, for example the model: the node may try again) saying why."""

    def __init__(self, config: CameraConfig, settings: Settings, r: redis.Redis,
                 detector: Callable[[], Detector], enqueue: Enqueue, report: Report | None = None,
                 on_online: Callable[[], None] | None = None, recorder: recording.Recorder | None = None,
                 turns: Turns | None = None):
        self.config = config
        self.camera_id = config.camera_id
        self.url = config.url
        self._settings = settings
        self._redis = r
        self._detector = detector
        self._enqueue = enqueue
        self._report = report or (lambda state, message: None)
        self._on_online = on_online or (lambda: None)
        self._stop = threading.Event()
        self.done = threading.Event()
        self.ended: str | None = None
        self.failed: str | None = None
        self.log = logger.getChild(f"camera.{self.camera_id}")
        self.frames_analysed = 0
        self.tasks_enqueued = 0
        self.first_frame_done: float | None = None  # monotonic times the first and last analyses ended
        self.last_frame_done: float | None = None
        self.source: FrameSource | None = None
        self._tracker: Tracker | None = None  # made in the loop's thread (imports ultralytics)
        self._group_ids = GroupIds()
        self._motion = Motion(settings.motion_window)
        self.gate = MotionGate(GateConfig.from_settings(settings))  # detect where something moved (TC_GATE)
        self.scheduler = AssessmentScheduler.from_settings(settings)
        self._recorder = recorder
        self._turns = turns or Turns()  # the node's, shared by its loops: one analysis at a time, most overdue first
        self._shared_turns = turns is not None
        self._zones = ZoneSet(config.zones)
        self._conflicts = ConflictMonitor(Thresholds.from_settings(settings), settings.track_smoothing_window,
                                          GroundPlane(config.calibration) if config.calibration else None)
        self.incidents = IncidentTracker(self.camera_id, settings.incident_quiet)
        self._ring = clips.FrameRing(settings.clip_pre, settings.clip_pre + settings.clip_max)
        self._snapshots: dict[str, bytes] = {}  # open incident -> its worst moment, not yet handed over
        self.incident_events: collections.Counter[str] = collections.Counter()
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.camera_id}", daemon=True)

    def start(self) -> CaptureLoop:
        self._thread.start()
        return self

    def stop_async(self) -> None:
        """Ask the loop to end; it does within a frame (or when a model load or source open returns)."""
        self._stop.set()
        if self.source is not None:
            self.source.request_stop()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def reconfigure(self, config: CameraConfig) -> None:
        """Take the camera's new zones, masks, calibration and context (same source): used from the next frame."""
        zones = ZoneSet(config.zones)
        if config.calibration != self.config.calibration:
            self._conflicts.set_ground(GroundPlane(config.calibration) if config.calibration else None)
        self._zones, self.config = zones, config
        self.log.info("camera %s reconfigured: %d zones/masks, %s", self.camera_id, len(config.zones),
                      "calibrated" if config.calibration else "uncalibrated")

    def _on_state(self, state: CameraState, message: str) -> None:
        if self._stop.is_set():  # a loop being stopped says nothing more: its camera may be stopped or moved
            return
        if state == CameraState.ONLINE:
            self._on_online()
        self._report(state, message)

    def _run(self) -> None:
        source: FrameSource | None = None
        try:
            options = SourceOptions.from_settings(self._settings, retry_unopened=self.config.verified)
            reconnects = instruments.get().camera_reconnects.labels(self.camera_id)
            turn_wait = instruments.get().turn_wait_seconds
            source = self.source = FrameSource(self.url, options, on_state=self._on_state,
                                               on_reconnect=reconnects.inc).start()
            if self.config.detector == "colour":  # the synthetic scene: ids are stable by colour, no tracker
                from traffic_celery.vision.colour import ColourDetector  # noqa: PLC0415

                detector: Detector | ColourDetector = ColourDetector()
            else:
                detector = self._detector()
                self._tracker = Tracker()
            self.log.info("capture started on %s", self.url)
            seq = 0
            next_at = time.monotonic()
            interval = 0.0 if source.fast else self.config.frame_interval or self._settings.frame_interval
            # a file replayed as fast as possible keeps its own timeline, so the scheduler and the motion
            # features see the file's seconds, not how fast this machine analyses it
            replay_start = time.time() if source.fast else None
            redis_down_since: float | None = None
            while not self._stop.is_set():
                frame, seq_now = source.newest(seq, timeout=max(interval * 4, 1.0))
                if frame is None:
                    if self._stop.is_set():
                        break
                    if not source.alive:
                        self.ended = source.ended or "the reader stopped"
                        break
                    continue
                seq = seq_now
                # the frame's time is when it was read, not when its turn comes (speeds, TTC, incident times)
                taken = time.time() if replay_start is None else replay_start + source.position
                try:
                    asked = time.monotonic()
                    with self._turns.turn(due=next_at):
                        if self._stop.is_set():  # let go while waiting: another node may run the camera now
                            break
                        if self._shared_turns:
                            turn_wait.observe(time.monotonic() - asked)
                        self.analyse(frame, detector, taken)
                    if redis_down_since is not None:
                        self.log.info("Redis and the broker answer again after %.1fs; frames flow again",
                                      time.monotonic() - redis_down_since)
                        redis_down_since = None
                except (redis.RedisError, OperationalError) as exc:  # Redis or the broker away: keep the loop
                    if redis_down_since is None:
                        redis_down_since = time.monotonic()
                        self.log.warning("cannot publish or enqueue (%s); this frame's results are dropped and "
                                         "the loop keeps analysing until Redis answers", exc)
                # keep the cadence on average: a frame that came late (a busy core, a slow read) is made up by
                # the next ones coming sooner, at most one interval's worth, so the camera still gets 1/interval
                # frames a second; beyond that the backlog is dropped, never analysed in a burst
                next_at = max(next_at + interval, time.monotonic() - interval)
                if self._stop.wait(next_at - time.monotonic()):
                    break
            if self.ended is not None and not self._stop.is_set():
                self._finish_source()
            self._flush_incidents()
        except Exception as exc:  # one failing camera must stop only itself, and say why
            self.failed = f"camera {self.camera_id} failed: {exc}"
            self.log.warning("%s", self.failed, exc_info=True)
            self._tell(CameraState.OFFLINE, self.failed, ErrorCode.CAMERA_FAILED)
        finally:
            if source is not None:
                source.stop()
            self.done.set()
            self.log.info("capture ended after %d frames, %d tasks", self.frames_analysed, self.tasks_enqueued)

    def _finish_source(self) -> None:
        """The source is over for good: a source that never opened is an error, a file that ended is a stop."""
        assert self.source is not None
        if self.source.frames_read == 0:
            self._tell(CameraState.OFFLINE, f"camera {self.camera_id}: {self.ended}", ErrorCode.CAMERA_FAILED)
        else:
            store.publish(self._redis, self.camera_id, EventType.STREAM_STOPPED,
                          StreamStopped(cameraId=self.camera_id, reason=self.ended or "the source ended"))

    def _tell(self, state: CameraState, message: str, error_code: ErrorCode) -> None:
        try:
            self._report(state, message)
            store.publish(self._redis, self.camera_id, EventType.ERROR,
                          ErrorEvent(code=error_code, message=message, cameraId=self.camera_id))
        except redis.RedisError:
            self.log.exception("cannot report the failure of camera %s", self.camera_id)

    def analyse(self, frame: NDArray[np.uint8], detector: Detector | Any, ts: float | None = None) -> FrameAnalysis:
        """Detect, track, group, publish and enqueue the due groups, for one frame taken at `ts` (now)."""
        started = time.monotonic()
        ts = time.time() if ts is None else ts
        height, width = frame.shape[:2]
        zones = self._zones
        found = self.gate.detect(frame, ts, detector, self._tracker, self.config.imgsz) \
            if isinstance(detector, Detector) else detector.detect(frame, self._tracker)
        detections = [self._place(d, zones, width, height) for d in found]
        detected = time.monotonic()
        self.frames_analysed += 1
        active = [d for d in detections if not d.masked]
        conflicts = self._conflicts.update(ts, active, width, height)
        speeds = self._conflicts.speeds()
        detections = [d if d.track_id not in speeds else dataclasses.replace(d, speed=speeds[d.track_id])
                      for d in detections]
        active = [d for d in detections if not d.masked]
        groups = self._group_ids.assign(group_detections(
            active, self._settings.group_link_factor, self._settings.min_group_size,
            motion=self._motion, ts=ts, pv_link_factor=self._settings.group_pv_link_factor))
        groups = self._with_safety(groups, active, conflicts, ts)
        self._count(detections, len(groups), detected - started)
        self._motion.observe(ts, active)
        analysis = FrameAnalysis(self.camera_id, ts, width, height, detections, groups,
                                 units=self._conflicts.units)
        changes = self.incidents.observe(ts, conflicts, {d.track_id: d.zones for d in active
                                                         if d.track_id is not None},
                                         self._pair_groups(groups))
        due = self.scheduler.pending(groups, ts)
        sent: list[tuple[TrafficGroup, str]] = []
        for group, reason in due:
            try:
                self._enqueue_group(frame, group, ts, reason)
                sent.append((group, reason))
            except budget.Shed as exc:  # the pool is saturated: a periodic re-assessment waits for its next turn
                self.log.debug("group %s not assessed: %s", group.group_id, exc)
            self.scheduler.assessed(group, reason, ts)  # only now: a failed enqueue leaves the group due
        analysis.process_time = time.monotonic() - started
        jpeg = encode_jpeg(frame, self._settings.frame_jpeg_quality)
        frame_b64 = base64.b64encode(jpeg).decode("ascii")
        pipe = self._redis.pipeline(transaction=False)
        pipe.publish(names.events_channel(self.camera_id),
                     encode(EventType.DETECTION_RESULT, analysis.to_event(frame_b64)))
        for _group, reason in sent:  # shed ones are counted as shed (llm.budget), not as calls
            pipe.hincrby(names.ASSESS_STATS, f"calls:{reason}", 1)
        if len(groups) > len(due):
            pipe.hincrby(names.ASSESS_STATS, "saved", len(groups) - len(due))
        pipe.lpop(names.verdicts_key(self.camera_id), 100)
        replies = pipe.execute()
        seen = {d.track_id: (d.cls, d.zones) for d in active if d.track_id is not None}
        for raw in replies[-1] or []:
            changes += self.incidents.verdict(ts, Assessment.model_validate_json(raw), seen)
        self._ring.add(ts, jpeg, detections, keep_from=self.incidents.earliest_start())
        self._incident_changes(frame, detections, changes, ts)
        self.last_frame_done = time.monotonic()
        if self.first_frame_done is None:
            self.first_frame_done = self.last_frame_done
        return analysis

    # --- the safety layer ----------------------------------------------------------------------------------
    @staticmethod
    def _place(d: Detection, zones: ZoneSet, width: int, height: int) -> Detection:
        if not zones:
            return d
        masked, names_ = zones.of_box(d.bbox, width, height)
        return dataclasses.replace(d, zones=tuple(names_), masked=masked)

    def _with_safety(self, groups: list[TrafficGroup], active: list[Detection],
                     conflicts: dict[tuple[int, int], ConflictFacts], ts: float) -> list[TrafficGroup]:
        """Groups with their zones and worst pair; plus a group per pair at a near-miss threshold (severity low
        or more) whose two road users are not in one group (a fast car is far from the pedestrian it will
        reach)."""
        def worst(pairs: list[ConflictFacts]) -> ConflictFacts | None:
            return min(pairs, key=lambda c: (-SEVERITY_RANK.get(c.severity or "none", 0),
                                             c.ttc if c.ttc is not None else 1e9,
                                             c.pet if c.pet is not None else 1e9, c.distance), default=None)

        out: list[TrafficGroup] = []
        grouped: set[tuple[int, int]] = set()
        for g in groups:
            ids = set(g.member_ids)
            mine = [c for pair, c in conflicts.items() if pair[0] in ids and pair[1] in ids]
            grouped.update(pair for pair in conflicts if pair[0] in ids and pair[1] in ids)
            features = dataclasses.replace(g.features, zones=tuple(sorted({z for m in g.members for z in m.zones})),
                                           conflict=worst(mine))
            out.append(dataclasses.replace(g, features=features))
        by_id = {d.track_id: d for d in active if d.track_id is not None}
        for pair, conflict in sorted(conflicts.items()):
            if pair in grouped or conflict.severity is None or pair[0] not in by_id or pair[1] not in by_id:
                continue
            members = (by_id[pair[0]], by_id[pair[1]])
            features = dataclasses.replace(group_features(members, self._motion, ts),
                                           zones=tuple(sorted({z for m in members for z in m.zones})),
                                           conflict=conflict)
            out.append(TrafficGroup(group_id=f"pair-{pair[0]}-{pair[1]}", group_index=len(out), members=members,
                                    bbox=union_box(members), features=features))
        return out

    @staticmethod
    def _pair_groups(groups: list[TrafficGroup]) -> dict[tuple[int, int], str]:
        found: dict[tuple[int, int], str] = {}
        for g in groups:
            ids = sorted(g.member_ids)
            for i, a in enumerate(ids):
                for b in ids[i + 1:]:
                    found.setdefault((a, b), g.group_id)
        return found

    def _incident_changes(self, frame: NDArray[np.uint8], detections: list[Detection], changes: list[Change],
                          ts: float) -> None:
        """Snapshots at the worst moments; events to the recorder; ended incidents' clips after their post-roll."""
        for change in changes:
            incident = change.incident
            snapshot = None
            if change.worst_moment:
                snapshot = clips.snapshot(frame, detections, set(incident.trackIds))
            if change.send:
                self.incident_events[incident.state] += 1
                self._submit(recording.Job(incident, snapshot=snapshot or self._snapshots.pop(incident.incidentId,
                                                                                              None)))
            elif snapshot is not None:
                self._snapshots[incident.incidentId] = snapshot  # sent with the next event
        for incident in self.incidents.expire(ts):
            self.log.debug("incident %s ended; its clip waits %.1fs of post-roll", incident.incidentId,
                           self._settings.clip_post)
        for incident in self.incidents.finished(ts, self._settings.clip_post):
            self._end(incident)

    def _end(self, incident: Any) -> None:
        ended = incident.endedAt or incident.updatedAt
        start = incident.startedAt - self._settings.clip_pre
        frames = self._ring.between(start, min(ended + self._settings.clip_post, start + self._settings.clip_max))
        fps = clips.frame_rate(frames, 1.0 / (self.config.frame_interval or self._settings.frame_interval))
        self.incident_events[incident.state] += 1
        self._submit(recording.Job(incident, snapshot=self._snapshots.pop(incident.incidentId, None),
                                   frames=frames, fps=fps))

    def _flush_incidents(self) -> None:
        """The loop ends: its open incidents end now, with the frames there are."""
        for incident in self.incidents.flush():
            self._end(incident)

    def _submit(self, job: recording.Job) -> None:
        if self._recorder is not None:
            self._recorder.submit(job)
        else:  # no recorder (a bare loop in a test or a benchmark): publish only
            store.publish_incident(self._redis, job.incident)

    def _count(self, detections: list[Any], groups: int, seconds: float) -> None:
        metrics = instruments.get()
        metrics.frames_analysed.labels(self.camera_id).inc()
        metrics.detection_seconds.observe(seconds)
        for cls, count in collections.Counter(d.cls for d in detections).items():
            metrics.objects.labels(cls).inc(count)
        if groups:
            metrics.groups.labels(self.camera_id).inc(groups)

    def _enqueue_group(self, frame: NDArray[np.uint8], group: TrafficGroup, ts: float, reason: str) -> None:
        image_key = store.store_image(self._redis, encode_jpeg(crop(frame, group.bbox), 85),
                                        self._settings.image_ttl)
        try:
            self._enqueue(Job(cameraId=self.camera_id, groupId=group.group_id, groupIndex=group.group_index,
                              imageKey=image_key, features=GroupFacts.model_validate(group.features.to_dict()),
                              memberTrackIds=group.member_ids, frameTimestamp=ts, reason=reason,
                              context=self.config.context,
                              incidentId=self.incidents.incident_for(group.member_ids)))
        except budget.Shed:
            self._redis.delete(image_key)  # nobody will read the crop
            raise
        self.tasks_enqueued += 1

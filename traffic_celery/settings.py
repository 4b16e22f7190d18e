"""The one typed settings object of the project: every configurable value, read from `TC_*` env vars.

Nothing else in the code base reads the environment for configuration. Processes get their settings with
:func:`get_settings` (cached) and pass them down explicitly; tests build a :class:`Settings` directly.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_MODEL_NAME = "shared/models/yolov8n_int8.tflite"
DEMO_KEYS_FILE = REPO_ROOT / "config" / "keys.demo.yaml"
DEFAULT_MEDIA_DIR = REPO_ROOT / ".media"


def _default_model() -> str:
    """The offline COCO model in `../shared/models/` (beside the checkout or one of its parents) if it is there,
    else ultralytics' own default, which it downloads on a machine with internet."""
    for folder in REPO_ROOT.parents:
        candidate = folder / SHARED_MODEL_NAME
        if candidate.exists():
            return str(candidate)
    return "yolo11n.pt"


class Settings(BaseSettings):
    """All settings, env prefix `TC_` (for example `TC_REDIS_URL`, `TC_FRAME_INTERVAL`)."""

    model_config = SettingsConfigDict(env_prefix="TC_", extra="forbid", validate_default=True)

    # --- Redis / broker -------------------------------------------------------------------------------------
    redis_url: str | None = Field(
        default=None, description="Redis for results, images, events. Unset: the launcher probes redis_probe_url, "
        "else starts the embedded redis-server. Processes started without it use redis_probe_url.")
    redis_probe_url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis tried when redis_url is unset.")
    broker_url: str | None = Field(default=None, description="Celery broker; defaults to redis_url.")
    events_url: str | None = Field(
        default=None, description="Where Celery's monitoring events (Flower) go; default: the broker when it is Redis, "
        "else redis_url (Kafka carries no events: it has no fanout).")
    kafka_poll_interval: float = Field(
        default=0.1, gt=0, le=10, description="Kafka broker: seconds a worker waits on one queue (topic) before it "
        "polls the next; a worker visits its queues in turn, so this bounds the wait of a task on a quiet queue.")
    redis_timeout: float = Field(default=5.0, gt=0, le=60, description="Socket timeout for Redis calls, seconds.")
    visibility_timeout: int = Field(
        default=300, ge=10, description="Seconds before an unacknowledged task is redelivered (Redis broker).")

    # --- Kafka backlog: each key queue's consumer lag, for the router and /metrics (broker/kafka_lag.py) -----
    kafka_lag_ttl: float = Field(
        default=1.0, ge=0, le=60, description="Kafka broker: seconds a measured queue backlog (consumer lag) is "
        "reused before the broker is asked again (two round trips for all queues); 0: measured at every read.")
    kafka_lag_timeout: float = Field(
        default=1.0, gt=0, le=30, description="Kafka broker: seconds one backlog measurement waits for the broker; "
        "past it the last known values stay (asked again after 5 s at the earliest).")

    # --- Capture and detection ------------------------------------------------------------------------------
    frame_interval: float = Field(default=0.5, gt=0, le=60, description="Seconds between analysed frames per camera.")
    yolo_model: str = Field(default_factory=_default_model, description="Any file ultralytics loads; "
                            "relative paths are resolved from the repository root.")
    yolo_conf: float = Field(default=0.3, gt=0, lt=1, description="Minimum detection confidence.")
    yolo_imgsz: int = Field(default=640, ge=32, le=4096, description="Inference image size.")
    yolo_interpreters: int = Field(default=32, ge=1, le=256, description="Input shapes a .tflite model keeps "
                                   "planned (vision.litert), one interpreter of about 25 MB each, made as new "
                                   "shapes come: 32 hold nearly every crop shape of a busy scene (5% of a gated "
                                   "frame's CPU against 8, for up to 600 MB more per capture process).")
    yolo_classes: list[str] = Field(
        default=["person", "bicycle", "car", "motorcycle", "bus", "truck"],
        description="COCO class names kept, spelled as the model spells them.")
    group_link_factor: float = Field(
        default=1.0, gt=0, le=10, description="Two objects are in one group when the gap between their boxes is at "
        "most this many times the smaller object's height (so grouping does not depend on resolution).")
    group_pv_link_factor: float = Field(
        default=1.5, gt=0, le=10, description="The same for a pedestrian and a vehicle, the pair that matters most: "
        "they group from further apart.")
    assess_pedestrian_groups: bool = Field(
        default=False, description="Also send groups without any vehicle (people walking together) to the LLM; off: "
        "they are shown, and counted as calls saved.")
    min_group_size: int = Field(default=2, ge=1, le=50, description="Objects needed to form a traffic group.")
    reassess_interval: float = Field(
        default=30.0, gt=0, description="A group whose members and features stay the same is assessed again after this "
        "many seconds (it is assessed at once when it appears, when its members change or when it worsens).")
    assess_min_interval: float = Field(
        default=2.0, ge=0, description="Seconds between two assessments of one group, whatever changes (debounces "
        "tracks that flicker); a new group is assessed at once.")
    assess_worsen_ratio: float = Field(
        default=0.3, gt=0, lt=1, description="A group is assessed again when a gap or its time-to-contact shrinks by "
        "this fraction since its last assessment.")
    assess_ttc_horizon: float = Field(
        default=5.0, gt=0, le=120, description="A group whose time-to-contact falls under this many seconds counts as "
        "worse (assessed again).")
    motion_window: float = Field(
        default=1.0, gt=0, le=10, description="Seconds of track history over which approach speed is measured.")
    image_ttl: int = Field(default=600, ge=10, description="Seconds a group crop stays in Redis (tc:img:<id>).")
    snapshot_ttl: int = Field(default=7 * 86400, ge=60, description="Seconds an alert keeps its crop as a snapshot "
                              "(tc:snap:<task id>; about 10-30 KB each, at most 1000 alerts per camera).")
    ws_frame_rate: float = Field(default=5.0, ge=0, le=60, description="Most frames per second one WebSocket client "
                                 "gets per camera (the newest one waits for its turn; 0: no limit).")
    frame_jpeg_quality: int = Field(default=70, ge=10, le=100, description="JPEG quality of frames sent to viewers.")
    media_dir: Path = Field(default=DEFAULT_MEDIA_DIR, description="Folder of the sample video and other local media: "
                            "the only folder whose files a camera may read (other paths are refused).")
    loop_files: bool = Field(default=True, description="Restart a file source at its end (demo).")
    file_pace: Literal["realtime", "fast"] = Field(
        default="realtime", description="A file plays at its own frame rate, or as fast as frames are analysed (every "
        "frame, none skipped: for benchmarks and replays).")
    rtsp_transport: Literal["tcp", "udp"] = Field(default="tcp",
                                                  description="RTSP transport (FFmpeg's rtsp_transport).")
    source_open_timeout: float = Field(default=5.0, gt=0, le=300, description="Seconds to open a stream (OpenCV opens "
                                       "one FFmpeg source at a time per process: a camera that hangs while "
                                       "opening delays the others' reconnects by up to this).")
    source_read_timeout: float = Field(default=10.0, gt=0, le=300, description="Seconds without a frame before a "
                                       "stream counts as lost (a stall that does not close the connection).")
    reconnect_initial: float = Field(default=1.0, gt=0, le=600, description="First delay before reconnecting a lost "
                                     "stream, seconds; doubles on each failure, with jitter.")
    reconnect_max: float = Field(default=30.0, gt=0, le=3600, description="Longest delay between reconnect attempts; "
                                 "once reached the camera is reported offline (and still retried).")
    probe_timeout: float = Field(default=10.0, gt=0, le=120, description="Seconds check_camera waits for a frame.")
    capture_in_web: bool = Field(default=True, description="The web process runs capture loops (one node among the "
                                 "capture nodes); false: only `traffic-celery capture` nodes do.")
    capture_lease_ttl: float = Field(default=5.0, gt=0.5, le=300, description="Seconds a capture node holds a camera "
                                     "without renewing it; a dead node's cameras restart elsewhere after this.")
    capture_heartbeat: float = Field(default=1.0, gt=0.05, le=60, description="Seconds between a node's lease renewals "
                                     "and registry checks; keep it well under capture_lease_ttl.")
    capture_turns: bool = Field(default=True, description="The capture loops of a process analyse one frame at a "
                                "time, the most overdue camera first (capture.turns); false: each loop's thread "
                                "analyses whenever its frame is due.")
    capture_max_cameras: int = Field(default=64, ge=1, le=1000, description="Cameras one capture node runs at most "
                                     "(the nodes share the cameras fairly below it).")

    # --- Motion gating and capture processes (vision/gating.py, capture/processes.py) ------------------------
    gate: bool = Field(default=True, description="Motion gating: detect only where something moved (crops), the "
                       "whole frame at keyframes; off: the whole frame every time.")
    gate_refresh: float = Field(default=5.0, gt=0, le=3600, description="Seconds between two full-frame detections "
                                "(keyframes) of a gated camera, so nothing is missed for long.")
    gate_max_area: float = Field(default=0.5, gt=0, le=1, description="When the moving regions cover more than this "
                                 "share of the frame, the whole frame is detected (cheaper than the crops).")
    gate_width: int = Field(default=160, ge=32, le=1920, description="About the width in pixels of the grey image "
                            "motion is found in (the frame shrunk by a whole factor).")
    gate_threshold: int = Field(default=20, ge=1, le=255, description="Grey levels (0-255) a pixel must change by, "
                                "against the background or the previous frame, to count as moving.")
    gate_alpha: float = Field(default=0.2, gt=0, le=1, description="Weight of each analysed frame in the running "
                              "background average (higher: a stopped object stops moving sooner).")
    gate_min_area: float = Field(default=0.0005, ge=0, lt=1, description="Moving blobs smaller than this share of "
                                 "the frame are noise.")
    gate_margin: float = Field(default=0.03, ge=0, le=1, description="Padding around a moving region, as a share of "
                               "the frame's longer side (a person entering is detected whole).")
    gate_hysteresis: float = Field(default=0.1, ge=0, lt=1, description="A gated camera keeps an object whose "
                                   "confidence dips this much under TC_YOLO_CONF while it continues a box of the "
                                   "previous frame (same class, IoU >= 0.5), so it does not blink.")
    capture_processes: int | Literal["auto"] = Field(
        default="auto", description="Capture node processes `traffic-celery capture` starts (the LiteRT model runs "
        "on one thread, so one process is one core); auto: one per core.")

    @field_validator("capture_processes", mode="before")
    @classmethod
    def _processes(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            count = int(str(value))
        except ValueError:
            count = 0
        if not 1 <= count <= 256:
            raise ValueError("must be auto or a number of processes from 1 to 256")
        return count

    # --- The safety layer: near misses, incidents, history ---------------------------------------------------
    # Thresholds from the surrogate-safety literature: a TTC of 1.5 s or less marks a serious conflict in urban
    # traffic (Hayward 1972; van der Horst 1990, the Swedish and Dutch conflict techniques), 1.0 s or less a
    # critical one; a PET under 1.0 s is a serious encroachment (Allen, Shin & Cooper 1978), under 0.5 s a
    # critical one.
    conflict_ttc_medium: float = Field(default=1.5, gt=0, le=30, description="A pair on a collision course within this "
                                       "many seconds (TTC) is a near miss of severity medium.")
    conflict_ttc_high: float = Field(default=1.0, gt=0, le=30, description="... of severity high (TTC).")
    conflict_pet_medium: float = Field(default=1.0, gt=0, le=30, description="Two road users passing the same point "
                                       "within this many seconds (PET) are a near miss of severity medium.")
    conflict_pet_high: float = Field(default=0.5, gt=0, le=30, description="... of severity high (PET).")
    conflict_ttc_low: float = Field(default=3.0, gt=0, le=60, description="TTC under this is reported (severity low) "
                                    "and sent to the LLM, but opens no incident.")
    conflict_horizon: float = Field(default=5.0, gt=0, le=60, description="Seconds ahead the constant-velocity "
                                    "prediction looks (a crossing further ahead has no PET).")
    track_smoothing_window: float = Field(default=1.5, gt=0, le=10, description="Seconds of a track's positions "
                                          "fitted (least squares) for its smoothed position and velocity.")
    incident_quiet: float = Field(default=3.0, gt=0, le=600, description="An incident ends when nothing kept it "
                                  "open (a near miss of its pair, a verdict of medium or high) for this many seconds.")
    clip_pre: float = Field(default=3.0, ge=0, le=60, description="Seconds of video before an incident in its clip.")
    clip_post: float = Field(default=3.0, ge=0, le=60, description="Seconds of video after an incident in its clip.")
    clip_max: float = Field(default=30.0, gt=1, le=600, description="Longest clip, seconds (a long incident keeps "
                            "its first seconds and the post-roll).")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL of the incident history, for example "
                                     "postgresql+psycopg://user@host/db; unset: the SQLite file "
                                     ".run/traffic_celery.db.")
    incident_retention_days: float = Field(default=30.0, gt=0, description="Incidents (with clips and snapshots) "
                                           "older than this are deleted (checked hourly by the web tier).")
    budget_shed_wait: float = Field(default=5.0, gt=0, le=600, description="Periodic re-assessments are shed "
                                    "(counted, not sent) while the chosen key's expected wait is above this many "
                                    "seconds, or when one has waited in a queue longer than this.")

    # --- LLM ------------------------------------------------------------------------------------------------
    llm_keys_file: Path | None = Field(default=None,
                                       description="YAML file of API keys (see config/keys.example.yaml).")
    llm_api_keys: str | None = Field(
        default=None, description="Env form of the keys: 'id=secret,id2=secret2' (or bare secrets, named key-1...).")
    llm_base_url: str = Field(default="http://127.0.0.1:8808/v1", description="OpenAI-compatible base URL.")
    llm_model: str = Field(default="qwen-vl-plus", description="Vision model name.")
    llm_timeout: float = Field(default=30.0, gt=0, le=600, description="Seconds for one chat-completions call.")
    llm_max_retries: int = Field(default=5, ge=0, le=50, description="Retries of one assessment after provider "
                                 "failures (5xx, timeouts, bad replies) before it goes to the dead-letter store.")
    router: Literal["least_loaded", "round_robin", "weighted"] = Field(
        default="least_loaded", description="How a task's API key (queue llm.<key_id>) is chosen.")
    limit_margin: float = Field(default=0.015, ge=0, le=1, description="Calls are spaced this fraction wider than the "
                                "key's limit, for network jitter between a send and the provider's clock "
                                "(0.015: 98.5% of the limit at most).")
    limit_tolerance: float = Field(default=0.005, ge=0, le=1, description="Seconds a call may come early after a "
                                   "late one (GCRA tolerance): recovers a worker's wake-up lateness; keep it under the "
                                   "margin's seconds (margin x 1 s) so the provider never counts one call too many.")
    limit_max_wait: float = Field(default=0.25, ge=0, le=30, description="A worker waits at most this long for its "
                                  "key's next slot; beyond it the task moves to a less loaded key or comes back later.")
    cooldown_first: float = Field(default=10.0, gt=0, description="First cooldown of a key after a 429 without "
                                  "Retry-After, seconds; doubles on each further 429.")
    cooldown_max: float = Field(default=120.0, gt=0, description="Longest cooldown, seconds.")
    lease_ttl: float | None = Field(default=None, gt=0, description="Seconds an in-flight call holds its key's slot "
                                       "when its worker dies mid-call; default TC_LLM_TIMEOUT + 10.")
    max_reroutes: int = Field(default=20, ge=1,
                              description="Moves of one task between keys before it is dead-lettered.")

    # --- The assessment path's cost (llm/client.py, bench/load.py) ------------------------------------------
    llm_http_connections: int = Field(default=64, ge=1, le=4096, description="Keep-alive connections a worker "
                                      "process keeps to each LLM provider (shared by its threads); at least the "
                                      "worker's concurrency, or connections are opened and dropped per call.")

    # --- Telling people: MQTT and webhooks (traffic_celery.notify, the `notify` process) ---------------------
    mqtt_url: SecretStr | None = Field(
        default=None, description="MQTT broker of the notify process: mqtt://[user:password@]host[:1883] or mqtts:// "
        "(TLS). Unset: no MQTT (the launcher uses mqtt_probe_url when a broker answers there).")
    mqtt_probe_url: str = Field(default="mqtt://127.0.0.1:1883", description="MQTT broker the launcher tries when "
                                "mqtt_url is unset (the demo publishes to it if it answers).")
    mqtt_prefix: str = Field(default="traffic_celery", pattern=r"^[^#+]+$",
                             description="Topic prefix: <prefix>/availability, <prefix>/<camera>/incidents, "
                             "<prefix>/<camera>/state.")
    mqtt_ca_file: Path | None = Field(default=None, description="CA certificates for mqtts:// (default: the system's).")
    mqtt_queue: int = Field(default=10000, ge=1, le=1_000_000, description="MQTT messages kept while the broker is "
                            "away; beyond, new ones are dropped and counted.")
    mqtt_reconnect_max: int = Field(default=30, ge=1, le=600, description="Longest wait between reconnections.")
    notify_state_interval: float = Field(default=1.0, gt=0, le=60, description="Seconds between two reads of the "
                                         "cameras' states by the notify process (changes go to MQTT).")
    webhooks_file: Path | None = Field(default=None, description="YAML file of webhook targets "
                                       "(config/webhooks.example.yaml); unset: no webhooks.")
    webhook_cooldown: float = Field(default=300.0, ge=0, description="Seconds between two pages of one target for "
                                    "one camera (a target's own `cooldown` overrides it).")
    webhook_max_retries: int = Field(default=5, ge=0, le=50, description="Retries of a webhook delivery on 5xx, 429, "
                                     "timeouts and refused connections, before the dead letter.")
    webhook_backoff: float = Field(default=2.0, gt=0, le=600, description="First retry delay, seconds (doubled at "
                                   "each retry).")
    webhook_backoff_max: float = Field(default=300.0, gt=0, le=3600, description="Longest retry delay, seconds.")

    # --- Processes ------------------------------------------------------------------------------------------
    web_host: str = Field(default="127.0.0.1", description="Address the web tier binds (without TC_API_TOKEN, loopback "
                          "only: another address is replaced by 127.0.0.1, with a warning).")
    api_token: SecretStr | None = Field(default=None, min_length=16, description="Token for REST, /metrics and the "
                                           "WebSocket (Authorization: Bearer, or the session cookie of "
                                           "POST /api/login); unset: no auth, loopback only.")
    web_port: int = Field(default=8000, ge=0, le=65535)
    web_workers: int = Field(default=2, ge=1, le=64, description="gunicorn worker processes (web/gunicorn_conf.py).")
    web_threads: int = Field(default=64, ge=4, le=1000, description="Threads per gunicorn worker: each open WebSocket "
                             "holds one.")
    provider_host: str = Field(default="127.0.0.1", description="Address the fake LLM provider binds.")
    provider_port: int = Field(default=8808, ge=0, le=65535)
    provider_latency: float = Field(default=0.3, ge=0, le=60, description="Fake provider: seconds per reply.")
    worker_concurrency: int = Field(default=4, ge=1, le=256, description="Celery worker processes.")
    flower_port: int = Field(default=5555, ge=0, le=65535)
    flower_host: str = Field(default="127.0.0.1",
                             description="Address Flower binds (loopback only without basic auth).")
    flower_basic_auth: SecretStr | None = Field(default=None, description="Flower's basic auth, "
                                                   "user:password[,user:password]")
    metrics_dir: Path | None = Field(
        default=None, description="Folder where every process of this machine writes its Prometheus metrics "
        "(prometheus-client multiprocess mode); the web tier's /metrics shows them all. Empty it before the "
        "processes start (the launcher does). Unset: a private folder per process tree (a worker and its "
        "prefork children), served on metrics_port.")
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Celery workers and capture nodes serve their "
                              "own /metrics on this port (0: off; the web tier serves it on web_port).")
    log_level: str = Field(default="INFO")

    @field_validator("flower_basic_auth")
    @classmethod
    def _user_password_pairs(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.fullmatch(r"[^:,]+:[^,]+(,[^:,]+:[^,]+)*", value.get_secret_value()):
            raise ValueError("must be user:password, or several separated by commas")
        return value

    # --- Derived --------------------------------------------------------------------------------------------
    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or self.redis_probe_url

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.effective_redis_url

    @property
    def broker_is_redis(self) -> bool:
        return self.effective_broker_url.startswith(("redis://", "rediss://", "unix://"))

    @property
    def effective_events_url(self) -> str:
        return self.events_url or (self.effective_broker_url if self.broker_is_redis else self.effective_redis_url)

    @property
    def events_on_broker(self) -> bool:
        """Whether monitoring events travel on the broker, so Celery sends `task-sent` itself."""
        return self.effective_events_url == self.effective_broker_url

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{REPO_ROOT / '.run' / 'traffic_celery.db'}"

    @property
    def model_path(self) -> str:
        """`yolo_model` resolved from the repository root when it is a relative path that exists there."""
        candidate = REPO_ROOT / self.yolo_model
        return str(candidate) if not Path(self.yolo_model).is_absolute() and candidate.exists() else self.yolo_model

    @property
    def sample_video(self) -> Path:
        return self.media_dir / "vtest.avi"

    @property
    def effective_capture_processes(self) -> int:
        """`capture_processes`, with auto = the cores this process may run on."""
        if self.capture_processes == "auto":
            return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return self.capture_processes


class SettingsError(SystemExit):
    """Raised with a readable one-line-per-field message when the environment holds invalid settings."""


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment; exits with a readable message if invalid."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"  TC_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()]
        raise SettingsError("invalid settings (fix these environment variables):\n" + "\n".join(lines)) from None

"""The demo's cameras: what `make demo` (`traffic-celery run`) registers when the registry is empty.

- camera `1`: the sample street video (`vtest.avi`, people on a campus road), with a `road` zone and a `far-path`
  mask (the path at the top left, too far away to matter), uncalibrated: the page says so;
- camera `near-miss`: the synthetic scene (`safety.synthetic`, rendered into the media folder on first use), a car
  at 36 km/h and a pedestrian crossing its path, calibrated to the ground so its metrics are in metres and km/h,
  with a `crosswalk` zone where they meet and a context for the prompt. It opens an incident with a clip about
  every ten seconds.

Both are added over the REST API of the running web tier, as an operator would; an existing registry is left
alone (a restart keeps what the operator changed).
"""

from __future__ import annotations

import logging
from typing import Any

import requests

from traffic_celery.safety import synthetic
from traffic_celery.settings import Settings

logger = logging.getLogger(__name__)

SCENE_FILE = "near-miss.avi"
SCENE_SECONDS = 10.0  # the conflict is over at 4 s; the rest keeps two loops' incidents apart

ROAD = [(0.0, 0.31), (0.55, 0.30), (0.88, 0.25), (1.0, 0.5), (1.0, 0.82), (0.6, 0.62), (0.3, 0.5), (0.0, 0.46)]
FAR_PATH = [(0.0, 0.0), (0.38, 0.0), (0.38, 0.17), (0.0, 0.22)]


def crosswalk() -> list[tuple[float, float]]:
    """The synthetic scene's crossing, 4 m deep around the point where the pedestrian crosses the car's lane."""
    ground = synthetic.conflict_scene().ground()
    corners = ground.to_image([(2.0, 26.0), (10.0, 26.0), (10.0, 34.0), (2.0, 34.0)])
    return [(round(float(x), 4), round(float(y), 4)) for x, y in corners]


def scene_video(settings: Settings) -> str:
    path = settings.media_dir / SCENE_FILE
    if not path.exists():
        settings.media_dir.mkdir(parents=True, exist_ok=True)
        synthetic.render(synthetic.conflict_scene(), path, fps=10, seconds=SCENE_SECONDS)
        logger.info("rendered the synthetic near-miss scene into %s", path)
    return str(path)


def cameras(settings: Settings) -> list[dict[str, Any]]:
    """The demo cameras: the body to POST, then the zones and calibration to PUT."""
    scene = synthetic.conflict_scene()
    return [
        {"camera": {"cameraId": "1", "url": str(settings.sample_video), "context": "campus road, walking pace"},
         "zones": [{"name": "road", "kind": "zone", "points": ROAD},
                   {"name": "far-path", "kind": "mask", "points": FAR_PATH}]},
        {"camera": {"cameraId": "near-miss", "url": scene_video(settings), "detector": "colour",
                    "frameInterval": 0.2, "context": "synthetic test scene: school crossing, limit 30 km/h"},
         "zones": [{"name": "crosswalk", "kind": "zone", "points": crosswalk()}],
         "calibration": scene.calibration.model_dump(mode="json")},
    ]


def seed(base_url: str, settings: Settings, timeout: float = 10.0) -> list[str]:
    """Register the demo cameras if no camera is registered; returns the ids added."""
    session = requests.Session()
    if settings.api_token is not None:
        session.headers["Authorization"] = f"Bearer {settings.api_token.get_secret_value()}"
    existing = session.get(f"{base_url}/api/cameras", timeout=timeout)
    existing.raise_for_status()
    if existing.json():
        return []
    added = []
    for item in cameras(settings):
        camera_id = item["camera"]["cameraId"]
        if item["camera"]["url"] == str(settings.sample_video) and not settings.sample_video.exists():
            logger.warning("the sample video %s is missing (make media); camera %s is not added",
                           settings.sample_video, camera_id)
            continue
        session.post(f"{base_url}/api/cameras", json=item["camera"], timeout=timeout).raise_for_status()
        session.put(f"{base_url}/api/cameras/{camera_id}/zones", json={"zones": item["zones"]},
                    timeout=timeout).raise_for_status()
        if "calibration" in item:
            session.put(f"{base_url}/api/cameras/{camera_id}/calibration", json=item["calibration"],
                        timeout=timeout).raise_for_status()
        added.append(camera_id)
    logger.info("demo cameras added: %s", ", ".join(added) or "none")
    return added

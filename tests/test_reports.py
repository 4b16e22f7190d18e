"""Reports from the incident history (`traffic_celery.history.reports`) and their REST API (`web/reports_api.py`).

A fixed set of incidents, saved through `History.save`, on SQLite and PostgreSQL; every expected table below is
written by hand from that set (not computed by the code under test). The heat map is decoded with OpenCV and looked
at pixel by pixel; the CSVs are parsed back with the csv module. The REST tests run the real web tier (`python -m
web`) on each database.
"""

from __future__ import annotations

import csv
import io
import sys
import uuid
from collections.abc import Iterator

import cv2
import numpy as np
import psycopg
import pytest
import requests
from psycopg import sql

from traffic_celery.history import History
from traffic_celery.history.reports import ReportError, Reports, counts_csv, implied_size
from traffic_celery.protocol import Incident, Verdict

from .conftest import ARTIFACTS, Proc, wait_for

pytest_plugins = ["tests.databases"]

T0 = 1_700_006_400.0  # 2023-11-15T00:00:00Z, a whole hour
SINCE, UNTIL = T0, T0 + 7200  # the period of the tests: two hours
VP, VC, VV = "vehicle-pedestrian", "vehicle-cyclist", "vehicle-vehicle"

# id, camera, zones, classes, conflict type, severity, start (s after T0), end (None: open), ttc, pet, minDistance,
# units, point (image pixels), number of verdicts
INCIDENTS = [
    ("i01", "cam-a", ["crossing"], ["car", "person"], VP, "high", 60, 75.5, 0.8, None, 1.5, "metric", [200, 300], 2),
    ("i10", "cam-a", ["crossing"], ["car", "person"], VP, "high", 300, 310, 0.9, 1.1, 2.0, "metric", [195, 295], 0),
    ("i02", "cam-a", ["sidewalk", "crossing"], ["car", "person"], VP, "medium", 600, None, 1.4, 0.9, 2.25, "metric",
     [210, 310], 0),
    ("i03", "cam-a", [], ["truck", "car"], VV, "medium", 1000, 1004, None, 0.7, 0.5, "relative", [900, 500], 1),
    ("i06", "cam-b", ["junction"], ["person"], None, "medium", 1799.9, 1810, None, None, None, None, None, 1),
    ("i05", "cam-b", ["junction"], ["car", "person", "person"], VP, "high", 1800, 1806, 0.6, 0.4, 0.75, "metric",
     [50, 60], 1),
    ("i04", "cam-a", ["crossing"], ["bicycle", "car"], VC, "low", 3700, 3702, 2.5, None, 3.0, "metric", [205, 305], 0),
    ("i09", "cam-c", [], [], VV, "low", 5000, 5001, 2.9, None, 4.0, "relative", [1500, 900], 0),
    # outside the period [T0, T0 + 7200): in no report of it
    ("i07", "cam-b", ["junction"], ["car", "person"], VP, "high", 7200, 7201, 0.5, 0.3, 0.4, "metric", [60, 70], 0),
    ("i08", "cam-a", ["crossing"], ["car", "person"], VP, "high", -1, 3, 0.5, 0.3, 0.4, "metric", [1000, 100], 0),
]

SNAPSHOT_BLUE = (120, 40, 20)  # BGR of cam-a's latest snapshot (incident i02)
SNAPSHOT_GREEN = (30, 160, 40)  # cam-a's older snapshot (i08, before the period): not the reference


def jpeg(width: int, height: int, bgr: tuple[int, int, int]) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.full((height, width, 3), bgr, np.uint8))
    assert ok
    return buf.tobytes()


def seed(history: History) -> None:
    for (incident_id, camera, zones, classes, conflict, severity, start, end, ttc, pet, min_distance, units, point,
         verdicts) in INCIDENTS:
        metrics = None if conflict is None else {
            "conflictType": conflict, "trackIds": [1, 2], "classes": classes[:2], "ttc": ttc, "pet": pet,
            "distance": min_distance + 1, "minDistance": min_distance, "units": units, "severity": severity,
            "point": point}
        history.save(Incident.model_validate({
            "incidentId": incident_id, "cameraId": camera, "state": "end" if end is not None else "update",
            "severity": severity, "openedBy": "near_miss" if conflict else "verdict", "startedAt": T0 + start,
            "updatedAt": T0 + (end if end is not None else start + 1),
            "endedAt": T0 + end if end is not None else None, "zones": zones, "classes": classes,
            "trackIds": [1, 2], "conflictType": conflict, "metrics": metrics,
            "verdicts": [Verdict(taskId=f"{incident_id}-t{n}", riskLevel="high", description="close", confidence=0.9,
                                 llmModel="fake-vision", apiKeyId="test-a", at=T0 + start + n).to_wire()
                         for n in range(verdicts)]}))
    history.put_media("i02", "snapshot", "image/jpeg", jpeg(1280, 720, SNAPSHOT_BLUE))
    history.put_media("i08", "snapshot", "image/jpeg", jpeg(1280, 720, SNAPSHOT_GREEN))
    history.put_media("i05", "snapshot", "image/jpeg", jpeg(640, 360, (200, 200, 200)))


@pytest.fixture()
def history(database_url: str) -> Iterator[History]:
    h = History(database_url)
    h.migrate()
    seed(h)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture()
def reports(history: History) -> Reports:
    return Reports(history)


# --- counts -----------------------------------------------------------------------------------------------------------

H = int(T0)
# bucket, camera, zone, class, conflict type, severity, count: i02 counts in both its zones, every incident under
# each class (i05's "person" twice: once), i03 and i09 (no zone) under "", i09 (no class) under "", i06 (no
# conflict type) under ""
COUNTS_60 = [
    (H, "cam-a", "", "car", VV, "medium", 1),
    (H, "cam-a", "", "truck", VV, "medium", 1),
    (H, "cam-a", "crossing", "car", VP, "high", 2),
    (H, "cam-a", "crossing", "car", VP, "medium", 1),
    (H, "cam-a", "crossing", "person", VP, "high", 2),
    (H, "cam-a", "crossing", "person", VP, "medium", 1),
    (H, "cam-a", "sidewalk", "car", VP, "medium", 1),
    (H, "cam-a", "sidewalk", "person", VP, "medium", 1),
    (H, "cam-b", "junction", "car", VP, "high", 1),
    (H, "cam-b", "junction", "person", "", "medium", 1),
    (H, "cam-b", "junction", "person", VP, "high", 1),
    (H + 3600, "cam-a", "crossing", "bicycle", VC, "low", 1),
    (H + 3600, "cam-a", "crossing", "car", VC, "low", 1),
    (H + 3600, "cam-c", "", "", VV, "low", 1),
]
# cam-b alone, 15-minute buckets: i06 started 0.1 s before i05's bucket
COUNTS_15_CAM_B = [
    (H + 900, "cam-b", "junction", "person", "", "medium", 1),
    (H + 1800, "cam-b", "junction", "car", VP, "high", 1),
    (H + 1800, "cam-b", "junction", "person", VP, "high", 1),
]


def as_tuples(counts) -> list[tuple]:
    return [(r.bucket, r.camera_id, r.zone, r.class_name, r.conflict_type, r.severity, r.count) for r in counts.rows]


def test_counts_per_hour_follow_the_counting_rules(reports):
    counts = reports.counts(SINCE, UNTIL, 60)
    assert as_tuples(counts) == COUNTS_60
    assert counts.buckets == [H, H + 3600]
    # the series count each incident once: i01 i10 i05 high, i02 i03 i06 medium, then i04 i09 low
    assert counts.series == {"high": [3, 0], "medium": [3, 0], "low": [0, 2]}
    assert counts.incidents == 8
    series_only = reports.counts(SINCE, UNTIL, 60, rows=False)
    assert series_only.rows is None and series_only.series == counts.series and series_only.to_wire()["rows"] is None


def test_counts_per_quarter_hour_and_of_one_camera(reports):
    counts = reports.counts(SINCE, UNTIL, 15)
    assert counts.buckets == [H + 900 * k for k in range(8)]
    assert counts.series == {"high": [2, 0, 1, 0, 0, 0, 0, 0], "medium": [1, 2, 0, 0, 0, 0, 0, 0],
                             "low": [0, 0, 0, 0, 1, 1, 0, 0]}
    one = reports.counts(SINCE, UNTIL, 15, camera_id="cam-b")
    assert as_tuples(one) == COUNTS_15_CAM_B
    assert one.series == {"high": [0, 0, 1, 0, 0, 0, 0, 0], "medium": [0, 1, 0, 0, 0, 0, 0, 0], "low": [0] * 8}
    assert one.incidents == 2
    assert reports.counts(SINCE, UNTIL, 15, camera_id="nobody").rows == []


def test_a_period_that_starts_inside_a_bucket(reports):
    # [T0 + 10 min, T0 + 40 min): i02 (10 min), i03, i06, i05; not i01 nor i10; the first bucket is partial
    counts = reports.counts(T0 + 600, T0 + 2400, 15)
    assert counts.buckets == [H, H + 900, H + 1800]
    assert counts.series == {"high": [0, 0, 1], "medium": [1, 2, 0], "low": [0, 0, 0]}


def test_counts_csv_parses_back_to_the_same_rows(reports):
    counts = reports.counts(SINCE, UNTIL, 60)
    rows = list(csv.DictReader(io.StringIO(counts_csv(counts))))
    assert rows[0] == {"bucket_start": "2023-11-15T00:00:00.000Z", "bucket": str(H), "camera": "cam-a", "zone": "",
                       "class": "car", "conflict_type": VV, "severity": "medium", "count": "1"}
    assert [(int(r["bucket"]), r["camera"], r["zone"], r["class"], r["conflict_type"], r["severity"], int(r["count"]))
            for r in rows] == COUNTS_60
    assert rows[-1]["bucket_start"] == "2023-11-15T01:00:00.000Z"


@pytest.mark.parametrize(("call", "field"), [
    (lambda r: r.counts(SINCE, UNTIL, 30), "bucket"),
    (lambda r: r.counts(UNTIL, SINCE), "since"),
    (lambda r: r.counts(SINCE, SINCE), "since"),
    (lambda r: r.counts(SINCE, SINCE + 93 * 86400), "since"),
    (lambda r: r.ranking(float("nan"), UNTIL), "since"),
    (lambda r: r.heatmap("cam-a", SINCE, float("inf")), "until"),
    (lambda r: r.incidents_csv(SINCE, UNTIL, severity="extreme"), "severity"),
])
def test_bad_parameters_are_report_errors_naming_the_field(reports, call, field):
    with pytest.raises(ReportError) as caught:
        call(reports)
    assert caught.value.field == field and str(caught.value)


# --- ranking ------------------------------------------------------------------------------------------------------------

def test_ranking_of_cameras_and_zones(reports):
    ranking = reports.ranking(SINCE, UNTIL)
    # camera, score (high 3, medium 2, low 1), incidents, high, medium, low, worst TTC, worst PET
    assert [(r.camera_id, r.score, r.incidents, r.high, r.medium, r.low, r.worst_ttc, r.worst_pet)
            for r in ranking.cameras] == [
        ("cam-a", 11, 5, 2, 2, 1, 0.8, 0.7),
        ("cam-b", 5, 2, 1, 1, 0, 0.6, 0.4),
        ("cam-c", 1, 1, 0, 0, 1, 2.9, None),
    ]
    # zones of cameras; i03 and i09 (no zone) are in no zone's row
    assert [(r.camera_id, r.zone, r.score, r.incidents, r.high, r.medium, r.low, r.worst_ttc, r.worst_pet)
            for r in ranking.zones] == [
        ("cam-a", "crossing", 9, 4, 2, 1, 1, 0.8, 0.9),
        ("cam-b", "junction", 5, 2, 1, 1, 0, 0.6, 0.4),
        ("cam-a", "sidewalk", 2, 1, 0, 1, 0, 1.4, 0.9),
    ]
    later = reports.ranking(T0 + 3600, UNTIL)  # the second hour: cam-a's low i04 against cam-c's low i09
    assert [(r.camera_id, r.score) for r in later.cameras] == [("cam-a", 1), ("cam-c", 1)]  # a tie: by id


# --- CSV of incidents ---------------------------------------------------------------------------------------------------

HEADER = ["id", "camera", "started_at", "ended_at", "severity", "conflict_type", "zones", "classes", "ttc", "pet",
          "min_distance", "units", "verdicts"]
CSV_ROWS = [
    ["i01", "cam-a", "2023-11-15T00:01:00.000Z", "2023-11-15T00:01:15.500Z", "high", VP, "crossing", "car;person",
     "0.8", "", "1.5", "metric", "2"],
    ["i10", "cam-a", "2023-11-15T00:05:00.000Z", "2023-11-15T00:05:10.000Z", "high", VP, "crossing", "car;person",
     "0.9", "1.1", "2.0", "metric", "0"],
    ["i02", "cam-a", "2023-11-15T00:10:00.000Z", "", "medium", VP, "crossing;sidewalk", "car;person",
     "1.4", "0.9", "2.25", "metric", "0"],
    ["i03", "cam-a", "2023-11-15T00:16:40.000Z", "2023-11-15T00:16:44.000Z", "medium", VV, "", "truck;car",
     "", "0.7", "0.5", "relative", "1"],
    ["i06", "cam-b", "2023-11-15T00:29:59.900Z", "2023-11-15T00:30:10.000Z", "medium", "", "junction", "person",
     "", "", "", "", "1"],
    ["i05", "cam-b", "2023-11-15T00:30:00.000Z", "2023-11-15T00:30:06.000Z", "high", VP, "junction",
     "car;person;person", "0.6", "0.4", "0.75", "metric", "1"],
    ["i04", "cam-a", "2023-11-15T01:01:40.000Z", "2023-11-15T01:01:42.000Z", "low", VC, "crossing", "bicycle;car",
     "2.5", "", "3.0", "metric", "0"],
    ["i09", "cam-c", "2023-11-15T01:23:20.000Z", "2023-11-15T01:23:21.000Z", "low", VV, "", "", "2.9", "", "4.0",
     "relative", "0"],
]


def parse(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_incidents_csv_parses_back_to_the_same_rows(reports):
    text = "".join(reports.incidents_csv(SINCE, UNTIL))
    assert parse(text) == [HEADER, *CSV_ROWS]
    by_id = {row[0]: row for row in CSV_ROWS}
    high = parse("".join(reports.incidents_csv(SINCE, UNTIL, severity="high")))
    assert high[1:] == [by_id[i] for i in ("i01", "i10", "i05")]
    crossing = parse("".join(reports.incidents_csv(SINCE, UNTIL, camera_id="cam-a", zone="crossing")))
    assert crossing[1:] == [by_id[i] for i in ("i01", "i10", "i02", "i04")]
    assert parse("".join(reports.incidents_csv(SINCE, UNTIL, camera_id="nobody"))) == [HEADER]
    # pages of 3 (keyset on start time and id) give the same rows, each once
    assert [list(r.values()) for r in reports.incident_rows(SINCE, UNTIL, page_size=3)] == CSV_ROWS


def test_csv_pages_break_ties_of_the_start_time_by_id(database_url):
    h = History(database_url)
    h.migrate()
    try:
        for n in (4, 1, 6, 0, 3, 5, 2):
            h.save(Incident.model_validate({"incidentId": f"tie-{n}", "cameraId": "cam-t", "state": "new",
                                            "severity": "medium", "openedBy": "near_miss", "startedAt": T0 + 5,
                                            "updatedAt": T0 + 5}))
        ids = [row["id"] for row in Reports(h).incident_rows(SINCE, UNTIL, page_size=2)]
        assert ids == [f"tie-{n}" for n in range(7)]
    finally:
        h.close()


# --- heat map ---------------------------------------------------------------------------------------------------------

def decode(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def is_red(pixel) -> bool:
    b, g, r = (int(v) for v in pixel)
    return r >= 180 and r - g >= 80 and r - b >= 80


def test_heatmap_is_hot_at_the_conflict_points_over_the_latest_snapshot(reports):
    result = reports.heatmap("cam-a", SINCE, UNTIL)
    image = decode(result.png)
    assert image.shape == (720, 1280, 3) and (result.width, result.height) == (1280, 720)
    assert (result.points, result.outside, result.reference) == (5, 0, "snapshot")
    reference = cv2.imdecode(np.frombuffer(jpeg(1280, 720, SNAPSHOT_BLUE), np.uint8), cv2.IMREAD_COLOR)
    # the hot spot of i01, i10, i02 and i04 (four points within 15 px) is red
    assert is_red(image[300, 200]) and is_red(image[303, 203]), image[300, 200]
    # i03's lone point is coloured, not the snapshot's blue
    assert np.abs(image[500, 900].astype(int) - reference[500, 900].astype(int)).sum() > 60, image[500, 900]
    # away from every point: the snapshot itself, exactly (the latest one, i02's blue, not i08's green)
    for y, x in [(300, 320), (420, 200), (500, 1000), (100, 1000), (700, 50), (10, 1270)]:
        assert (image[y, x] == reference[y, x]).all(), ((y, x), image[y, x], reference[y, x])
    # i08 (before the period) left no mark at its point
    assert (image[100, 1000] == reference[100, 1000]).all()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "heatmap-cam-a.png").write_bytes(result.png)  # to look at


def test_heatmap_without_a_snapshot_is_drawn_on_grey_of_the_implied_size(reports):
    result = reports.heatmap("cam-c", SINCE, UNTIL)  # one point at (1500, 900): a 1920x1080 frame holds it
    image = decode(result.png)
    assert image.shape == (1080, 1920, 3) and result.reference == "grey" and result.points == 1
    assert is_red(image[900, 1500]), image[900, 1500]  # a lone point is its own peak
    assert (image[100, 100] == 96).all() and (image[900, 1300] == 96).all()
    empty = reports.heatmap("nobody", SINCE, UNTIL)
    assert decode(empty.png).shape == (720, 1280, 3) and empty.points == 0
    assert (decode(empty.png) == 96).all()


def test_implied_frame_sizes():
    assert implied_size([]) == (1280, 720)
    assert implied_size([(100, 100)]) == (640, 360)
    assert implied_size([(700, 100), (10, 300)]) == (960, 540)
    assert implied_size([(100, 700)]) == (1280, 720)
    assert implied_size([(5000, 100)]) == (5501, 111)


# --- the index of the reports (migration 0002) ---------------------------------------------------------------------------

def test_a_history_at_0001_upgrades_to_the_covering_index_and_back(database_url):
    """A history made before the reports (revision 0001, with incidents) is migrated at start: the start-time index
    becomes the covering one, nothing is lost; the downgrade brings the old index back."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, inspect

    from traffic_celery.history.store import MIGRATIONS

    def indexes() -> set[tuple[str, tuple[str, ...]]]:
        engine = create_engine(database_url)
        try:
            with engine.connect() as conn:
                return {(ix["name"], tuple(ix["column_names"])) for ix in inspect(conn).get_indexes("incidents")}
        finally:
            engine.dispose()

    h = History(database_url)  # makes a SQLite file's folder; migrates nothing yet
    try:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.set_main_option("sqlalchemy.url", database_url)
        command.upgrade(config, "0001")
        assert ("ix_incidents_started_at", ("started_at",)) in indexes()
        seed(h)  # the 0001 schema has every column the incidents need
        h.migrate()
        after = indexes()
        assert ("ix_incidents_started_at_covering", ("started_at", "camera_id", "severity", "conflict_type")) in after
        assert "ix_incidents_started_at" not in {name for name, _ in after}
        assert as_tuples(Reports(h).counts(SINCE, UNTIL, 60)) == COUNTS_60
        command.downgrade(config, "0001")
        assert ("ix_incidents_started_at", ("started_at",)) in indexes()
        assert "ix_incidents_started_at_covering" not in {name for name, _ in indexes()}
        assert h.count() == len(INCIDENTS)
    finally:
        h.close()


# --- REST, on the real web tier -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def reports_web(request, base_env, log_dir, tmp_path_factory) -> Iterator[str]:
    """A web tier (no capture) on a database of its own holding the fixed incidents: its base URL."""
    dropper = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('reports-web') / 'history.db'}"
    else:
        admin = request.getfixturevalue("postgres_admin_url")
        name = f"tc_test_reports_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

        def dropper() -> None:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

        url = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    history = History(url)
    try:
        history.migrate()
        seed(history)
        from traffic_celery.embedded_redis import free_port

        port = free_port()
        # the fixed incidents are from 2023: a retention of 100 years keeps the web tier from deleting them
        env = {**base_env, "TC_DATABASE_URL": url, "TC_CAPTURE_IN_WEB": "false", "TC_WEB_PORT": str(port),
               "TC_INCIDENT_RETENTION_DAYS": "36500"}
        proc = Proc(f"web-reports-{request.param}", [sys.executable, "-m", "web"], env, log_dir)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: proc.alive() and requests.get(base + "/api/health", timeout=1).ok, 60, "the web tier")
            yield base
        finally:
            proc.stop()
    finally:
        history.close()
        if dropper is not None:
            dropper()


PERIOD = {"since": str(int(SINCE)), "until": str(int(UNTIL))}


def get(base: str, path: str, **params: str) -> requests.Response:
    return requests.get(base + path, params=params, timeout=30)


def test_rest_counts_json_and_csv(reports_web):
    r = get(reports_web, "/api/reports/counts", bucket="60", **PERIOD)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["buckets"] == [H, H + 3600] and body["bucketMinutes"] == 60 and body["incidents"] == 8
    assert body["series"] == {"high": [3, 0], "medium": [3, 0], "low": [0, 2]}
    assert [(row["bucket"], row["cameraId"], row["zone"], row["class"], row["conflictType"], row["severity"],
             row["count"]) for row in body["rows"]] == COUNTS_60
    # ISO times work as well as epoch seconds, and a camera filter
    r = get(reports_web, "/api/reports/counts", cameraId="cam-b", since="2023-11-15T00:00:00Z",
            until="2023-11-15T02:00:00+00:00")
    assert [(row["bucket"], row["cameraId"], row["zone"], row["class"], row["conflictType"], row["severity"],
             row["count"]) for row in r.json()["rows"]] == COUNTS_15_CAM_B
    r = get(reports_web, "/api/reports/counts", bucket="60", rows="0", **PERIOD)  # what the page asks for
    assert r.json()["rows"] is None and r.json()["series"] == {"high": [3, 0], "medium": [3, 0], "low": [0, 2]}
    r = get(reports_web, "/api/reports/counts", bucket="60", format="csv", **PERIOD)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in r.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [(int(x["bucket"]), x["camera"], x["zone"], x["class"], x["conflict_type"], x["severity"], int(x["count"]))
            for x in rows] == COUNTS_60


def test_rest_ranking_heatmap_and_incidents_csv(reports_web):
    ranking = get(reports_web, "/api/reports/ranking", **PERIOD).json()
    assert [(c["cameraId"], c["score"], c["worstTtc"], c["worstPet"]) for c in ranking["cameras"]] == [
        ("cam-a", 11, 0.8, 0.7), ("cam-b", 5, 0.6, 0.4), ("cam-c", 1, 2.9, None)]
    assert [(z["cameraId"], z["zone"], z["score"]) for z in ranking["zones"]] == [
        ("cam-a", "crossing", 9), ("cam-b", "junction", 5), ("cam-a", "sidewalk", 2)]
    assert ranking["weights"] == {"high": 3, "medium": 2, "low": 1}

    r = get(reports_web, "/api/reports/heatmap/cam-a.png", **PERIOD)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"
    assert (r.headers["X-Heatmap-Points"], r.headers["X-Heatmap-Reference"]) == ("5", "snapshot")
    image = decode(r.content)
    assert image.shape == (720, 1280, 3) and is_red(image[300, 200])

    r = get(reports_web, "/api/reports/incidents.csv", **PERIOD)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv"), r.text
    assert parse(r.text) == [HEADER, *CSV_ROWS]
    r = get(reports_web, "/api/reports/incidents.csv", cameraId="cam-a", zone="crossing", severity="high", **PERIOD)
    assert [row[0] for row in parse(r.text)[1:]] == ["i01", "i10"]


def test_rest_defaults_to_the_last_24_hours(reports_web):
    # the fixed incidents are from 2023: none in the last 24 hours
    body = get(reports_web, "/api/reports/counts").json()
    assert body["incidents"] == 0 and len(body["buckets"]) in (96, 97) and body["rows"] == []
    assert 86400 - 1 <= body["until"] - body["since"] <= 86400 + 1
    assert parse(get(reports_web, "/api/reports/incidents.csv").text) == [HEADER]


@pytest.mark.parametrize(("path", "params", "field"), [
    ("/api/reports/counts", {"bucket": "30"}, "bucket"),
    ("/api/reports/counts", {"bucket": "hourly"}, "bucket"),
    ("/api/reports/counts", {"format": "xml"}, "format"),
    ("/api/reports/counts", {"rows": "some"}, "rows"),
    ("/api/reports/counts", {"since": "yesterday"}, "since"),
    ("/api/reports/counts", {"until": "nan"}, "until"),
    ("/api/reports/counts", {"since": "1700007200", "until": "1700000000"}, "since"),
    ("/api/reports/counts", {"since": "0", "until": "1700000000"}, "since"),  # more than 92 days
    ("/api/reports/counts", {"cameraId": "../etc"}, "cameraId"),
    ("/api/reports/ranking", {"until": "2023-13-45"}, "until"),
    ("/api/reports/heatmap/bad%20id.png", {}, "cameraId"),
    ("/api/reports/incidents.csv", {"severity": "extreme"}, "severity"),
    ("/api/reports/incidents.csv", {"since": "-5"}, "since"),
    ("/api/reports/ranking", {"since": "1e20"}, "since"),
    ("/api/reports/ranking", {"until": "10000-01-01T00:00:00"}, "until"),
])
def test_rest_bad_parameters_are_400_with_one_line(reports_web, path, params, field):
    r = get(reports_web, path, **params)
    assert r.status_code == 400, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert body["field"] == field and body["error"] and "\n" not in body["error"]


"""The incident history (`traffic_celery.history`) on real databases: every test runs on SQLite and PostgreSQL.

Schema: migrations are idempotent and race-safe, and the hand-written migration matches the models. Data: round trips
of every field, upserts, verdicts stored once, the filters and keyset paging of `list` on a fixed set of incidents
with hand-checked answers, media and their URLs, and retention with its cascades.
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, create_engine, inspect, text

from traffic_celery.history import History
from traffic_celery.history.models import Base
from traffic_celery.history.store import MIGRATIONS
from traffic_celery.protocol import ConflictFacts, Incident, Verdict

pytest_plugins = ["tests.databases"]

TABLES = {"incidents", "incident_zones", "verdicts", "incident_media"}
HEAD = "0002"  # the newest migration


@pytest.fixture()
def history(database_url: str) -> Iterator[History]:
    h = History(database_url)
    h.migrate()
    try:
        yield h
    finally:
        h.close()


def make(incident_id: str, camera: str = "cam-a", zones: list[str] | None = None, severity: str = "medium",
         started: float = 1000.0, **fields: object) -> Incident:
    data: dict[str, object] = {"incidentId": incident_id, "cameraId": camera, "state": "new", "severity": severity,
                               "openedBy": "near_miss", "startedAt": started, "updatedAt": started,
                               "zones": zones or []}
    data.update(fields)
    return Incident.model_validate(data)


def verdict(task_id: str, at: float, description: str = "a car close to a pedestrian") -> Verdict:
    return Verdict(taskId=task_id, riskLevel="high", riskTypes=["pedestrian-conflict"], description=description,
                   confidence=0.8, llmModel="fake-vision", apiKeyId="test-a", at=at)


def child_rows(url: str, incident_ids: list[str]) -> dict[str, int]:
    """Rows of each child table that belong to these incidents, read with SQL of our own."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            counts = {}
            for table in ("incident_zones", "verdicts", "incident_media"):
                counts[table] = sum(conn.execute(text(f"SELECT count(*) FROM {table} WHERE incident_id = :i"),
                                                 {"i": i}).scalar_one() for i in incident_ids)
            return counts
    finally:
        engine.dispose()


def current_revision(url: str) -> tuple[str | None, int, set[str]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            revision = MigrationContext.configure(conn).get_current_revision()
            versions = conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() \
                if "alembic_version" in tables else 0
            return revision, versions, tables
    finally:
        engine.dispose()


# --- schema -----------------------------------------------------------------------------------------------------------


def test_migrate_twice_is_a_noop(database_url):
    h = History(database_url)
    try:
        assert current_revision(database_url) == (None, 0, set()), "the database should start empty"
        h.migrate()
        assert current_revision(database_url) == (HEAD, 1, TABLES | {"alembic_version"})
        h.save(make("kept"))
        h.migrate()
        other = History(database_url)  # another process starting later
        try:
            other.migrate()
            assert other.get("kept") == make("kept")
        finally:
            other.close()
        assert current_revision(database_url) == (HEAD, 1, TABLES | {"alembic_version"})
        assert h.count() == 1
    finally:
        h.close()


def test_processes_migrating_at_once_all_succeed(database_url):
    histories = [History(database_url) for _ in range(4)]
    barrier = threading.Barrier(len(histories))
    errors: list[BaseException] = []

    def start(h: History) -> None:
        try:
            barrier.wait(timeout=30)
            h.migrate()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(h,)) for h in histories]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for h in histories:
        h.close()
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert current_revision(database_url) == (HEAD, 1, TABLES | {"alembic_version"})


def test_models_and_migration_agree(history, database_url):
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            # the comparison does see a difference: the models with one more column
            changed = MetaData()
            for table in Base.metadata.sorted_tables:
                table.to_metadata(changed)
            changed.tables["incidents"].append_column(Column("extra", Integer))
            diff = compare_metadata(context, changed)
            assert [(d[0], d[3].name) for d in diff] == [("add_column", "extra")]
            indexes = {tuple(ix["column_names"]) for t in TABLES for ix in inspect(conn).get_indexes(t)}
            assert {("camera_id", "started_at"), ("started_at", "camera_id", "severity", "conflict_type"),
                    ("severity_rank",), ("zone",), ("incident_id",)} <= indexes
    finally:
        engine.dispose()


def test_migrations_ship_with_the_package():
    names = {p.relative_to(MIGRATIONS).as_posix() for p in MIGRATIONS.rglob("*") if p.is_file()
             and "__pycache__" not in p.parts}
    assert {"env.py", "script.py.mako", "versions/0001_incidents.py", "versions/0002_report_index.py"} <= names


def test_sqlite_file_gets_its_folder_and_wal(tmp_path):
    path = tmp_path / "deep" / "er" / "history.db"
    h = History(f"sqlite:///{path}")
    try:
        h.migrate()
        assert path.exists()
        with h._engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
    finally:
        h.close()


# --- writes and reads -------------------------------------------------------------------------------------------------


def full_incident() -> Incident:
    metrics = ConflictFacts(conflictType="vehicle-pedestrian", trackIds=[3, 7], classes=["car", "person"],
                            ttc=0.8123456789, pet=0.4, distance=2.5, minDistance=1.25, relativeSpeed=12.3,
                            speeds={"3": 30.1, "7": 4.2}, units="metric", severity="high", point=[320.5, 240.25])
    return Incident(incidentId="inc-round", cameraId="cam-1", state="end", severity="high", openedBy="near_miss",
                    startedAt=1700000000.123456, updatedAt=1700000004.5, endedAt=1700000007.75, groupId="g-3",
                    zones=["crossing", "school"], classes=["car", "person"], trackIds=[3, 7],
                    conflictType="vehicle-pedestrian", metrics=metrics,
                    verdicts=[verdict("t-late", 1700000004.0, "second look"), verdict("t-early", 1700000001.0)])


def test_save_get_round_trip(history):
    incident = full_incident()
    assert history.get(incident.incidentId) is None
    history.save(incident)
    got = history.get(incident.incidentId)
    expected = incident.model_copy(update={"verdicts": sorted(incident.verdicts, key=lambda v: v.at)})
    assert got == expected
    assert got.to_wire() == expected.to_wire()
    assert [v.taskId for v in got.verdicts] == ["t-early", "t-late"]
    assert got.metrics.ttc == 0.8123456789 and got.startedAt == 1700000000.123456


def test_update_keeps_one_row_and_the_latest_state(history):
    first = make("inc-1", zones=["crossing", "school"], severity="medium", started=100.0, classes=["car", "person"])
    history.save(first)
    latest = first.model_copy(update={"state": "end", "severity": "high", "zones": ["bus-stop", "crossing"],
                                      "updatedAt": 130.0, "endedAt": 133.0, "trackIds": [1, 2, 5]})
    history.save(latest)
    assert history.count() == 1
    assert history.get("inc-1") == latest
    assert [i.incidentId for i in history.list(zone="school")[0]] == []  # the zones were replaced, not added to
    assert [i.incidentId for i in history.list(zone="bus-stop")[0]] == ["inc-1"]
    assert [i.incidentId for i in history.list(severity="high")[0]] == ["inc-1"]


def test_a_verdict_is_never_stored_twice(history, database_url):
    v1, v2 = verdict("task-1", 10.0), verdict("task-2", 20.0)
    history.save(make("inc-v", verdicts=[v1]))
    history.save(make("inc-v", verdicts=[v1, v2], state="update"))
    history.save(make("inc-v", verdicts=[v2, v2], state="update"))  # twice in one save too
    assert [v.taskId for v in history.get("inc-v").verdicts] == ["task-1", "task-2"]
    assert history.add_verdict("inc-v", v2) is False
    assert history.add_verdict("inc-v", verdict("task-1", 10.0, "a different text, same task")) is False
    assert history.add_verdict("inc-v", verdict("task-3", 15.0)) is True
    got = history.get("inc-v")
    assert [v.taskId for v in got.verdicts] == ["task-1", "task-3", "task-2"]  # ordered by `at`
    assert got.verdicts[0].description == "a car close to a pedestrian"  # the first one stored stays
    assert child_rows(database_url, ["inc-v"])["verdicts"] == 3
    with pytest.raises(LookupError, match="no incident nowhere"):
        history.add_verdict("nowhere", verdict("task-4", 1.0))


# --- list: filters and paging -----------------------------------------------------------------------------------------

#                 id     camera   zones                     severity  startedAt
FIXTURE = [("i01", "cam-a", ["crossing"], "low", 1000.0),
           ("i02", "cam-a", ["crossing", "school"], "medium", 1010.0),
           ("i03", "cam-b", [], "high", 1020.0),
           ("i04", "cam-a", ["school"], "high", 1030.0),
           ("i05", "cam-c", ["crossing"], "medium", 1040.0),
           ("i06", "cam-b", ["bus-stop"], "low", 1050.0),
           ("i07", "cam-b", ["crossing"], "medium", 1050.0),  # same start as i06: the id breaks the tie
           ("i08", "cam-a", [], "low", 1060.0),
           ("i09", "cam-c", ["bus-stop", "school"], "high", 1070.0),
           ("i10", "cam-a", ["crossing"], "medium", 1080.0),
           ("i11", "cam-b", ["school"], "low", 1090.0),
           ("i12", "cam-c", ["crossing"], "high", 1100.0)]
NEWEST_FIRST = ["i12", "i11", "i10", "i09", "i08", "i07", "i06", "i05", "i04", "i03", "i02", "i01"]


@pytest.fixture()
def twelve(history) -> History:
    for incident_id, camera, zones, severity, started in reversed(FIXTURE):  # stored in another order than listed
        history.save(make(incident_id, camera, zones, severity, started,
                          verdicts=[verdict(f"task-{incident_id}", started + 1)]))
    return history


@pytest.mark.parametrize(("filters", "expected"), [
    ({}, NEWEST_FIRST),
    ({"camera_id": "cam-a"}, ["i10", "i08", "i04", "i02", "i01"]),
    ({"camera_id": "cam-b"}, ["i11", "i07", "i06", "i03"]),
    ({"camera_id": "cam-z"}, []),
    ({"zone": "crossing"}, ["i12", "i10", "i07", "i05", "i02", "i01"]),
    ({"zone": "school"}, ["i11", "i09", "i04", "i02"]),
    ({"zone": "nowhere"}, []),
    ({"severity": "low"}, NEWEST_FIRST),
    ({"severity": "medium"}, ["i12", "i10", "i09", "i07", "i05", "i04", "i03", "i02"]),
    ({"severity": "high"}, ["i12", "i09", "i04", "i03"]),
    ({"since": 1050.0, "until": 1080.0}, ["i09", "i08", "i07", "i06"]),  # since <= startedAt < until
    ({"until": 1010.0}, ["i01"]),
    ({"since": 1095.0}, ["i12"]),
    ({"camera_id": "cam-a", "zone": "crossing", "severity": "medium"}, ["i10", "i02"]),
    ({"camera_id": "cam-b", "since": 1050.0}, ["i11", "i07", "i06"]),
], ids=lambda value: str(value) if isinstance(value, dict) else None)
def test_list_filters(twelve, filters, expected):
    items, cursor = twelve.list(**filters)
    assert [i.incidentId for i in items] == expected
    assert cursor is None
    for item in items:  # whole incidents, verdicts included
        assert [v.taskId for v in item.verdicts] == [f"task-{item.incidentId}"]


def test_paging_gives_each_incident_once_in_order(twelve):
    pages, cursor = [], None
    while True:
        items, cursor = twelve.list(limit=5, cursor=cursor)
        pages.append([i.incidentId for i in items])
        if cursor is None:
            break
        assert len(pages) < 10, "the cursor never ends"
    assert pages == [NEWEST_FIRST[0:5], NEWEST_FIRST[5:10], NEWEST_FIRST[10:12]]


def test_paging_with_a_filter_and_a_page_that_ends_exactly(twelve):
    first, cursor = twelve.list(zone="crossing", limit=3)
    assert [i.incidentId for i in first] == ["i12", "i10", "i07"] and cursor is not None
    second, cursor = twelve.list(zone="crossing", limit=3, cursor=cursor)
    assert [i.incidentId for i in second] == ["i05", "i02", "i01"]
    assert cursor is None  # exactly full: no empty page after it
    # the tie at 1050: a page boundary between i07 and i06 loses neither
    top, cursor = twelve.list(limit=6)
    assert [i.incidentId for i in top][-1] == "i07"
    rest, _ = twelve.list(limit=500, cursor=cursor)
    assert [i.incidentId for i in rest] == NEWEST_FIRST[6:]


def test_bad_cursor_limit_or_severity_is_a_value_error(twelve):
    not_json = base64.urlsafe_b64encode(b"\xff\xfe not json").decode()
    wrong_shape = base64.urlsafe_b64encode(b'{"a": 1}').decode()
    wrong_types = base64.urlsafe_b64encode(b'["1000", 5]').decode()
    not_finite = base64.urlsafe_b64encode(b'[NaN, "i01"]').decode()
    for bad in ("garbage!", "x", not_json, wrong_shape, wrong_types, not_finite):
        with pytest.raises(ValueError, match="invalid cursor"):
            twelve.list(cursor=bad)
    for limit in (0, 501):
        with pytest.raises(ValueError, match="limit must be from 1 to 500"):
            twelve.list(limit=limit)
    with pytest.raises(ValueError, match="severity must be one of"):
        twelve.list(severity="extreme")


# --- media ------------------------------------------------------------------------------------------------------------


def test_media_round_trip_and_urls(history):
    history.save(make("inc-m"))
    assert history.get("inc-m").snapshotUrl is None and history.get("inc-m").clipUrl is None
    assert history.media("inc-m", "snapshot") is None
    jpeg = b"\xff\xd8\xff" + os.urandom(50_000)
    history.put_media("inc-m", "snapshot", "image/jpeg", jpeg)
    got = history.get("inc-m")
    assert (got.snapshotUrl, got.clipUrl) == ("/api/incidents/inc-m/snapshot", None)
    assert history.media("inc-m", "snapshot") == ("image/jpeg", jpeg)
    clip = os.urandom(1_500_000)
    history.put_media("inc-m", "clip", "video/mp4", clip)
    assert history.media("inc-m", "clip") == ("video/mp4", clip)
    items, _ = history.list()
    assert [(i.snapshotUrl, i.clipUrl) for i in items] == [("/api/incidents/inc-m/snapshot",
                                                            "/api/incidents/inc-m/clip")]
    history.put_media("inc-m", "snapshot", "image/png", b"replaced")  # replaces, never a second one
    assert history.media("inc-m", "snapshot") == ("image/png", b"replaced")
    history.save(make("inc-m", state="update"))  # saving the incident again keeps its media
    assert history.get("inc-m").clipUrl == "/api/incidents/inc-m/clip"
    with pytest.raises(ValueError, match="media kind"):
        history.put_media("inc-m", "thumbnail", "image/jpeg", b"x")
    with pytest.raises(LookupError, match="no incident missing"):
        history.put_media("missing", "snapshot", "image/jpeg", b"x")
    assert history.media("missing", "snapshot") is None


# --- retention --------------------------------------------------------------------------------------------------------


def test_purge_removes_old_incidents_with_their_children(history, database_url):
    cutoff = 5000.0
    cases = {
        "old-ended": make("old-ended", zones=["crossing"], started=1000.0, updatedAt=4000.0, endedAt=4900.0,
                          state="end"),
        "old-open": make("old-open", zones=["school"], started=1000.0, updatedAt=4999.0),  # never ended
        "ended-after": make("ended-after", zones=["crossing"], started=1000.0, updatedAt=4000.0, endedAt=5100.0,
                            state="end"),  # started long ago, ended after the cutoff
        "open-recent": make("open-recent", zones=["school"], started=4000.0, updatedAt=6000.0),
    }
    for incident_id, incident in cases.items():
        history.save(incident.model_copy(update={"verdicts": [verdict(f"t-{incident_id}", 4500.0)]}))
        history.put_media(incident_id, "snapshot", "image/jpeg", b"jpeg")
        history.put_media(incident_id, "clip", "video/mp4", b"mp4")
    gone, kept = ["old-ended", "old-open"], ["ended-after", "open-recent"]
    assert child_rows(database_url, gone) == {"incident_zones": 2, "verdicts": 2, "incident_media": 4}
    assert history.purge(cutoff) == 2
    assert history.count() == 2
    assert sorted(i.incidentId for i in history.list()[0]) == kept
    assert all(history.get(i) is None for i in gone)
    assert child_rows(database_url, gone) == {"incident_zones": 0, "verdicts": 0, "incident_media": 0}
    assert child_rows(database_url, kept) == {"incident_zones": 2, "verdicts": 2, "incident_media": 4}
    assert history.purge(cutoff) == 0

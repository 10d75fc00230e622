"""The controller's durable metadata: scopes, streams, segments, reader groups.

Stored in SQLite (stdlib) with `synchronous=FULL` in WAL mode: every committed change is
fsynced before the controller answers. This is the first cut; DESIGN.md §9 moves stream
metadata into table segments of the data plane in a later issue (the controller then keeps
only caches). Every workflow that changes several rows records its intent first (the
stream's `state`), so a controller restart resumes it (see streams.py).
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import NamedTuple

from streamvault.client.protocol.errors import InvalidArgument

SCHEMA = """
CREATE TABLE IF NOT EXISTS cluster (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scopes (scope TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS streams (
    scope TEXT NOT NULL, stream TEXT NOT NULL, state TEXT NOT NULL,
    PRIMARY KEY (scope, stream));
CREATE TABLE IF NOT EXISTS segments (
    scope TEXT NOT NULL, stream TEXT NOT NULL, segment_id INTEGER NOT NULL,
    key_low REAL NOT NULL, key_high REAL NOT NULL,
    PRIMARY KEY (scope, stream, segment_id));
CREATE TABLE IF NOT EXISTS reader_groups (
    scope TEXT NOT NULL, grp TEXT NOT NULL, streams TEXT NOT NULL, from_tail INTEGER NOT NULL,
    state TEXT NOT NULL, PRIMARY KEY (scope, grp));
"""

CREATING, ACTIVE, SEALING, SEALED, DELETING = "CREATING", "ACTIVE", "SEALING", "SEALED", "DELETING"


class SegmentRow(NamedTuple):
    segment_id: int
    key_low: float
    key_high: float


class ReaderGroupRow(NamedTuple):
    scope: str
    group: str
    streams: list[str]
    from_tail: bool
    state: str


class MetadataStore:
    """One connection per thread; SQLite serialises writers."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=True)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def _tx(self) -> _Tx:
        return _Tx(self.db)

    # cluster ---------------------------------------------------------------------------
    def container_count(self, requested: int) -> int:
        """The cluster's fixed container count; set on first start, checked afterwards."""
        with self._tx():
            row = self.db.execute(
                "SELECT value FROM cluster WHERE key='container_count'"
            ).fetchone()
            if row is None:
                self.db.execute(
                    "INSERT INTO cluster VALUES ('container_count', ?)", (str(requested),)
                )
                return requested
        stored = int(row[0])
        if requested and requested != stored:
            raise InvalidArgument(
                f"container_count={requested} but this cluster was created with "
                f"{stored}; the count is fixed at creation",
                field="containers",
            )
        return stored

    # scopes ----------------------------------------------------------------------------
    def scope_exists(self, scope: str) -> bool:
        return (
            self.db.execute("SELECT 1 FROM scopes WHERE scope=?", (scope,)).fetchone() is not None
        )

    def create_scope(self, scope: str) -> bool:
        with self._tx():
            cur = self.db.execute("INSERT OR IGNORE INTO scopes VALUES (?)", (scope,))
            return cur.rowcount == 1

    def delete_scope(self, scope: str) -> bool:
        with self._tx():
            return self.db.execute("DELETE FROM scopes WHERE scope=?", (scope,)).rowcount == 1

    def list_scopes(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT scope FROM scopes ORDER BY scope")]

    # streams ---------------------------------------------------------------------------
    def stream_state(self, scope: str, stream: str) -> str | None:
        row = self.db.execute(
            "SELECT state FROM streams WHERE scope=? AND stream=?", (scope, stream)
        ).fetchone()
        return None if row is None else row[0]

    def list_streams(self, scope: str, *, internal: bool = False) -> list[str]:
        rows = self.db.execute("SELECT stream FROM streams WHERE scope=? ORDER BY stream", (scope,))
        return [r[0] for r in rows if internal or not r[0].startswith("_")]

    def insert_stream(self, scope: str, stream: str, segments: list[SegmentRow]) -> None:
        with self._tx():
            self.db.execute("INSERT INTO streams VALUES (?, ?, ?)", (scope, stream, CREATING))
            self.db.executemany(
                "INSERT INTO segments VALUES (?, ?, ?, ?, ?)",
                [(scope, stream, *s) for s in segments],
            )

    def set_stream_state(self, scope: str, stream: str, state: str) -> None:
        with self._tx():
            self.db.execute(
                "UPDATE streams SET state=? WHERE scope=? AND stream=?", (state, scope, stream)
            )

    def remove_stream(self, scope: str, stream: str) -> None:
        with self._tx():
            self.db.execute("DELETE FROM segments WHERE scope=? AND stream=?", (scope, stream))
            self.db.execute("DELETE FROM streams WHERE scope=? AND stream=?", (scope, stream))

    def segments(self, scope: str, stream: str) -> list[SegmentRow]:
        rows = self.db.execute(
            "SELECT segment_id, key_low, key_high FROM segments WHERE scope=? "
            "AND stream=? ORDER BY key_low",
            (scope, stream),
        )
        return [SegmentRow(*r) for r in rows]

    def unfinished_streams(self) -> list[tuple[str, str, str]]:
        rows = self.db.execute(
            "SELECT scope, stream, state FROM streams WHERE state IN (?, ?, ?)",
            (CREATING, SEALING, DELETING),
        )
        return [tuple(r) for r in rows]

    # reader groups ---------------------------------------------------------------------
    def reader_group(self, scope: str, group: str) -> ReaderGroupRow | None:
        row = self.db.execute(
            "SELECT scope, grp, streams, from_tail, state FROM reader_groups "
            "WHERE scope=? AND grp=?",
            (scope, group),
        ).fetchone()
        if row is None:
            return None
        return ReaderGroupRow(row[0], row[1], json.loads(row[2]), bool(row[3]), row[4])

    def insert_reader_group(
        self, scope: str, group: str, streams: list[str], from_tail: bool
    ) -> None:
        with self._tx():
            self.db.execute(
                "INSERT INTO reader_groups VALUES (?, ?, ?, ?, ?)",
                (scope, group, json.dumps(streams), int(from_tail), CREATING),
            )

    def set_reader_group_state(self, scope: str, group: str, state: str) -> None:
        with self._tx():
            self.db.execute(
                "UPDATE reader_groups SET state=? WHERE scope=? AND grp=?", (state, scope, group)
            )

    def remove_reader_group(self, scope: str, group: str) -> None:
        with self._tx():
            self.db.execute("DELETE FROM reader_groups WHERE scope=? AND grp=?", (scope, group))

    def unfinished_reader_groups(self) -> list[ReaderGroupRow]:
        rows = self.db.execute(
            "SELECT scope, grp, streams, from_tail, state FROM reader_groups WHERE state != ?",
            (ACTIVE,),
        )
        return [ReaderGroupRow(r[0], r[1], json.loads(r[2]), bool(r[3]), r[4]) for r in rows]


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT (or ROLLBACK on error)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")

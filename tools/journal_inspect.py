"""`streamvault log inspect` for replicated logs: the bookies' journals, offline, read-only.

For each `<data-dir>/bookie-*/journal` it walks the journal files in order with the
journal's own scanner (every record's CRC32C; a damaged commit followed by durable ones is
corruption; a torn tail of the newest file is reported, not an error), checks that each
entry's payload is a valid log record of that ledger and entry, and replays fence and delete
markers into a per-ledger summary. Then it checks the replicated logs' metadata in
`<data-dir>/coordination`: every entry of a closed ledger must have a valid copy on at least
one bookie of the ledger's ensemble.

It never takes the journal's lock, zeroes a torn tail or changes a file.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

from streamvault.client.protocol.errors import DataCorruption
from streamvault.dataplane.log.framing import RECORD_HEADER_BYTES, check_record, parse_header
from streamvault.dataplane.log.journal_format import (
    HEADER_BYTES,
    KIND_DELETE,
    KIND_ENTRY,
    KIND_FENCE,
    ScanEnd,
    parse_file_name,
    scan_file,
)
from streamvault.dataplane.log.metadata import LocalFileStore


def bookie_dirs(data_dir: str) -> list[tuple[str, str]]:
    """(bookie id, journal dir) of every bookie under the data dir."""
    out = []
    for name in sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else []:
        journal = os.path.join(data_dir, name, "journal")
        if name.startswith("bookie-") and os.path.isdir(journal):
            out.append((name[len("bookie-") :], journal))
    return out


def inspect_journal(directory: str) -> tuple[dict[str, Any], dict[int, set[int]]]:
    """A report of one journal, and {ledger: entry ids with a valid copy}. Raises
    DataCorruption naming the file and position of the first damage."""
    seqs = sorted(
        seq
        for name in os.listdir(directory)
        if (seq := parse_file_name(name, "journal-")) is not None
    )
    ledgers: dict[int, dict[str, Any]] = {}
    held: dict[int, set[int]] = {}
    report: dict[str, Any] = {"journal": directory, "files": len(seqs), "records": 0}
    prev: int | None = None
    for index, seq in enumerate(seqs):
        path = os.path.join(directory, f"journal-{seq:016x}.jnl")
        ends: list[ScanEnd] = []
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                continue
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(mm)
        try:
            last = index == len(seqs) - 1
            for record in scan_file(
                view, path=path, file_seq=seq, prev_commit_seq=prev, last=last, result=ends
            ):
                report["records"] += 1
                summary = ledgers.setdefault(
                    record.ledger_id, {"entries": 0, "last_entry": -1, "fenced_epoch": None}
                )
                if record.kind == KIND_ENTRY:
                    start = record.pos + HEADER_BYTES
                    _check_entry(view[start : start + record.payload_bytes], record, path)
                    summary["entries"] += 1
                    summary["last_entry"] = max(summary["last_entry"], record.entry_id)
                    held.setdefault(record.ledger_id, set()).add(record.entry_id)
                elif record.kind == KIND_FENCE:
                    summary["fenced_epoch"] = max(summary["fenced_epoch"] or 0, record.epoch)
                elif record.kind == KIND_DELETE:
                    ledgers.pop(record.ledger_id, None)
                    held.pop(record.ledger_id, None)
        finally:
            view.release()
            mm.close()
        if ends:
            prev = ends[0].last_commit_seq if ends[0].last_commit_seq is not None else prev
            if ends[0].torn and last:
                report["torn_tail_at"] = ends[0].end_pos
    report["ledgers"] = {str(k): v for k, v in sorted(ledgers.items())}
    return report, held


def _check_entry(payload: memoryview, record: Any, path: str) -> None:
    header = parse_header(payload, 0)
    if (
        header is None
        or header.ledger_id != record.ledger_id
        or header.entry_id != record.entry_id
        or RECORD_HEADER_BYTES + header.payload_bytes != len(payload)
        or not check_record(payload, 0, header)
    ):
        raise DataCorruption(
            f"journal {path}: entry {record.entry_id} of ledger {record.ledger_id} at "
            f"{record.pos} is not a valid log record",
            ledger=record.ledger_id,
            entry=record.entry_id,
        )


def inspect_bookies(data_dir: str) -> tuple[list[dict[str, Any]], str | None]:
    """Reports per bookie and per replicated log, and the first corruption (or None)."""
    reports: list[dict[str, Any]] = []
    copies: dict[str, dict[int, set[int]]] = {}
    for bookie, directory in bookie_dirs(data_dir):
        try:
            report, held = inspect_journal(directory)
        except DataCorruption as exc:
            reports.append({"bookie": bookie, "journal": directory, "error": exc.message})
            return reports, f"bookie {bookie}: {exc.message}"
        report["bookie"] = bookie
        reports.append(report)
        copies[bookie] = held
    if not copies:
        return reports, None
    store = LocalFileStore(os.path.join(data_dir, "coordination"))
    coordination = os.path.join(data_dir, "coordination")
    for name in sorted(os.listdir(coordination)) if os.path.isdir(coordination) else []:
        if not name.endswith(".json") or name.startswith("."):
            continue
        meta, _ = store.get(name[: -len(".json")])
        for info in meta.ledgers if meta else []:
            if not info.ensemble or info.state != "closed":
                continue
            for entry in range(info.last_entry_id + 1):
                if not any(
                    entry in copies.get(b, {}).get(info.ledger_id, ()) for b in info.ensemble
                ):
                    return reports, (
                        f"{name[:-5]}: ledger {info.ledger_id} closed at entry "
                        f"{info.last_entry_id} but entry {entry} has no valid copy on "
                        f"bookies {info.ensemble}"
                    )
    return reports, None

"""`streamvault log inspect --data-dir DIR`: list every container log's ledgers and entries
and verify every record's CRC32C, offline and read-only (no lock is taken, nothing is
changed, so it can also look at the logs of a running cluster). Replicated logs are checked
in the bookies' journals (journal_inspect.py).

Exit status: 0 when every record checks out (a torn tail of an open ledger is reported, not
an error: it was never acknowledged), 1 on corruption (the message names the ledger, entry
and file position), 2 on bad usage.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

from streamvault.client.protocol.errors import DataCorruption
from streamvault.dataplane.container import operations as ops
from streamvault.dataplane.log.ledger import ScanEnd, ledger_path, scan_ledger
from streamvault.dataplane.log.metadata import LocalFileStore
from streamvault.tools.journal_inspect import inspect_bookies

OP_NAMES = {
    ops.OP_CREATE: "create",
    ops.OP_APPEND: "append",
    ops.OP_SEAL: "seal",
    ops.OP_DELETE: "delete",
    ops.OP_CHUNK: "chunk",
    ops.OP_CHECKPOINT: "checkpoint",
    ops.OP_TRUNCATE: "truncate",
}


def inspect(data_dir: str, *, entries: bool = False) -> tuple[dict[str, Any], str | None]:
    """Reports of the local container logs and of the bookies, and the first corruption
    found (or None)."""
    logs, error = inspect_local(data_dir, entries=entries)
    bookies: list[dict[str, Any]] = []
    if error is None:
        bookies, error = inspect_bookies(data_dir)
    return {"logs": logs, "bookies": bookies}, error


def inspect_local(
    data_dir: str, *, entries: bool = False
) -> tuple[list[dict[str, Any]], str | None]:
    """Reports per local container log, and the first corruption found (or None)."""
    store = LocalFileStore(os.path.join(data_dir, "coordination"))
    log_root = os.path.join(data_dir, "log")
    reports = []
    names = sorted(os.listdir(log_root)) if os.path.isdir(log_root) else []
    for name in names:
        meta, version = store.get(name)
        report: dict[str, Any] = {
            "log": name,
            "epoch": meta.epoch if meta else 0,
            "metadata_version": version,
            "ledgers": [],
        }
        reports.append(report)
        for info in meta.ledgers if meta else []:
            try:
                report["ledgers"].append(_ledger(os.path.join(log_root, name), info, entries))
            except DataCorruption as exc:
                report["ledgers"].append({"ledger": info.ledger_id, "error": exc.message})
                return reports, f"{name}: {exc.message}"
    return reports, None


def _ledger(directory: str, info: Any, entries: bool) -> dict[str, Any]:
    path = ledger_path(directory, info.ledger_id)
    out: dict[str, Any] = {
        "ledger": info.ledger_id,
        "state": info.state,
        "last_entry": info.last_entry_id,
        "records": 0,
        "payload_bytes": 0,
    }
    if not os.path.exists(path):
        out["file"] = "missing"
        if info.state == "closed" and info.last_entry_id >= 0:
            raise DataCorruption(
                f"ledger {info.ledger_id}: closed at entry "
                f"{info.last_entry_id} but {path} is missing"
            )
        return out
    closed = info.last_entry_id if info.state == "closed" else None
    ends: list[ScanEnd] = []
    kinds: Counter[str] = Counter()
    listed = []
    for record in scan_ledger(path, info.ledger_id, closed_last_entry_id=closed, result=ends):
        record_kinds = Counter(
            OP_NAMES.get(op.kind, str(op.kind)) for op in ops.iter_ops(record.payload)
        )
        kinds.update(record_kinds)
        out["records"] += 1
        out["payload_bytes"] += len(record.payload)
        if entries:
            listed.append(
                {
                    "entry": record.entry_id,
                    "position": record.record_pos,
                    "epoch": record.epoch,
                    "bytes": len(record.payload),
                    "ops": dict(record_kinds),
                }
            )
    out["ops"] = dict(kinds)
    if ends and ends[0].cut_tail:
        out["torn_tail_at"] = ends[0].end_pos
    if entries:
        out["entries"] = listed
    return out


def render(reports: dict[str, Any], error: str | None, as_json: bool) -> str:
    if as_json:
        return json.dumps({**reports, "corruption": error}, indent=2)
    lines = []
    for bookie in reports["bookies"]:
        if "error" in bookie:
            lines.append(f"bookie {bookie['bookie']}: CORRUPT: {bookie['error']}")
            continue
        tail = f"  torn tail cut at {bookie['torn_tail_at']}" if "torn_tail_at" in bookie else ""
        lines.append(
            f"bookie {bookie['bookie']}  files={bookie['files']} records={bookie['records']} "
            f"ledgers={len(bookie['ledgers'])}{tail}"
        )
        for ledger, summary in bookie["ledgers"].items():
            fenced = summary["fenced_epoch"]
            lines.append(
                f"  ledger {ledger} entries={summary['entries']} "
                f"last_entry={summary['last_entry']}" + (f" fenced@{fenced}" if fenced else "")
            )
    for report in reports["logs"]:
        lines.append(f"{report['log']}  epoch={report['epoch']}  ledgers={len(report['ledgers'])}")
        for ledger in report["ledgers"]:
            if "error" in ledger:
                lines.append(f"  ledger {ledger['ledger']}: CORRUPT: {ledger['error']}")
                continue
            ops_text = " ".join(f"{k}={v}" for k, v in sorted(ledger.get("ops", {}).items()))
            tail = (
                f"  torn tail cut at {ledger['torn_tail_at']}" if "torn_tail_at" in ledger else ""
            )
            lines.append(
                f"  ledger {ledger['ledger']} {ledger['state']} last_entry="
                f"{ledger['last_entry']} records={ledger['records']} "
                f"bytes={ledger['payload_bytes']} {ops_text}{tail}"
            )
            for entry in ledger.get("entries", []):
                lines.append(
                    f"    entry {entry['entry']} at {entry['position']} epoch="
                    f"{entry['epoch']} bytes={entry['bytes']} {entry['ops']}"
                )
    lines.append(f"CORRUPTION: {error}" if error else "all records verified")
    return "\n".join(lines)

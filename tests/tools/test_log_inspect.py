"""`streamvault log inspect`: lists a real data dir's logs, exit 0 when every CRC checks
out, exit 1 naming the ledger and position when a durable record is damaged."""

from __future__ import annotations

import json
import subprocess
import sys

from support.history import event, unique

from streamvault.client import StreamManager
from streamvault.dataplane.log.framing import RECORD_HEADER_BYTES
from streamvault.dataplane.log.journal_format import HEADER_BYTES as JOURNAL_HEADER_BYTES


def _inspect(data_dir, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "streamvault.tools.cli",
            "log",
            "inspect",
            "--data-dir",
            str(data_dir),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_inspect_verifies_every_record_then_reports_corruption(standalone):
    scope, stream = unique("s"), unique("t")
    with StreamManager(standalone.controller) as mgr:
        mgr.create_scope(scope)
        mgr.create_stream(scope, stream, initial_segments=1)
        with mgr.create_writer(scope, stream) as writer:
            for batch in range(5):
                writer.write_events([event(0, batch * 100 + i) for i in range(100)]).result(30)
    standalone.stop()
    clean = _inspect(standalone.data_dir, "--json", "--entries")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    report = json.loads(clean.stdout)
    assert report["corruption"] is None and len(report["logs"]) == standalone.containers
    appends = sum(
        ledger.get("ops", {}).get("append", 0)
        for log in report["logs"]
        for ledger in log["ledgers"]
    )
    assert appends >= 5
    busy = next(log for log in report["logs"] if any(led["records"] for led in log["ledgers"]))
    ledger = next(led for led in busy["ledgers"] if led["records"])
    path = next(
        (standalone.data_dir / "log" / busy["log"]).glob(f"ledger-{ledger['ledger']:016x}.log")
    )
    with open(path, "r+b") as f:  # damage the payload of entry 0 (later entries confirm it)
        f.seek(RECORD_HEADER_BYTES + 1)
        byte = f.read(1)
        f.seek(RECORD_HEADER_BYTES + 1)
        f.write(bytes([byte[0] ^ 0x40]))
    broken = _inspect(standalone.data_dir)
    assert broken.returncode == 1, broken.stdout
    assert "CORRUPTION" in broken.stdout and f"ledger {ledger['ledger']}" in broken.stdout


def test_inspect_checks_the_bookie_journals_of_a_replicated_log(tmp_path):
    """With --replicas 3: every bookie's journal is scanned and every closed ledger's
    entries are found; damage to a durable commit of one journal is reported (exit 1)."""
    from support.cluster import Standalone

    cluster = Standalone(tmp_path / "data", extra=["--replicas", "3"]).start()
    try:
        scope, stream = unique("s"), unique("t")
        with StreamManager(cluster.controller) as mgr:
            mgr.create_scope(scope)
            mgr.create_stream(scope, stream, initial_segments=1)
            with mgr.create_writer(scope, stream) as writer:
                for batch in range(5):
                    writer.write_events([event(0, batch * 100 + i) for i in range(100)]).result(30)
        assert cluster.stop() == 0
    finally:
        cluster.kill()
    clean = _inspect(cluster.data_dir, "--json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    report = json.loads(clean.stdout)
    assert report["corruption"] is None
    assert sorted(b["bookie"] for b in report["bookies"]) == ["0", "1", "2"]
    assert all(b["records"] > 0 and b["ledgers"] for b in report["bookies"])
    journal = sorted((cluster.data_dir / "bookie-0" / "journal").glob("journal-*.jnl"))[0]
    damaged = JOURNAL_HEADER_BYTES + 20  # inside the first record: later commits follow it
    with open(journal, "r+b") as f:
        f.seek(damaged)
        byte = f.read(1)
        f.seek(damaged)
        f.write(bytes([byte[0] ^ 0x40]))
    broken = _inspect(cluster.data_dir)
    assert broken.returncode == 1, broken.stdout
    assert "CORRUPTION: bookie 0" in broken.stdout, broken.stdout

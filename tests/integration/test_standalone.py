"""The standalone supervisor as an operator sees it: status, process titles, Ctrl-C, and
the fixed container count."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from support.cluster import Standalone, cache_path_for_data

from streamvault.client import StreamManager


def _status_json(controller: str) -> list[dict]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamvault.tools.cli",
            "status",
            "--json",
            "--controller",
            controller,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def test_status_lists_every_process_with_role_pid_endpoint_state(standalone):
    processes = _status_json(standalone.controller)
    roles = sorted(p["role"] for p in processes)
    assert roles == ["controller", "host", "standalone", "uploader", "worker", "worker"], processes
    for p in processes:
        assert {"role", "pid", "endpoint", "state"} <= p.keys()
        assert p["state"] == "up", p
        assert psutil.pid_exists(p["pid"])
    workers = [p for p in processes if p["role"] == "worker"]
    assert all(p["endpoint"].startswith("tcp://127.0.0.1:") for p in workers)
    assert sorted(c for w in workers for c in w["containers"]) == list(range(8))
    assert all(
        w["info"]["durability_mode"] in ("o_direct+fdatasync", "buffered+fdatasync")
        for w in workers
    )
    assert set(standalone.group_pids()) >= {p["pid"] for p in processes}


def _stage_ok(summary: dict) -> bool:
    return summary["count"] > 0 and 0 <= summary["p50"] <= summary["p95"] <= summary["max"]


def test_status_shows_the_workers_commit_latency(standalone):
    """After appends, the worker with data reports its group-commit cycles' durations, in
    `status --json` and in the text form."""
    with StreamManager(standalone.controller) as mgr:
        mgr.create_scope("lat")
        mgr.create_stream("lat", "s", initial_segments=1)
        with mgr.create_writer("lat", "s") as writer:
            for _ in range(20):
                writer.write_events([b"x" * 100] * 100).result(30)
    deadline = time.monotonic() + 10  # the next heartbeat carries it
    while True:
        workers = [p for p in _status_json(standalone.controller) if p["role"] == "worker"]
        commits = [w["info"]["latency_ms"]["commit"] for w in workers]
        if any(c["count"] >= 20 for c in commits) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert any(c["count"] >= 20 and _stage_ok(c) for c in commits), commits
    text = subprocess.run(
        [sys.executable, "-m", "streamvault.tools.cli", "status"]
        + ["--controller", standalone.controller],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "latency ms (p50/p95/max over the last samples): commit " in text, text


def test_each_process_has_a_title_naming_its_role(standalone):
    titles = set()
    for pid in standalone.group_pids():
        try:
            titles.add(" ".join(psutil.Process(pid).cmdline()).strip())
        except psutil.NoSuchProcess:
            continue
    expected = {
        "streamvault standalone 0",
        "streamvault controller 0",
        "streamvault host 0",
        "streamvault worker 0",
        "streamvault worker 1",
        "streamvault uploader 0",
    }
    assert expected <= titles, titles


def test_the_uploader_runs_below_the_write_path_in_cpu_priority(standalone):
    """Uploads are background work: the uploader (all its threads) is niced by
    UPLOADER_NICE relative to the workers, whose loops a writer's acks wait on."""
    from streamvault.dataplane.uploader import UPLOADER_NICE

    processes = {p["role"]: p for p in _status_json(standalone.controller)}
    uploader = psutil.Process(processes["uploader"]["pid"])
    worker = psutil.Process(processes["worker"]["pid"])
    assert uploader.nice() - worker.nice() == UPLOADER_NICE > 0
    for thread in uploader.threads():
        stat = Path(f"/proc/{uploader.pid}/task/{thread.id}/stat").read_text()
        nice = int(stat.rpartition(")")[2].split()[16])  # field 19 of proc(5), after comm
        assert nice == uploader.nice(), (thread.id, nice)


def _holders(path: str) -> dict[int, str]:
    """pid -> title of every process on the machine that maps `path` or holds it open."""
    out: dict[int, str] = {}
    for proc in psutil.process_iter(["pid"]):
        pid = proc.info["pid"]
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
            fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            if path in maps or any(path in target for target in fds):
                out[pid] = " ".join(proc.cmdline()).strip()
        except (OSError, psutil.Error):
            continue  # gone meanwhile, or not ours to look at
    return out


def test_the_shared_cache_goes_with_its_processes_even_after_sigkill(tmp_path):
    """The host unlinks the cache file once made and hands its descriptor to the workers
    and the uploader: they map it and no name is left in /dev/shm. When every process is
    SIGKILLed (no clean-up runs) nothing holds the file any more, so its memory is back,
    where the named file used to stay until the data dir was started again."""
    cluster = Standalone(tmp_path / "data", cache_size="64M").start()
    try:
        path = cache_path_for_data(cluster.data_dir)
        assert not os.path.exists(path)
        titles = set(_holders(path).values())
        assert {
            "streamvault host 0",
            "streamvault worker 0",
            "streamvault worker 1",
            "streamvault uploader 0",
        } <= titles, titles
    finally:
        cluster.kill()  # waits until every process of the group is gone
    assert not os.path.exists(path)
    assert _holders(path) == {}


def test_sigint_stops_every_process_cleanly(tmp_path):
    cluster = Standalone(tmp_path / "data").start()
    pids = cluster.group_pids()
    os.killpg(cluster.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    assert cluster.proc.wait(timeout=30) == 0, cluster.logs()
    deadline = time.monotonic() + 30
    while (
        any(
            psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
            for p in pids
        )
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert not [
        p
        for p in pids
        if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    cluster.proc = None


def _refused_standalone(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`streamvault standalone` on tmp_path/data with `args`, expected to exit at once."""
    cmd = [sys.executable, "-m", "streamvault.tools.cli", "standalone"]
    cmd += ["--data-dir", str(tmp_path / "data"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_restart_with_another_container_count_is_refused(tmp_path):
    cluster = Standalone(tmp_path / "data").start()
    cluster.stop()
    out = _refused_standalone(
        tmp_path, "--port", str(cluster.port), "--containers", "6", "--ephemeral-ports"
    )
    assert out.returncode == 2
    assert "created with 8 containers" in out.stderr


def test_port_zero_binds_a_free_controller_port_named_in_the_ready_line(tmp_path):
    cluster = Standalone(tmp_path / "data", workers=1, containers=2, port=0).start()
    try:
        assert cluster.port != 0
        roles = {p["role"] for p in _status_json(cluster.controller)}
        assert {"controller", "host", "worker"} <= roles
    finally:
        cluster.stop()


def test_a_port_out_of_range_is_refused_with_its_flag_named(tmp_path):
    out = _refused_standalone(tmp_path, "--port", "70000")
    assert out.returncode == 2
    assert "--port 70000: not a TCP port" in out.stderr

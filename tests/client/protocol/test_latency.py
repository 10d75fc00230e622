"""Latency windows (client/protocol/latency.py): percentiles over the samples kept, the
count since start, a bounded window, clear errors."""

from __future__ import annotations

import random

import pytest

from streamvault.client.protocol.latency import LatencyWindow, summaries


def test_an_empty_window_reports_only_its_count():
    assert LatencyWindow().summary() == {"count": 0}


def test_percentiles_are_nearest_rank_in_milliseconds():
    window = LatencyWindow(samples=1000)
    values = [i / 1e6 for i in range(1, 1001)]  # 1 us .. 1000 us, shuffled
    random.Random(7).shuffle(values)
    for v in values:
        window.record(v)
    s = window.summary()
    assert s["count"] == 1000
    assert s["p50"] == pytest.approx(0.501)
    assert s["p95"] == pytest.approx(0.951)
    assert s["p99"] == pytest.approx(0.991)
    assert s["max"] == pytest.approx(1.0)


def test_only_the_last_samples_count_but_every_record_is_counted():
    window = LatencyWindow(samples=10)
    for _ in range(100):
        window.record(1.0)  # old, slow
    for _ in range(10):
        window.record(0.002)  # the last 10: 2 ms
    s = window.summary()
    assert s["count"] == 110
    assert s["p50"] == s["p99"] == s["max"] == pytest.approx(2.0)


def test_summaries_name_each_window():
    a, b = LatencyWindow(), LatencyWindow()
    a.record(0.001)
    assert summaries({"a": a, "b": b}) == {
        "a": {"count": 1, "p50": 1.0, "p95": 1.0, "p99": 1.0, "max": 1.0},
        "b": {"count": 0},
    }


def test_a_window_needs_room_for_a_sample():
    with pytest.raises(ValueError, match="samples=0"):
        LatencyWindow(samples=0)

"""ContainerFences: durable, never lowered, a damaged file is DataCorruption."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamvault.client.protocol.errors import DataCorruption
from streamvault.dataplane.log.container_fences import FILE_NAME, ContainerFences
from streamvault.dataplane.log.disk import OsDisk


def test_fences_survive_a_reopen_and_never_go_down(tmp_path: Path) -> None:
    fences = ContainerFences(str(tmp_path), OsDisk())
    assert fences.epoch(3) == 0
    fences.raise_to(3, 5)
    fences.raise_to(3, 4)
    fences.raise_to(9, 1)
    fences.persist()
    (tmp_path / f"{FILE_NAME}.tmp").write_bytes(b"left by a crash")
    again = ContainerFences(str(tmp_path), OsDisk())
    assert (again.epoch(3), again.epoch(9), again.epoch(4)) == (5, 1, 0)
    again.raise_to(3, 6)
    again.persist()
    assert ContainerFences(str(tmp_path), OsDisk()).epoch(3) == 6


def test_a_damaged_file_is_data_corruption(tmp_path: Path) -> None:
    fences = ContainerFences(str(tmp_path), OsDisk())
    fences.raise_to(1, 2)
    fences.persist()
    path = tmp_path / FILE_NAME
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(DataCorruption):
        ContainerFences(str(tmp_path), OsDisk())

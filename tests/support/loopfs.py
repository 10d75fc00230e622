"""A small ext4 file system on a loop device, for real ENOSPC (TESTING.md §4).

`LoopFS(path, size_mib)` creates an image file, formats it, attaches it to a loop device
and mounts it at `path`; `grow(size_mib)` grows it offline (umount, truncate, losetup -c,
e2fsck -fy, resize2fs, mount); `close()` unmounts and detaches. Needs root and a kernel with
loop devices; `available()` says whether this machine has them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def _run(*cmd: str) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {out.returncode}: {out.stderr.strip()}")
    return out.stdout.strip()


def available() -> bool:
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("losetup", "mkfs.ext4", "mount")):
        return False
    return os.path.exists("/dev/loop-control")


class LoopFS:
    def __init__(self, path: Path, size_mib: int) -> None:
        self.path = path
        self.image = path.parent / f"{path.name}.img"
        self.device = ""
        path.mkdir(parents=True, exist_ok=True)
        _run("truncate", "-s", f"{size_mib}M", str(self.image))
        _run("mkfs.ext4", "-q", "-F", str(self.image))
        self.device = _run("losetup", "--find", "--show", str(self.image))
        _run("mount", self.device, str(path))

    def grow(self, size_mib: int) -> None:
        _run("umount", str(self.path))
        _run("truncate", "-s", f"{size_mib}M", str(self.image))
        _run("losetup", "-c", self.device)
        subprocess.run(["e2fsck", "-fy", self.device], capture_output=True, timeout=60)
        _run("resize2fs", self.device)
        _run("mount", self.device, str(self.path))

    def close(self) -> None:
        subprocess.run(["umount", str(self.path)], capture_output=True, timeout=60)
        if self.device:
            subprocess.run(["losetup", "-d", self.device], capture_output=True, timeout=60)
        try:
            self.image.unlink()
        except FileNotFoundError:
            pass

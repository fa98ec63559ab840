"""What processes a test left running, read from Linux's ``/proc``."""

from __future__ import annotations

import os
from pathlib import Path

#: Whether :func:`ffmpeg_children` can look (Linux only).
HAS_PROC = Path("/proc/self/stat").exists()


def ffmpeg_children(exe: str) -> list[int]:
    """PIDs of live FFmpeg processes that are children of this process, read from /proc."""
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            target = os.readlink(entry / "exe")
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        state, ppid = fields[0], int(fields[1])
        if ppid == me and state != "Z" and os.path.basename(target) == os.path.basename(exe):
            found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` is a process (a zombie counts: it has not been waited for)."""
    return Path(f"/proc/{pid}").exists()

"""Which process did something, and whether it has ended: how a run killed with SIGKILL, which cannot close itself,
is told from one still going.

A process is known by its host name and pid and, on Linux, by the machine's boot id, its pid namespace and its start
time. It has certainly ended when it ran on this host and

* this host has booted since (another boot id), or
* in the same pid namespace, no process has its pid, the one that has it is a zombie, or it started at another time
  (the pid was reused).

A process of another host, or of another container on this host (another pid namespace), cannot be seen from here:
it counts as alive. Without ``/proc`` (macOS) only the pid is checked, so a reused pid counts as alive too.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessId:
    host: str
    pid: int
    boot: str = ""        # Linux boot id: after a reboot every process of the host has ended
    namespace: str = ""   # Linux pid namespace: containers on one host number their processes apart
    start: str = ""       # start time in clock ticks after boot: another start time is another process

    @classmethod
    def current(cls) -> "ProcessId":
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _read("/proc/sys/kernel/random/boot_id"), _namespace(),
                   _stat(pid)[1])

    def has_ended(self) -> bool:
        """Whether this process has certainly ended (see the module docstring)."""
        here = ProcessId.current()
        if self.host != here.host:
            return False
        if self.boot and here.boot and self.boot != here.boot:
            return True
        if self.namespace and self.namespace != here.namespace:
            return False
        if Path("/proc/self/stat").exists():
            state, start = _stat(self.pid)
            return state in ("", "Z") or (bool(self.start) and start != self.start)
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:   # another user's process
            return False
        return False


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _stat(pid: int) -> tuple[str, str]:
    """The state (``Z``: a zombie) and start time of process ``pid`` from ``/proc``; empty strings without one."""
    fields = _read(f"/proc/{pid}/stat").rpartition(")")[2].split()   # the name in parentheses may hold spaces
    return (fields[0], fields[19]) if len(fields) > 19 else ("", "")

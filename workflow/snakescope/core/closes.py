"""Files closed after writing, as the Linux kernel reports them (inotify), for watch mode.

Polling sees a new file only at its next look and a grown one at the look after; the kernel says the moment a
writer closes a file (``IN_CLOSE_WRITE``) or moves one in (``IN_MOVED_TO``). Watch mode uses these events only
to look at once: a closed file still has to pass the same completeness test (its declared pages in), so a
writer that closes and reopens a file is no risk, and every file is also found by polling. Events exist only
for writes made on this machine: on network shares (NFS, SMB), where microscopes often write, the kernel sees
no remote writes and polling alone finds the files. Linux only, through libc (no dependency); elsewhere, or
when the kernel refuses a watch, :func:`open_closes` returns None and polling does everything.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import sys

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


class ClosedFiles:
    """An inotify instance watching folders for files closed after writing or moved in."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.folders: dict[int, str] = {}
        self._tried: set[str] = set()  # watched or refused: each folder is asked for once

    def watch(self, folder: str) -> bool:
        """Watch ``folder``, asking the kernel once; False when it refused (gone, no permission, watch limit
        reached): polling alone finds that folder's files."""
        folder = os.path.abspath(folder)
        if folder not in self._tried:
            self._tried.add(folder)
            descriptor = self._libc.inotify_add_watch(self.fd, os.fsencode(folder), IN_CLOSE_WRITE | IN_MOVED_TO)
            if descriptor >= 0:
                self.folders[descriptor] = folder
        return folder in self.folders.values()

    def wait(self, timeout_s: float) -> list[str]:
        """The absolute paths closed or moved in since the last call, waiting up to ``timeout_s`` for the first."""
        ready, _, _ = select.select([self.fd], [], [], timeout_s)
        if not ready:
            return []
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        paths, offset = [], 0
        while offset + _EVENT.size <= len(data):
            descriptor, _mask, _cookie, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if name and descriptor in self.folders:
                paths.append(os.path.join(self.folders[descriptor], os.fsdecode(name)))
        return paths

    def close(self) -> None:
        os.close(self.fd)


def open_closes() -> ClosedFiles | None:
    """A :class:`ClosedFiles`, or None where the kernel offers no inotify."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ClosedFiles()
    except (OSError, AttributeError):
        return None

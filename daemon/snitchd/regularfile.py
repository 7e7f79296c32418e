"""Opening a file whose path someone else controls, as root, without opening anything else.

snitchd reads executables to hash them, at paths a user can name (`Explain`'s `exe`) or swap
(the path the BPF recorder saw, after its process exited). A plain open() of such a path could
open a device: a terminal becomes snitchd's controlling terminal (snitchd is a session leader
under systemd, and open() without O_NOCTTY takes one), and then the user's Ctrl-C on it stops
snitchd and takes the firewall down; a watchdog or tape device acts on open; a FIFO blocks. So
the path is first pinned with O_PATH, which opens nothing, checked to be a regular file, and
only then opened for reading through /proc/self/fd: the same inode, whatever the path names by
then.
"""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["open_regular"]


def open_regular(path: str) -> int:
    """A read-only fd of the regular file `path` names (symlinks followed); raises OSError
    for anything else (EINVAL for a device, FIFO, socket or directory)."""
    pinned = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(pinned).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        return os.open(f"/proc/self/fd/{pinned}", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    finally:
        os.close(pinned)

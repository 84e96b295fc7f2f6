"""Access log in nginx's combined format, buffered in memory and flushed once a second."""

from __future__ import annotations

import os
import sys
import time


class AccessLog:
    """Append-only combined-format log to a file or stdout ('-'); writes are batched."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lines: list[bytes] = []
        self.fd = -1
        self.reopen()

    def reopen(self) -> None:
        """(Re)open the log file, e.g. after logrotate moved it."""
        old = self.fd
        if self.path == "-":
            self.fd = sys.stdout.fileno()
            return
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if old > 2:
            os.close(old)

    def write(self, peer: object, method: bytes, target: bytes, proto: bytes, status: int, sent: int,
              referer: bytes, ua: bytes) -> None:
        """Queue one line; it reaches the file at the next flush()."""
        host = peer[0] if isinstance(peer, tuple) else "-"
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
        line = b'%s - - [%s] "%s %s %s" %d %d "%s" "%s"\n' % (
            host.encode("ascii", "replace"), stamp.encode("ascii"), method, _clean(target), proto, status, sent,
            _clean(referer), _clean(ua))
        self.lines.append(line)
        if len(self.lines) >= 512:
            self.flush()

    def flush(self) -> None:
        """Write every queued line in one system call."""
        if not self.lines:
            return
        data = b"".join(self.lines)
        self.lines.clear()
        try:
            while data:
                n = os.write(self.fd, data)
                data = data[n:]
        except OSError:
            pass  # a full disk must not take the server down; the lines are lost

    def close(self) -> None:
        """Flush and close the file."""
        self.flush()
        if self.fd > 2:
            os.close(self.fd)
        self.fd = -1


def _clean(value: bytes) -> bytes:
    """Escape quotes, backslashes and control bytes so one request is one line."""
    if all(0x20 <= b < 0x7F and b not in (0x22, 0x5C) for b in value):
        return value
    return b"".join(bytes([b]) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else b"\\x%02X" % b for b in value)

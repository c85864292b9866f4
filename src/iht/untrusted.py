"""Reading a file that may be hostile: a regular file, within a size, never blocking.

One reader for every layer: :func:`iht.export.load_sparse` wraps its refusal in an
``InvalidValueError``, the results store (:func:`iht.storage.files.read_bounded`) in a
``StoreError``. A FIFO is opened without waiting for a writer and refused, a device such as
/dev/zero is refused before any read, a file larger than ``limit`` is refused unread, and
one that grows while it is read is refused too.
"""

from __future__ import annotations

import os
import stat

__all__ = ["Refused", "read_regular_file"]


class Refused(Exception):
    """Why a file was not read; the message completes "<path> ..." (e.g. "is a link")."""


def read_regular_file(path: str | os.PathLike[str], limit: int, *, follow_links: bool) -> bytes:
    """The bytes of ``path``: a regular file of at most ``limit`` bytes.

    With ``follow_links=False`` a link is refused too (a results directory reads only its own
    files); with True a link to a regular file is read (a path a user names).

    Raises:
        FileNotFoundError: there is no such file (the caller says what it means).
        Refused: a link (without ``follow_links``), not a regular file, too large, unreadable.
    """
    try:
        info = os.stat(path) if follow_links else os.lstat(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise Refused(f"cannot be read: {exc.strerror or exc}") from None
    if stat.S_ISLNK(info.st_mode):
        raise Refused("is a link; iht reads only its own files")
    if not stat.S_ISREG(info.st_mode):
        raise Refused("is not a regular file")
    if info.st_size > limit:
        raise Refused(f"has {info.st_size} bytes; at most {limit} expected")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    if not follow_links:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        with os.fdopen(os.open(path, flags), "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):  # swapped since the stat
                raise Refused("is not a regular file")
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise Refused(f"cannot be read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise Refused(f"grew beyond {limit} bytes while being read")
    return data

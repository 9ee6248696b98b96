"""Writing state files so that a crash leaves the old file or the new one, never a mix or nothing."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], content: str | bytes, mode: int = 0o644) -> None:
    """Replace `path` with `content`: a temporary file beside it, fsync, rename, fsync the directory.

    The directory fsync is what makes the rename itself durable: without it a crash can leave the
    directory entry pointing at the old file, or at nothing for a new one. `mode` is the new file's
    permission bits (the temporary file is created 0600 and changed before the rename).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode() if isinstance(content, str) else content
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)

"""Files written all at once: what a reader (or a crash) sees is the old content or the new."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, body: bytes, *, if_absent: bool = False) -> bool:
    """Write `body` to `path`: a temporary file beside it, fsync, then a rename.

    With `if_absent`, a hard link instead of the rename, which refuses an existing name:
    False, and nothing changed, if `path` exists. Raises OSError as the filesystem does.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        if not if_absent:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)

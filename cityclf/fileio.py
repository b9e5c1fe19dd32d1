"""Writing files so that a reader (or a crash) never sees half of one."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write to a unique temporary file beside `path`, then rename it into place.

    The rename is atomic, so a kill leaves either the old file or the new one; the temporary
    name is unique, so two processes writing the same file never clobber each other's half.
    """
    path = Path(path)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                     delete=False) as handle:
        try:
            handle.write(data)
        except BaseException:
            handle.close()
            os.unlink(handle.name)
            raise
    os.chmod(handle.name, 0o644)  # like any other file the user writes, not tempfile's 0600
    os.replace(handle.name, path)


def write_json_atomic(path: str | Path, data: dict) -> None:
    """JSON (strict: no NaN) written atomically, as `write_bytes_atomic`."""
    text = json.dumps(data, indent=2, default=str, allow_nan=False)
    write_bytes_atomic(path, text.encode())

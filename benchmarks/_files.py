"""The local-disk baseline: Strands' own ``FileSessionManager``, with its file reads and writes counted."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from strands.session.file_session_manager import FileSessionManager


@dataclass
class FileIO:
    """File reads and writes done by a :class:`CountingFileSessionManager`, and their sizes."""

    reads: int = 0
    writes: int = 0
    read_bytes: int = 0
    written_bytes: int = 0

    def take(self) -> FileIO:
        """Return the counts so far and reset them."""
        taken = FileIO(self.reads, self.writes, self.read_bytes, self.written_bytes)
        self.reads = self.writes = self.read_bytes = self.written_bytes = 0
        return taken


class CountingFileSessionManager(FileSessionManager):
    """``FileSessionManager`` unchanged, except that every JSON file read or written is counted in ``io``."""

    def __init__(self, session_id: str, storage_dir: str, io: FileIO, **kwargs: Any) -> None:
        self.io = io
        super().__init__(session_id=session_id, storage_dir=storage_dir, **kwargs)

    def _read_file(self, path: str) -> dict[str, Any]:
        self.io.reads += 1
        self.io.read_bytes += os.path.getsize(path)
        return super()._read_file(path)

    def _write_file(self, path: str, data: dict[str, Any]) -> None:
        super()._write_file(path, data)
        self.io.writes += 1
        self.io.written_bytes += os.path.getsize(path)

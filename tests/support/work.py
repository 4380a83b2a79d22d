"""Chunk work functions for tests: importable, picklable, and controllable across processes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from custody.chunks import Chunk, ChunkOutcome


@dataclass(frozen=True)
class ScriptedWork:
    """Succeeds, fails with a data error, or fails transiently once, chunk by chunk.

    Attempts are counted in files under ``marker_dir`` so they survive process boundaries.
    """

    marker_dir: str
    data_error_chunks: frozenset[int] = frozenset()
    transient_once_chunks: frozenset[int] = frozenset()

    def attempts(self, chunk_no: int) -> int:
        return len(list(Path(self.marker_dir).glob(f"chunk-{chunk_no}-*")))

    def __call__(self, chunk: Chunk) -> ChunkOutcome:
        n = self.attempts(chunk.chunk_no)
        Path(self.marker_dir, f"chunk-{chunk.chunk_no}-{n}").touch()
        if chunk.chunk_no in self.data_error_chunks:
            raise ValueError("value out of range for patient MRN0099999 (Jane Canary)")
        if chunk.chunk_no in self.transient_once_chunks and n == 0:
            raise ConnectionResetError("server closed the connection unexpectedly")
        rows = (chunk.upper or 0) - (chunk.lower or 0)
        return ChunkOutcome(source_count=rows, source_hash="h", target_count=rows, target_hash="h")

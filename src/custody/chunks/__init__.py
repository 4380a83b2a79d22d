"""The chunk engine: keyset plans, a durable ledger, verified and resumable chunk runs."""

from custody.chunks.ledger import Ledger
from custody.chunks.models import (
    BatchResult,
    Chunk,
    ChunkFailure,
    ChunkOutcome,
    ChunkStatus,
    JobPlan,
    JobSpec,
)
from custody.chunks.planner import plan_key_ranges
from custody.chunks.recipe import ReplayRefusedError, WorkRecipe, load_work, recipe_for
from custody.chunks.retry import is_transient
from custody.chunks.runner import ChunkFailedError, ChunkWork, run_chunk

__all__ = [
    "BatchResult",
    "Chunk",
    "ChunkFailedError",
    "ChunkFailure",
    "ChunkOutcome",
    "ChunkStatus",
    "ChunkWork",
    "JobPlan",
    "JobSpec",
    "Ledger",
    "ReplayRefusedError",
    "WorkRecipe",
    "is_transient",
    "load_work",
    "plan_key_ranges",
    "recipe_for",
    "run_chunk",
]

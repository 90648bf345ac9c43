"""What the leaderboard shows: one cell per method setting on a task and model, with where its rows came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cachebench.results import PartialRun
from cachebench.semantic.report import CategoryScore, SemanticCell

Curve = tuple[list[tuple[float, float]], float]  # (error rate, hit rate) points of a sweep, area under its frontier


@dataclass(frozen=True)
class Provenance:
    """Enough to trace a cell's numbers back to runs: who ran what, where, when, from which files."""

    rows: int
    model_weights: tuple[str, ...]
    hardware: tuple[str, ...]
    versions: tuple[str, ...]
    git_shas: tuple[str, ...]
    first_run: datetime | None
    last_run: datetime | None
    run_ids: tuple[str, ...]
    sources: tuple[Path, ...]
    partial_runs: tuple[str, ...] = ()  # runs that did not finish: their files are checkpoints
    settings: tuple[str, ...] = ()  # the full method_params behind the cell (infrastructure settings included)


@dataclass(frozen=True)
class KVCategory:
    """One category of a KV cell (question type, needle depth, sub-task): score with its interval, exact match."""

    category: str
    score: float
    low: float
    high: float
    n: int
    em: float  # mean exact match where the task defines it (cachebench.derived), else NaN


@dataclass
class KVCell:
    """A KV (or perf) cell (cachebench.cells.IDENTITY); ratios are to `full` on the items both ran."""

    family: str
    task: str
    method: str
    method_params: str  # the cell's identity params (cell_params): infrastructure settings are in provenance
    model: str
    mode: str
    compression: str
    score: float
    low: float
    high: float
    n: int  # rows scored
    errors: int  # rows without a score
    kv_bytes: float  # mean over scored rows
    request_ttft_ms: float  # mean over scored rows: the whole request, context prefill included (derived.request_ttft)
    kv_ratio: float  # mean kv_bytes over the `full` cell's, on matched (episode_id, turn) items only
    ttft_ratio: float  # the same for request TTFT
    matched: int  # items matched with the `full` cell (0: no baseline, ratios NaN)
    reused: bool  # a reuse method: some request loaded KV from a store
    provenance: Provenance
    pareto: bool = False  # on the quality-versus-KV-memory front of its group
    track: str = "kv"  # or "perf": timings without a score
    model_weights: str = ""
    dtype: str = ""
    context_length: int | None = None
    question_ttft_ms: float = float("nan")  # the question's own TTFT, context prefill excluded
    decode_ms: float = float("nan")  # mean decode ms per token
    categories: list[KVCategory] = field(default_factory=list)

    @property
    def random_weights(self) -> bool:
        """Time and memory only: the score of random weights means nothing."""
        return self.model_weights == "random"

    @property
    def group(self) -> tuple[str, str, str, str]:
        """The cells compared with each other (and with one `full` baseline) on one page section."""
        return self.task, self.model + _variant(self.dtype, self.context_length), self.mode, self.compression


def _variant(dtype: str, context_length: int | None) -> str:
    """What else separates cells of one model: shown beside the model so two dtypes never read as one group."""
    parts = [part for part in (dtype, f"{context_length:,} tokens" if context_length else "") if part]
    return f" ({', '.join(parts)})" if parts else ""


@dataclass
class SemanticEntry:
    """A semantic-cache setting, scored by cachebench.semantic.report's own types (overall score last)."""

    family: str
    cell: SemanticCell
    provenance: Provenance

    @property
    def overall(self) -> CategoryScore:
        return self.cell.categories[-1]

    @property
    def group(self) -> tuple[str, str, str]:
        return self.cell.key["task"], self.cell.key["model"], self.cell.key["mode"]


@dataclass
class Leaderboard:
    rows: int
    sources: list[Path]
    kv: list[KVCell] = field(default_factory=list)
    semantic: list[SemanticEntry] = field(default_factory=list)
    curves: dict[tuple[str, str, str], dict[str, Curve]] = field(default_factory=dict)  # per semantic group
    partial: list[PartialRun] = field(default_factory=list)  # runs that did not finish

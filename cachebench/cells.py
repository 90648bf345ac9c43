"""One definition of a result cell and of an item, for every reader: `show`, `gate`, the leaderboard, the
semantic report.

A cell is what a comparison is about: the track, the task, the method with its quality-relevant parameters
(`cell_params`: storage and infrastructure settings such as the store, server URLs, paths and capacities are
recorded in `method_params` and in provenance but never split a cell), the model, its weights and dtype, the
mode, the compression setting and the target context length.

An item is one scored unit of a cell: (seed, episode_id, turn) — a KV turn, a semantic request, a perf
measurement. Each item counts once: where several runs hold the same item (a rerun, the same file copied twice,
a resumed sweep), the row of the newest run wins, so a folder holding a run twice reads exactly like one copy.
Intervals resample items clustered by (seed, episode_id): the turns of one episode are correlated, and the same
episode of two runs is one episode, not two.
"""

from __future__ import annotations

IDENTITY = ("track", "task", "method", "cell_params", "model", "model_weights", "dtype", "mode", "compression",
            "context_length")
ITEM = ("seed", "episode_id", "turn")


def deduplicated(source: str) -> str:
    """SQL selecting the rows of relation `source` with each item once: for every (cell, item) the row of the run
    created last (ties: the larger run_id, then the first file), whatever order the files were named in."""
    partition = ", ".join((*IDENTITY, *ITEM))
    return f"""
        SELECT * EXCLUDE (run_newest, item_rank) FROM (
            SELECT *, row_number() OVER (PARTITION BY {partition}
                                         ORDER BY run_newest DESC NULLS LAST, run_id DESC NULLS LAST,
                                                  source) AS item_rank
            FROM (SELECT *, max(created_at) OVER (PARTITION BY run_id) AS run_newest FROM {source}))
        WHERE item_rank = 1"""


def item_hash() -> str:
    """SQL of a 64-bit hash of a row's cell and item. Equal items hash equal (nulls included); two different items
    may collide, which only sends them through `deduplicated`, where the real columns decide."""
    return f"hash({', '.join((*IDENTITY, *ITEM))})"


def cluster_sql() -> str:
    """SQL of an item's bootstrap cluster, `seed/episode_id`, over a relation with those columns."""
    return "coalesce(CAST(seed AS VARCHAR), 'None') || '/' || coalesce(episode_id, 'None')"

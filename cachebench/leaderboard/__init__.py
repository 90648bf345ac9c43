"""The leaderboard: result files of both tracks aggregated into cells and written as one self-contained HTML page.

aggregate (load, queries, kv, semantic, bootstrap) -> cells -> site (views, overview, figures, plots, templates).
Needs the `report` extra (jinja2, duckdb).
"""

from cachebench.leaderboard.aggregate import aggregate
from cachebench.leaderboard.site import build_site

__all__ = ["aggregate", "build_site"]

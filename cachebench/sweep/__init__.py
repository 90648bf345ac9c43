"""`cachebench sweep`: grids of cells (grid), checked before any work (check), run shard by shard (work) by an
executor in this process (run) or on a Ray cluster (ray_executor), with state read back from the files (state)."""

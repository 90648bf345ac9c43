"""Task definitions as data: one YAML per task under a folder per family, plus builders for offline data."""

"""cachebench: benchmark and evaluation suite for LLM caching methods."""

__version__ = "0.1.0"

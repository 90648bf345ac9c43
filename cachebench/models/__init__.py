"""Model resolution: the embedded SmolLM2, any hub id or local folder, and random-weight shapes."""

"""Builders that generate or load a task's episodes; a task's YAML names its builder."""

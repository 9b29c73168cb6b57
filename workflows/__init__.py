"""Workflows: deterministic orchestration of runtime jobs; no I/O."""

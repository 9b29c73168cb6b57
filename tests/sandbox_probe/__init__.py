"""Workflows that report on the sandbox they run in (tests/test_sandbox.py)."""

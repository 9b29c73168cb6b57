"""Workflows that report on the sandbox they run in (tests/unit/rtjobs/test_sandbox.py)."""

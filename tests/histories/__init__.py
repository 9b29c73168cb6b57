"""Histories of real runs, replayed by tests/test_replay.py; `python -m tests.histories.record` remakes them."""

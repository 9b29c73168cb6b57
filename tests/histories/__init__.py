"""Histories of real runs, replayed by tests/replay/test_replay.py; `python -m tests.histories.record`
remakes them.
"""

"""Replay safety: recorded histories of every released workflow version replay on today's code."""

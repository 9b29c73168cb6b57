"""Tests of activities/: each activity against the real part it talks to."""

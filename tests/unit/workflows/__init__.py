"""Tests of workflows/: the workflows on the real dev server, with stand-in activities."""

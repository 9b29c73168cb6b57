"""Tests of deploy/: the Docker socket proxy."""

"""Tests of the Docker activities (activities/docker.py and its parts) against a real engine."""

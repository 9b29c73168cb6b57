"""Fault suite: real worker processes, Temporal, redis-server and Docker, each broken on purpose."""

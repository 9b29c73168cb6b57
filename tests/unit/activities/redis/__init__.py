"""Tests of activities/redis_topology.py and the publish over it: Redis Cluster and Sentinel, `WAIT`."""

"""Real parts for the test suite: Temporal binaries, test-owned Redis servers, a fault-injecting proxy."""

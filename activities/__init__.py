"""Activities: all I/O of runtime jobs (Redis, Docker) lives here."""

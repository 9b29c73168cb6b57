"""Operations: logs, metrics, health endpoints and tracing of the worker process."""

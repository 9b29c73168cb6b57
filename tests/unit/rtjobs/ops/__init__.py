"""Tests of rtjobs/ops/: health, metrics and tracing of a real worker."""

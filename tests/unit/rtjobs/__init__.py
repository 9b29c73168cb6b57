"""Tests of rtjobs/: the sandbox, the workers' builders, the dev stack."""

"""Tests of contract/: the wire models, input rules and the reconcile survey."""

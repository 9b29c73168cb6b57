"""Tests of api/: the AsyncAPI file and the JSON Schemas."""

"""Fast tests, one folder per directory of the code they exercise."""

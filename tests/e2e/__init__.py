"""Whole jobs through a real worker; the package, the security and the safe deploys as a whole."""

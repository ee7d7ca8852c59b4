"""Certification: per-point lower and upper bounds on the robust test error (certify.py)."""

"""Metrics, scoring of results into findings, and sanity checks."""

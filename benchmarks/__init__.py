"""Reproducible performance runs that print the figures the README quotes."""

"""Maintenance scripts, run as modules from the repository's root (``python -m scripts.soak``)."""

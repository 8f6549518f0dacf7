"""Whole user-level jobs composed from the stages (train a model ...), each a progress
generator (``progress.py``) that the CLI and the widgets both run."""

"""Optimizers over a worker axis; the public names live in ``compopt``."""

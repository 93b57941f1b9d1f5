"""Compressor implementations; the public names live in ``compopt.compressors``."""

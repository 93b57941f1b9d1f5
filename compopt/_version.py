"""The version of compopt (read by pyproject.toml and ``compopt.__version__``)."""

__version__ = "0.1.0"

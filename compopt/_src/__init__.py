"""Private implementation of compopt. Import the public API from ``compopt``."""

"""Test configuration: 8 host CPU devices, forced before JAX is imported."""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after XLA_FLAGS on purpose)

assert jax.device_count() >= 8, (
    "tests need 8 host devices; XLA_FLAGS was set too late (JAX imported before "
    "conftest.py?)")

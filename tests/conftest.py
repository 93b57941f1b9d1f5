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


import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
  """Drops JAX's compiled executables after each test module.

  Every executable XLA's CPU backend keeps holds a few memory mappings (code,
  constants, data), and op-by-op (eager) dispatch compiles one per primitive
  and shape. Over the whole suite that approached the kernel's limit of
  65,530 mappings per process (``vm.max_map_count``), where the next
  compilation segfaults inside XLA. Clearing the caches between modules keeps
  the count in the low thousands; within a module, compiled steps are reused.
  """
  yield
  jax.clear_caches()
  gc.collect()

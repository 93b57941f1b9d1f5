"""Test configuration: 8 host CPU devices, set before JAX starts a backend."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import chex  # noqa: E402
import jax  # noqa: E402

chex.set_n_cpu_devices(8)  # raises if a backend was started already
assert jax.device_count() >= 8, "tests need 8 host devices"


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

"""The PyTorch peers of benchmarks/perf/peers.py compute what they claim."""

import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import compopt  # noqa: E402

from benchmarks.perf import peers  # noqa: E402


def test_check_peers():
  peers.check_peers()


@pytest.mark.parametrize("ratio", [0.01, 0.05])
def test_torch_topk_keeps_the_same_set_as_compopt(ratio):
  x = np.random.default_rng(1).standard_normal(2000).astype(np.float32)
  values, idx = peers.topk(torch.from_numpy(x), ratio)
  payload = compopt.compressors.top_k(ratio=ratio).encode(jax.random.key(0), jnp.asarray(x))
  ours = np.asarray(payload["indices"]).astype(np.int64)
  assert sorted(idx.tolist()) == sorted(ours.tolist())
  np.testing.assert_array_equal(np.sort(values.numpy()), np.sort(np.asarray(payload["values"])))

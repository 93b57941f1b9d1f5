"""One process of the sockets benchmark (started by ``examples.launch``).

``python -m benchmarks.sockets.worker --spec SPEC.json --out DIR``

Every process holds one CPU device, one worker of the data-parallel run; the
P processes exchange over gloo (TCP on loopback). For each (method, scheme)
of the spec, and for each bandwidth cap (process 0 sets it on loopback with
``tc``; the processes run in a network namespace of their own):

* the step: the median of ``steps`` timed steps (``block_until_ready``);
* the collectives alone: the collectives the scheme runs in a step, on
  buffers of the step's sizes, timed the same way;
* the bytes: process 0 reads the transmit counter of ``lo`` in
  ``/proc/net/dev`` before and after the timed steps, and every process reads
  the ``compopt.comm_bits`` counters of its own worker (gathered to process
  0), so the two can be compared;

and, once per variant on the uncapped link, the local parts of a step:
compute (forward and backward), encode (the compressor on the gradient tree)
and decode (the n payloads decoded and averaged). Process 0 writes one JSON
line per (variant, cap) to ``DIR/steps.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

from examples import distributed


def set_cap(cap: dict | None):
  """Shapes loopback of this network namespace: a token bucket at ``rate``,
  optionally behind a netem delay; None removes every qdisc."""
  subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True,
                 check=False)
  if not cap:
    return
  rate = cap["rate_bits"]
  burst = max(64 * 1024, int(rate / 8 / 100))  # 10 ms of the rate
  tbf = ["tbf", "rate", f"{int(rate)}bit", "burst", str(burst), "latency", "100ms"]
  if cap.get("delay_ms"):
    subprocess.run(["tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "netem",
                    "delay", f"{cap['delay_ms']}ms"], check=True)
    subprocess.run(["tc", "qdisc", "add", "dev", "lo", "parent", "1:", "handle", "2:"] + tbf,
                   check=True)
  else:
    subprocess.run(["tc", "qdisc", "add", "dev", "lo", "root"] + tbf, check=True)


def lo_tx_bytes() -> int:
  """Bytes sent through loopback so far (this network namespace's count)."""
  with open("/proc/net/dev") as f:
    for line in f:
      name, _, rest = line.partition(":")
      if name.strip() == "lo":
        return int(rest.split()[8])
  raise RuntimeError("no lo interface in /proc/net/dev")


def main():
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.sockets.worker",
      description="One process of the sockets benchmark (started by python -m benchmarks.sockets).")
  parser.add_argument("--spec", required=True, help="the run's spec.json, written by the launcher")
  parser.add_argument("--out", required=True, help="directory for steps.jsonl and the curves")
  args = parser.parse_args()
  with open(args.spec) as f:
    spec = json.load(f)
  cluster = distributed.initialize()

  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from jax import lax
  from jax.experimental import multihost_utils
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  import compopt
  from benchmarks.sockets import runs
  from compopt._src import wire

  AXIS = runs.AXIS
  rank, n = cluster.process_id, jax.device_count()
  mesh = jax.make_mesh((n,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
  rows = NamedSharding(mesh, P(AXIS))
  sizes = runs.SIZES[spec["size"]]
  data = runs.load_data(spec["test_size"])
  batch = spec["batch"]
  params0 = runs.init_mlp(spec["seed"], sizes)
  dense_bytes = 4 * runs.num_params(sizes)

  def local_rows(x):
    """A global (n, ...) array from this process's row (its worker)."""
    x = np.asarray(x)[None]
    return jax.make_array_from_process_local_data(rows, x, (n,) + x.shape[1:])

  def stacked(tree):
    return jax.tree.map(lambda a: local_rows(np.asarray(a)), tree)

  def batch_of(step):
    idx = runs.batch_indices(len(data.train_y), n, rank, step, batch, spec["seed"])
    return local_rows(data.train_x[idx]), local_rows(data.train_y[idx])

  def barrier(name):
    multihost_utils.sync_global_devices(name)

  def timed(fn, *args, reps, warm=True):
    if warm:
      jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times.append(time.perf_counter() - t0)
    return float(np.median(times))

  def on_workers(fn):
    return compopt.parallel.shard_map(fn, mesh, AXIS, check_vma=False)

  # auto measures the link once at start: here once per cap, as each cap is
  # another link.
  networks = {}
  for cap in spec["caps"]:
    barrier(f"net-{cap['name']}")
    if rank == 0:
      set_cap(cap["tc"])
    barrier(f"net-capped-{cap['name']}")
    networks[cap["name"]] = (compopt.exchange.measure_network(mesh, AXIS, cache=False)
                             if spec.get("measure_auto") else None)
  barrier("net-done")
  if rank == 0:
    set_cap(None)
  barrier("net-reset")

  grad_fn = on_workers(lambda p, x, y: jax.grad(runs.loss_fn)(p, x, y))
  params = stacked(params0)
  x, y = batch_of(0)
  compute_s = timed(grad_fn, params, x, y, reps=spec["reps"])
  grads_like = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params0)
  leaves_like = jax.tree.leaves(grads_like)

  out_path = os.path.join(args.out, "steps.jsonl")
  def make_step(tx, dense):
    def step(p, s, x, y):
      loss, g = jax.value_and_grad(runs.loss_fn)(p, x, y)
      if dense:
        g = lax.pmean(g, AXIS)
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s, loss
    return jax.jit(compopt.parallel.shard_map(step, mesh, AXIS, jit=False, check_vma=False),
                   donate_argnums=(0, 1))

  for method, scheme_name in spec["variants"]:
    m = runs.METHODS[method]
    first_net = networks[spec["caps"][0]["name"]]
    tx = runs.make_tx(method, scheme_name, first_net)
    dense = m.make is None
    step_fn = make_step(tx, dense)
    params = stacked(params0)
    state = stacked(tx.init(params0))

    # The local parts, and the collectives this scheme runs.
    comp = m.compressor
    chosen = scheme_name
    auto_choice = {}
    parts = {"compute_s": compute_s, "encode_s": 0.0, "decode_s": 0.0}
    payload_bytes = dense_bytes
    key = jax.random.PRNGKey(0)
    g_stacked = grad_fn(params, x, y)
    if comp is not None and not dense and method != "psgd":
      encode = on_workers(lambda g: wire.pack(comp.encode(key, jax.tree.leaves(g)))[0])
      buf = encode(g_stacked)
      payload_bytes = int(buf.shape[1])
      parts["encode_s"] = timed(encode, g_stacked, reps=spec["reps"])
      spec_ = wire.pack(comp.encode(key, [jnp.zeros(l.shape, l.dtype) for l in leaves_like]))[1]

      def decode_all(b):  # as the all-gather's aggregation: n payloads summed
        payloads = wire.unpack(jnp.broadcast_to(b, (n,) + b.shape), spec_)
        return comp.decode_sum(payloads, leaves_like, jnp.full((n,), 1.0 / n), key=key)

      parts["decode_s"] = timed(on_workers(decode_all), buf, reps=spec["reps"])
      if scheme_name == "auto":
        auto_choice = {c: runs.make_scheme("auto", net).choose(payload_bytes, dense_bytes, n).name
                       for c, net in networks.items()}

    def collective_of(chosen):
      if dense or method == "psgd" or chosen == "allreduce":
        return on_workers(lambda g: lax.psum(g, AXIS)), (g_stacked,)
      if chosen.startswith("two_phase"):
        row = -(-payload_bytes // n)
        server = row if chosen == "two_phase_sign" else 4 * -(-dense_bytes // 4 // n)

        def two(b, s):
          return lax.all_to_all(b, AXIS, 0, 0), lax.all_gather(s, AXIS)
        return on_workers(two), (local_rows(np.zeros((n, row), np.uint8)),
                                 local_rows(np.zeros((server,), np.uint8)))
      return (on_workers(lambda b: lax.all_gather(b, AXIS)),
              (local_rows(np.zeros((payload_bytes,), np.uint8)),))

    collectives = {}
    # Compile and warm up uncapped.
    params, state, _ = step_fn(params, state, x, y)
    jax.block_until_ready(params)
    t = 1
    step_choice = auto_choice.get(spec["caps"][0]["name"])
    for cap in spec["caps"]:
      barrier(f"cap-{method}-{scheme_name}-{cap['name']}")
      if rank == 0:
        set_cap(cap["tc"])
      barrier(f"capped-{method}-{scheme_name}-{cap['name']}")
      steps = cap["steps"]
      if scheme_name == "auto":
        chosen = auto_choice[cap["name"]]
        if chosen != step_choice:  # auto over this cap's measured link
          step_fn = make_step(runs.make_tx(method, "auto", networks[cap["name"]]), dense)
          step_choice = chosen
      first = chosen not in collectives
      if first:
        collectives[chosen] = collective_of(chosen)
      collective, coll_args = collectives[chosen]
      coll_s = timed(collective, *coll_args, reps=max(1, steps // 2), warm=first)
      x, y = batch_of(t)
      params, state, _ = step_fn(params, state, x, y)  # warm the link
      jax.block_until_ready(params)
      t += 1
      bits0 = None if dense else compopt.comm_bits(state)
      barrier(f"bytes0-{method}-{scheme_name}-{cap['name']}")
      lo0 = lo_tx_bytes()
      times = []
      for _ in range(steps):
        x, y = batch_of(t)
        t0 = time.perf_counter()
        params, state, loss = step_fn(params, state, x, y)
        jax.block_until_ready((params, state))
        times.append(time.perf_counter() - t0)
        t += 1
      # every process done: the bytes of others' last sends are in
      barrier(f"bytes1-{method}-{scheme_name}-{cap['name']}")
      lo1 = lo_tx_bytes()
      if dense:
        up = 2 * (n - 1) * dense_bytes // n * steps * n  # a ring all-reduce, all workers
        payload = dense_bytes * steps * n
      else:
        bits1 = compopt.comm_bits(state)
        # this process's workers' bits in the window, as [hi, lo] uint32
        # pairs (JAX would narrow an int64 to int32), gathered to everyone
        mine = [sum(b1) - sum(b0) for b0, b1 in zip(bits0, bits1)]
        pairs = np.array([[v >> 32, v & 0xFFFFFFFF] for v in mine], np.uint32)[None]
        every = np.asarray(multihost_utils.process_allgather(pairs)).astype(np.uint64)
        total = ((every[..., 0] << np.uint64(32)) | every[..., 1]).reshape(-1, 3).sum(0)
        up, payload = int(total[0]) // 8, int(total[2]) // 8
      barrier(f"done-{method}-{scheme_name}-{cap['name']}")
      if rank == 0:
        step_s = float(np.median(times))
        record = dict(method=method, scheme=scheme_name, chosen=chosen, cap=cap["name"],
                      step_s=step_s, collective_s=coll_s, **parts,
                      update_s=step_s - coll_s - sum(parts.values()),
                      steps=steps, lo_bytes=(lo1 - lo0) / steps,
                      comm_bytes=up / steps, payload_bytes=payload / steps / n,
                      loss=float(np.asarray(loss.addressable_data(0)).reshape(-1)[0]),
                      network=None if networks[cap["name"]] is None else [
                          networks[cap["name"]].bandwidth_gbps,
                          networks[cap["name"]].latency_us])
        with open(out_path, "a") as f:
          f.write(json.dumps(record) + "\n")
        print(f"{method:14s} {scheme_name:14s} {cap['name']:9s} step {step_s:.3f}s "
              f"coll {coll_s:.3f}s lo {(lo1 - lo0) / steps / 1e6:7.2f} MB "
              f"ratio {(lo1 - lo0) / max(up, 1):.3f}", flush=True)
    barrier(f"end-{method}-{scheme_name}")
    if rank == 0:
      set_cap(None)
  barrier("finished")


if __name__ == "__main__":
  main()

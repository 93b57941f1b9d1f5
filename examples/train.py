"""Data-parallel training with a compopt method: ``train_and_evaluate``.

The workers are the slots of a named axis, ``"data"``. Every array of the
training state (params, BatchNorm statistics, each worker's optimizer state
with its error buffers, shifts, keys and bit counters, each worker's dropout
key) carries a leading worker axis. One worker's step is written once and
mapped over that axis:

* ``shard_map``: one worker per device (``jax.shard_map`` over a
  ``jax.make_mesh((n,), ("data",))``), on GPUs, TPUs or CPU devices;
* ``vmap``: n simulated workers on one device (``jax.vmap(axis_name="data")``).

``config.mode="auto"`` takes ``shard_map`` when there are at least n local
devices. Each worker reads its own shard of the training set (``iid`` or split
by ``label``); the batch of step t is a pure function of (seed, worker, t),
so the data position is the step count.

Several processes (``jax.distributed``, see ``examples/distributed.py`` and
``examples/launch.py``): the mode is ``shard_map`` over the global mesh of
``jax.devices()``, one worker per device, so ``config.num_workers`` must equal
``jax.device_count()``. Every process runs this same function; each keeps only
its own workers' data shards and supplies their rows of the global arrays,
reads the metrics that span all workers through collectives (so all processes
log the same numbers), and process 0 alone writes ``metrics.jsonl`` and
``config.json``; orbax writes each process's part of the checkpoint.

Outputs in ``workdir``: ``metrics.jsonl`` (one JSON object per log step),
``config.json``, orbax checkpoints in ``checkpoints/``. A run finds the latest
checkpoint in its workdir and continues from it exactly as if it had not
stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import compopt
from compopt._src import counters
from examples import input_pipeline
from examples import methods
from examples import models

AXIS = "data"


@dataclasses.dataclass
class RunResult:
  """What ``train_and_evaluate`` returns."""
  state: Any          # the stacked training state (worker axis first)
  history: list       # the records written to metrics.jsonl
  summary: dict       # final train loss, test accuracy, MB sent, wall time


# --------------------------------------------------------------------- helpers


def resolve_mode(config) -> str:
  """``config.mode`` checked against the devices; ``auto`` resolved.

  One process: ``shard_map`` needs ``config.num_workers`` local devices.
  Several processes: always ``shard_map``, one worker per device of the
  global mesh, so ``config.num_workers == jax.device_count()``.
  """
  mode, n = config.get("mode", "auto"), config.num_workers
  if mode not in ("auto", "vmap", "shard_map"):
    raise ValueError(f"unknown config.mode {mode!r}; choose auto, vmap or shard_map")
  if jax.process_count() > 1:
    if mode == "vmap":
      raise ValueError(
          f"config.mode='vmap' simulates the workers inside one process, but this run "
          f"has {jax.process_count()} processes; use mode='shard_map' or 'auto'")
    if n != jax.device_count():
      raise ValueError(
          f"config.num_workers={n} must equal the number of devices over all "
          f"{jax.process_count()} processes, jax.device_count()={jax.device_count()} "
          f"(one worker per device); set config.num_workers={jax.device_count()} or "
          f"start {n} devices in total (processes x devices per process)")
    return "shard_map"
  if mode == "auto":
    return "shard_map" if jax.local_device_count() >= n else "vmap"
  if mode == "shard_map" and jax.local_device_count() < n:
    raise ValueError(
        f"config.mode='shard_map' needs {n} local devices (one per worker) but there are "
        f"{jax.local_device_count()}; use mode='vmap', fewer workers, or on CPU set "
        f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before starting Python")
  return mode


def make_mesh(n):
  """One worker per device on the axis "data" (Auto sharding, so that
  evaluation can read worker 0's params with plain indexing). With several
  processes, n is ``jax.device_count()``: the global mesh."""
  return jax.make_mesh((n,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def local_workers(mesh) -> list:
  """The workers (positions on the mesh axis) whose devices this process
  holds, in order; every worker in a single process."""
  me = jax.process_index()
  return [i for i, d in enumerate(mesh.devices.flat) if d.process_index == me]


def global_rows(sharding, global_shape, rows: dict):
  """A global array with a leading worker axis from this process's rows
  (``{worker: array}``): each process supplies only its own workers'."""
  def block(index):
    start, stop, _ = index[0].indices(global_shape[0])
    return np.stack([rows[w] for w in range(start, stop)])
  return jax.make_array_from_callback(tuple(global_shape), sharding, block)


def to_host(x) -> np.ndarray:
  """The whole of ``x`` as numpy on every process: a collective
  (``process_allgather``) when ``x`` spans other processes' devices."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def _normalize(images, mean, std):
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def _augment(key, x):
  """Random crop with 4-pixel zero padding and horizontal flip (CIFAR)."""
  n, h, w, _ = x.shape
  k1, k2, k3 = jax.random.split(key, 3)
  padded = jnp.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
  dy = jax.random.randint(k1, (n,), 0, 9)
  dx = jax.random.randint(k2, (n,), 0, 9)
  crop = jax.vmap(lambda im, a, b: jax.lax.dynamic_slice(im, (a, b, 0), (h, w, im.shape[-1])))
  x = crop(padded, dy, dx)
  flip = jax.random.bernoulli(k3, 0.5, (n,))
  return jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)


def create_train_state(config, model, tx, image_shape, n, sharding=None):
  """The stacked training state: every leaf has a leading axis of n workers.

  All workers start from the same params (one init key) and their own
  dropout/augmentation key (``fold_in(key, worker)``). With ``sharding``
  (e.g. ``NamedSharding(mesh, P("data"))``) the state is created in place,
  each device computing its own workers' rows (also across processes).
  """
  dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)

  @functools.partial(jax.jit, out_shardings=sharding)
  def init():  # one compiled function instead of dozens of eager ops
    init_key, data_key = jax.random.split(jax.random.PRNGKey(config.seed))
    variables = model.init({"params": init_key, "dropout": init_key}, dummy, train=False)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    return {
        "params": compopt.parallel.stack(params, n),
        "batch_stats": compopt.parallel.stack(batch_stats, n),
        "opt_state": compopt.parallel.stack(tx.init(params), n),
        "rng": jax.vmap(lambda i: jax.random.fold_in(data_key, i))(jnp.arange(n)),
    }

  return init()


def make_train_steps(config, model, tx, mean, std, mode, n):
  """A jitted function running K steps of every worker.

  * ``vmap``: ``(state, idx (n, K, B), images, labels) -> (state, losses (n, K),
    accs (n, K))``, the batches gathered on the device from the whole
    training set;
  * ``shard_map``: ``(state, x (n, K, B, H, W, C), y (n, K, B)) -> (state,
    losses, accs)``, the batches read on the host, the arguments and results
    global arrays split over the workers (see :func:`global_rows`).
  """
  augment = config.get("augment", False)

  def one_worker(wstate, xs, fetch):
    """K steps of one worker; ``fetch`` maps a scanned input to a batch."""
    def body(ws, item):
      rng, drop_key, aug_key = jax.random.split(ws["rng"], 3)
      raw, y = fetch(item)
      x = _normalize(raw, mean, std)
      if augment:
        x = _augment(aug_key, x)

      def loss_fn(params):
        variables = {"params": params}
        if ws["batch_stats"]:
          variables["batch_stats"] = ws["batch_stats"]
        logits, new_vars = model.apply(variables, x, train=True, rngs={"dropout": drop_key},
                                       mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, (logits, new_vars.get("batch_stats", {}))

      (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          ws["params"])
      updates, opt_state = tx.update(grads, ws["opt_state"], ws["params"])
      params = optax.apply_updates(ws["params"], updates)
      acc = jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))
      new = {"params": params, "batch_stats": batch_stats, "opt_state": opt_state, "rng": rng}
      return new, (loss, acc)

    wstate, (losses, accs) = jax.lax.scan(body, wstate, xs)
    return wstate, losses, accs

  if mode == "vmap":
    def gathered(wstate, idx, images, labels):
      return one_worker(wstate, idx, lambda i: (images[i], labels[i]))
    mapped = jax.vmap(gathered, in_axes=(0, 0, None, None), axis_name=AXIS)
    return jax.jit(mapped, donate_argnums=(0,))

  mesh = make_mesh(n)

  def block(wstate, x, y):  # each device holds one worker
    squeeze = lambda t: jax.tree.map(lambda a: a[0], t)
    out = one_worker(squeeze(wstate), (squeeze(x), squeeze(y)), lambda batch: batch)
    return jax.tree.map(lambda a: a[None], out)

  return jax.jit(jax.shard_map(block, mesh=mesh, in_specs=P(AXIS), out_specs=P(AXIS),
                               check_vma=False), donate_argnums=(0,))


def make_eval_fn(model, mean, std, batch_size, mesh=None):
  """Loss and accuracy of worker 0's params on a whole split (with worker-
  averaged BatchNorm running statistics).

  Everything happens inside one jitted function, so the state may span
  several processes' devices; with ``mesh`` (the workers' mesh) the batches
  enter replicated on it and the sums come out replicated, readable on every
  process.
  """
  replicated = NamedSharding(mesh, P()) if mesh is not None else None

  @functools.partial(jax.jit, out_shardings=replicated)
  def eval_batch(params, batch_stats, images, labels, mask):
    params = jax.tree.map(lambda a: a[0], params)
    batch_stats = jax.tree.map(lambda a: jnp.mean(a, 0), batch_stats)
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    logits = model.apply(variables, _normalize(images, mean, std), train=False)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return jnp.sum(loss * mask), jnp.sum(correct * mask)

  def evaluate(state, images, labels):
    params, batch_stats = state["params"], state["batch_stats"]
    total_loss = total_correct = 0.0
    n = len(labels)
    for start in range(0, n, batch_size):
      x, y = images[start:start + batch_size], labels[start:start + batch_size]
      m = len(y)
      mask = np.ones(batch_size, np.float32)
      if m < batch_size:  # pad the last batch: one compiled shape
        mask[m:] = 0
        x = np.concatenate([x, np.zeros((batch_size - m,) + x.shape[1:], x.dtype)])
        y = np.concatenate([y, np.zeros(batch_size - m, y.dtype)])
      if replicated is not None:  # the same host data on every process
        x, y, mask = (jax.make_array_from_callback(a.shape, replicated, lambda i, a=a: a[i])
                      for a in (x, y, mask))
      l, c = eval_batch(params, batch_stats, x, y, mask)
      total_loss += float(l)
      total_correct += float(c)
    return total_loss / n, total_correct / n

  return evaluate


def megabytes_sent(opt_state) -> tuple[float, float]:
  """Mean over ALL workers of the MB (1e6 bytes) each sent (uplink) and
  received.

  When the state spans several processes this is a collective: every process
  gathers every worker's counters (``process_allgather``) and reports the
  same numbers.
  """
  leaves = jax.tree.leaves(opt_state)
  if all(not isinstance(x, jax.Array) or x.is_fully_addressable for x in leaves):
    bits = compopt.comm_bits(opt_state)
    uplink, downlink = bits.uplink, bits.downlink
  else:
    found = counters.find(opt_state, counters.CommBits)
    if not found:
      raise ValueError("megabytes_sent: found no CommBits counter in the optimizer state")
    per_worker = lambda field: [sum(v) for v in zip(
        *(counters.to_int(to_host(getattr(c, field))) for c in found))]
    uplink, downlink = per_worker("uplink"), per_worker("downlink")
  up = np.mean(uplink) / 8e6
  down = np.mean(downlink) / 8e6
  return float(up), float(down)


def _checkpoint_manager(workdir):
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
      item_handlers=ocp.StandardCheckpointHandler())  # item_metadata reads shapes


def _saved_workers(mngr, step) -> int | None:
  """The number of workers of a checkpoint (the leading axis of its keys)."""
  try:
    return int(mngr.item_metadata(step)["state"]["rng"].shape[0])
  except (KeyError, TypeError, AttributeError, IndexError):
    return None


def _restore_resharded(mngr, step, config, model, tx, image_shape, saved_n, n, mesh):
  """The checkpoint of ``saved_n`` workers as a state of n workers.

  Params: worker 0's (data-parallel workers hold the same); BatchNorm
  statistics: the workers' mean; the optimizer state: ``compopt.reshard_state``
  (error buffers, shifts and counters by their rules); keys: n new streams
  from worker 0's. The step (and so the schedule) continues; the data is
  split anew among the n workers.
  """
  like = jax.eval_shape(lambda: create_train_state(config, model, tx, image_shape, saved_n))
  if mesh is None:  # one process: restore to host
    template = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), like)
  else:  # every device gets the whole old state, read back on each host
    replicated = NamedSharding(mesh, P())
    template = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                           sharding=replicated), like)
  restored = mngr.restore(step, args=ocp.args.StandardRestore(
      {"state": template, "step": 0, "data_position": 0}))
  old = jax.tree.map(lambda a: np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array)
                     else np.asarray(a), restored["state"])
  key0 = jnp.asarray(old["rng"][0])
  new = {
      "params": jax.tree.map(lambda a: np.stack([a[0]] * n), old["params"]),
      "batch_stats": jax.tree.map(lambda a: np.stack([a.mean(0)] * n).astype(a.dtype),
                                  old["batch_stats"]),
      "opt_state": compopt.reshard_state(old["opt_state"], n),
      "rng": np.asarray(jax.vmap(lambda i: jax.random.fold_in(key0, i))(jnp.arange(n))),
  }
  if mesh is not None:
    sharding = NamedSharding(mesh, P(AXIS))
    mine = local_workers(mesh)
    new = jax.tree.map(lambda a: global_rows(sharding, a.shape, {w: a[w] for w in mine}), new)
  else:
    new = jax.tree.map(jnp.asarray, new)
  return {"state": new, "step": restored["step"], "data_position": restored["data_position"]}


def _read_history(path, upto_step):
  """The records of an earlier run in ``path`` up to its checkpoint step."""
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in filter(str.strip, f):
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:  # the last line, cut short by a crash
        break  # its step is past the checkpoint: written before the save
  return [r for r in records if r["step"] <= upto_step]


# ------------------------------------------------------------------------ main


def train_and_evaluate(config, workdir: str) -> RunResult:
  """Trains ``config.model`` on ``config.dataset`` with ``config.num_workers``
  workers and the compopt method of ``config.method``; writes metrics and
  checkpoints to ``workdir`` and resumes from its latest checkpoint.

  Args:
    config: an ``ml_collections.ConfigDict`` (see ``examples/configs/default.py``).
    workdir: the directory for metrics, config and checkpoints.

  Returns:
    A :class:`RunResult`: the final stacked state, the metric records and a
    summary (final train loss, test loss/accuracy, MB sent per worker, wall
    time). With several processes every process returns the same records
    and summary; its state is the global one (not fully addressable).
  """
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  n = int(config.num_workers)
  mode = resolve_mode(config)
  chief = jax.process_index() == 0  # the process that writes files
  multiprocess = jax.process_count() > 1
  ds = input_pipeline.load_dataset(config)
  model = models.create_model(
      config.model, ds.num_classes,
      axis_name=AXIS if config.get("sync_batch_stats", False) else None)
  tx = methods.make_optimizer(config, AXIS)
  if chief:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))

  shards = input_pipeline.partition(ds.train_labels, n, config.get("partition", "iid"),
                                    config.seed)
  mesh = None
  if mode == "shard_map":
    mesh = make_mesh(n)
    worker_sharded = NamedSharding(mesh, P(AXIS))
    state = create_train_state(config, model, tx, ds.image_shape, n, sharding=worker_sharded)
    # This process keeps its own workers' shards only, and reads their batches.
    local = input_pipeline.WorkerShards(ds.train_images, ds.train_labels, shards,
                                        local_workers(mesh))
    ds = dataclasses.replace(ds, train_images=ds.train_images[:0].copy(),  # drop the rest
                             train_labels=ds.train_labels[:0].copy())
  else:
    state = create_train_state(config, model, tx, ds.image_shape, n)
    train_images, train_labels = jnp.asarray(ds.train_images), jnp.asarray(ds.train_labels)

  # Resume: params, every worker's optimizer state and key, the step (= the
  # data position) come back from the latest checkpoint.
  # A checkpoint of another number of workers is resharded (compopt.reshard_state).
  mngr = _checkpoint_manager(workdir)
  step = 0
  if mngr.latest_step() is not None:
    latest = mngr.latest_step()
    saved_n = _saved_workers(mngr, latest)
    if saved_n in (None, n):
      restored = mngr.restore(latest, args=ocp.args.StandardRestore(
          {"state": state, "step": 0, "data_position": 0}))
      state = restored["state"]
    else:
      restored = _restore_resharded(mngr, latest, config, model, tx, ds.image_shape,
                                    saved_n, n, mesh)
      state = restored["state"]
      if chief:
        print(f"resumed the checkpoint of {saved_n} workers at step "
              f"{int(restored['step'])} on {n} (compopt.reshard_state)", flush=True)
    step = int(restored["step"])
    if int(restored["data_position"]) != step:
      raise ValueError(f"checkpoint in {workdir!r}: data position "
                       f"{restored['data_position']} != step {step}")
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  history = _read_history(metrics_path, step)
  if multiprocess:  # every process has read the file before process 0 rewrites it
    multihost_utils.sync_global_devices("compopt_examples_read_history")
  if chief:
    with open(metrics_path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in history)

  train_steps = make_train_steps(config, model, tx, ds.mean, ds.std, mode, n)
  evaluate = make_eval_fn(model, ds.mean, ds.std, config.get("eval_batch_size", 1000), mesh)
  steps_per_epoch = len(shards[0]) // config.batch_size
  num_steps = int(config.num_steps)
  log_every = int(config.get("log_every", 50))
  eval_every = int(config.get("eval_every", 0)) or num_steps
  ckpt_every = int(config.get("checkpoint_every", 0)) or num_steps
  halt = int(config.get("halt_after_steps", 0) or 0)  # simulate a preemption
  label = config.get("label", "") or config.method
  elapsed0 = history[-1]["wall_time"] if history else 0.0

  bar = None
  if config.get("progress", True) and chief:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm(total=num_steps, initial=step, desc=label[:28], unit="step", leave=True,
               dynamic_ncols=True)
  losses, accs = [], []
  while step < num_steps:
    stop = min(num_steps, (step // log_every + 1) * log_every)
    if halt and step < halt:
      stop = min(stop, halt)
    if mode == "vmap":
      idx = input_pipeline.batch_indices(shards, config.batch_size, step, stop - step,
                                         config.seed)
      state, l, a = train_steps(state, idx, train_images, train_labels)
    else:
      x, y = local.batches(config.batch_size, step, stop - step, config.seed)
      state, l, a = train_steps(
          state, global_rows(worker_sharded, (n,) + x.shape[1:], dict(zip(local.workers, x))),
          global_rows(worker_sharded, (n,) + y.shape[1:], dict(zip(local.workers, y))))
    losses.append(to_host(l))  # every worker's, on every process
    accs.append(to_host(a))
    done = stop - step
    step = stop
    if bar is not None:
      bar.update(done)
    at_end = step == num_steps
    if step % log_every == 0 or at_end or step == halt:
      up, down = megabytes_sent(state["opt_state"])
      record = {
          "step": step, "epoch": step / steps_per_epoch,
          "train_loss": float(np.mean(np.concatenate(losses, 1))),
          "train_accuracy": float(np.mean(np.concatenate(accs, 1))),
          "mb_sent": up, "mb_received": down,
      }
      if not np.isfinite(record["train_loss"]):
        record["train_loss"] = float("nan")
      losses, accs = [], []
      if step % eval_every == 0 or at_end:
        record["test_loss"], record["test_accuracy"] = evaluate(
            state, ds.test_images, ds.test_labels)
      record["wall_time"] = elapsed0 + time.time() - t0
      history.append(record)
      if chief:
        with open(metrics_path, "a") as f:
          f.write(json.dumps(record) + "\n")
      if bar is not None:
        post = {"loss": f"{record['train_loss']:.3f}", "MB": f"{up:.1f}"}
        if "test_accuracy" in record:
          post["test_acc"] = f"{record['test_accuracy']:.3f}"
        bar.set_postfix(post)
    if step % ckpt_every == 0 or at_end or step == halt:
      mngr.save(step, args=ocp.args.StandardSave(
          {"state": state, "step": step, "data_position": step}))
    if halt and step >= halt:
      break
  mngr.wait_until_finished()
  mngr.close()
  if bar is not None:
    bar.close()

  last = history[-1] if history else {}
  evals = [r for r in history if "test_accuracy" in r]
  summary = {
      "label": label, "method": config.method, "compressor": config.get("compressor", ""),
      "steps": step, "epochs": step / steps_per_epoch,
      "train_loss": last.get("train_loss"),
      "test_loss": evals[-1]["test_loss"] if evals else None,
      "test_accuracy": evals[-1]["test_accuracy"] if evals else None,
      "mb_sent": last.get("mb_sent"), "mb_received": last.get("mb_received"),
      "wall_time": elapsed0 + time.time() - t0, "mode": mode, "workers": n,
      "processes": jax.process_count(),
  }
  return RunResult(state=state, history=history, summary=summary)

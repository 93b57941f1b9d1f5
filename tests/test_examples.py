"""Tests of the Flax examples: models, execution modes, resume, data loaders."""

import gzip
import json
import os
import pickle
import struct
import sys
from unittest import mock

import jax
import numpy as np
import pytest

import compopt
from examples import input_pipeline
from examples import methods
from examples import models
from examples import report
from examples import train
from examples.configs import default


def tiny_config(**overrides):
  config = default.get_config()
  config.dataset = "digits"
  config.model = "mlp"
  config.num_workers = 4
  config.batch_size = 8
  config.method = "ef_sgd"
  config.compressor = "top_k(ratio=0.1)"
  config.learning_rate = 0.1
  config.momentum = 0.0
  config.methods = ()
  config.num_steps = 4
  config.log_every = 2
  config.eval_every = 4
  config.checkpoint_every = 2
  config.eval_batch_size = 64
  config.test_limit = 64
  config.progress = False
  config.mode = "vmap"
  config.update(overrides)
  return config


def write_idx(path, array, compress=False):
  array = np.asarray(array, np.uint8)
  header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  opener = gzip.open if compress else open
  with opener(path, "wb") as f:
    f.write(header + array.tobytes())


def write_idx_dir(root, n_train=24, n_test=8, compress=True):
  rng = np.random.default_rng(0)
  arrays = {
      "train_images": rng.integers(0, 256, (n_train, 28, 28)),
      "train_labels": np.arange(n_train) % 10,
      "test_images": rng.integers(0, 256, (n_test, 28, 28)),
      "test_labels": np.arange(n_test) % 10,
  }
  for key, stem in input_pipeline.IDX_FILES.items():
    write_idx(os.path.join(root, stem + (".gz" if compress else "")), arrays[key], compress)
  return arrays


def write_cifar_dir(root, per_batch=4, num_classes=10):
  rng = np.random.default_rng(1)
  files = input_pipeline.CIFAR10_FILES if num_classes == 10 else input_pipeline.CIFAR100_FILES
  label_key = b"labels" if num_classes == 10 else b"fine_labels"
  images = {}
  for i, name in enumerate(files):
    data = rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8)
    labels = [(i + j) % num_classes for j in range(per_batch)]
    with open(os.path.join(root, name), "wb") as f:
      pickle.dump({b"data": data, label_key: labels, b"batch_label": b"x"}, f)
    images[name] = (data, labels)
  return images


def leaves_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------- loaders


def test_idx_loader_reads_written_files(tmp_path):
  arrays = write_idx_dir(tmp_path, compress=True)
  ds = input_pipeline.load_dataset(tiny_config(dataset="mnist_idx", data_dir=str(tmp_path)))
  assert ds.train_images.shape == (24, 28, 28, 1) and ds.test_images.shape == (8, 28, 28, 1)
  np.testing.assert_array_equal(ds.train_images[..., 0], arrays["train_images"])
  np.testing.assert_array_equal(ds.test_labels, arrays["test_labels"])
  assert ds.num_classes == 10


def test_idx_loader_uncompressed(tmp_path):
  arrays = write_idx_dir(tmp_path, compress=False)
  ds = input_pipeline.load_idx_dir(str(tmp_path))
  np.testing.assert_array_equal(ds.test_images[..., 0], arrays["test_images"])


def test_cifar_loader_reads_written_batches(tmp_path):
  written = write_cifar_dir(tmp_path)
  ds = input_pipeline.load_dataset(tiny_config(dataset="cifar10", data_dir=str(tmp_path)))
  assert ds.train_images.shape == (20, 32, 32, 3) and ds.test_images.shape == (4, 32, 32, 3)
  data, labels = written["data_batch_1"]
  # CIFAR rows are channel-major: 1024 red, 1024 green, 1024 blue values.
  np.testing.assert_array_equal(ds.train_images[0, :, :, 1], data[0, 1024:2048].reshape(32, 32))
  np.testing.assert_array_equal(ds.train_labels[:4], labels)
  np.testing.assert_array_equal(ds.test_labels, written["test_batch"][1])


def test_cifar100_loader(tmp_path):
  write_cifar_dir(tmp_path, num_classes=100)
  ds = input_pipeline.load_dataset(tiny_config(dataset="cifar100", data_dir=str(tmp_path)))
  assert ds.num_classes == 100 and ds.train_images.shape == (4, 32, 32, 3)


@pytest.mark.parametrize("dataset,expected", [
    ("mnist_idx", "train-images-idx3-ubyte"),
    ("fashion_mnist", "t10k-labels-idx1-ubyte"),
    ("cifar10", "data_batch_1"),
    ("cifar100", "test"),
])
def test_missing_data_dir_is_a_clear_error(tmp_path, dataset, expected):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(input_pipeline.DataError) as e:
    input_pipeline.load_dataset(tiny_config(dataset=dataset, data_dir=missing))
  assert missing in str(e.value) and expected in str(e.value)


def test_missing_and_malformed_files_are_clear_errors(tmp_path):
  write_idx_dir(tmp_path)
  os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
  with pytest.raises(input_pipeline.DataError, match="t10k-labels-idx1-ubyte") as e:
    input_pipeline.load_idx_dir(str(tmp_path))
  assert str(tmp_path) in str(e.value)
  bad = tmp_path / "t10k-labels-idx1-ubyte"
  bad.write_bytes(b"not an idx file")
  with pytest.raises(input_pipeline.DataError, match="not an IDX file") as e:
    input_pipeline.load_idx_dir(str(tmp_path))
  assert str(bad) in str(e.value)
  write_idx(bad, np.zeros(8))
  with open(bad, "r+b") as f:  # header says 8 labels, file holds 7
    f.truncate(os.path.getsize(bad) - 1)
  with pytest.raises(input_pipeline.DataError, match="holds 7 bytes"):
    input_pipeline.load_idx_dir(str(tmp_path))

  cifar = tmp_path / "cifar"
  cifar.mkdir()
  write_cifar_dir(cifar)
  os.remove(cifar / "data_batch_3")
  with pytest.raises(input_pipeline.DataError, match="lacks data_batch_3") as e:
    input_pipeline.load_cifar_dir(str(cifar))
  assert str(cifar) in str(e.value) and "test_batch" in str(e.value)
  (cifar / "data_batch_3").write_bytes(b"garbage")
  with pytest.raises(input_pipeline.DataError, match="data_batch_3"):
    input_pipeline.load_cifar_dir(str(cifar))


def test_no_silent_random_data():
  with pytest.raises(ValueError, match="unknown config.dataset"):
    input_pipeline.load_dataset(tiny_config(dataset="imagenet"))
  ds = input_pipeline.load_dataset(tiny_config(dataset="digits"))
  assert ds.name == "digits" and ds.train_images.shape[1:] == (8, 8, 1)


def test_partition_and_batches_are_a_function_of_the_step():
  labels = np.repeat(np.arange(4), 10)
  shards = input_pipeline.partition(labels, 4, "label", seed=0)
  assert [set(labels[s]) for s in shards] == [{0}, {1}, {2}, {3}]
  iid = input_pipeline.partition(labels, 4, "iid", seed=0)
  assert sorted(np.concatenate(iid)) == list(range(40))
  whole = input_pipeline.batch_indices(iid, 3, 0, 7, seed=5)
  part = input_pipeline.batch_indices(iid, 3, 4, 3, seed=5)
  np.testing.assert_array_equal(whole[:, 4:], part)
  assert whole.shape == (4, 7, 3)
  for w in range(4):  # one epoch = 3 batches of 3 from 10: no repeats inside it
    assert len(set(whole[w, :3].ravel())) == 9 and set(whole[w].ravel()) <= set(iid[w])


# -------------------------------------------------------------------- models


def cifar_step(model, sync, n=2, compile_=True):
  """One training step of ``model`` on 2 tiny images per worker."""
  config = tiny_config(model=model, method="psgd", compressor="", momentum=0.9,
                       num_workers=n, batch_size=2, augment=True, sync_batch_stats=sync)
  net = models.create_model(model, 10, axis_name=train.AXIS if sync else None)
  tx = methods.make_optimizer(config, train.AXIS)
  make_state = lambda: train.create_train_state(config, net, tx, (32, 32, 3), n)
  state = make_state() if compile_ else jax.eval_shape(make_state)
  step = train.make_train_steps(config, net, tx, (0.5,) * 3, (0.25,) * 3, "vmap", n)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
  labels = np.array([0, 1, 2, 3], np.int32)
  idx = np.arange(n * 2, dtype=np.int32).reshape(n, 1, 2) % 4
  if not compile_:  # trace forward, backward and update without compiling
    return state, jax.eval_shape(step, state, idx, images, labels)
  return state, step(state, idx, images, labels)


def test_resnet20_one_step_per_worker_batch_stats():
  before, (state, losses, _) = cifar_step("resnet20", False)
  assert losses.shape == (2, 1) and np.all(np.isfinite(losses))
  stats = jax.tree.leaves(state["batch_stats"])
  assert stats and all(s.shape[0] == 2 for s in stats)
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before["params"]),
                                                     jax.tree.leaves(state["params"]))]
  assert all(moved)
  # each worker normalised its own batch and keeps its own running statistics
  assert any(not np.allclose(s[0], s[1]) for s in stats)


@pytest.mark.parametrize("model,sync,num_params", [("resnet18", False, 11_173_962),
                                                   ("vgg11", True, 9_228_362)])
def test_big_models_build_and_trace_a_step(model, sync, num_params):
  state, (out_state, losses, _) = cifar_step(model, sync, compile_=False)
  assert sum(x.size for x in jax.tree.leaves(state["params"])) // 2 == num_params
  assert jax.tree.structure(out_state) == jax.tree.structure(state)
  assert losses.shape == (2, 1)


@pytest.mark.slow  # compiles ResNet-18 and VGG-11 on CPU (ResNet-20 runs by default)
@pytest.mark.parametrize("model,sync", [("resnet18", False), ("vgg11", True)])
def test_big_models_one_step(model, sync):
  _, (state, losses, _) = cifar_step(model, sync)
  assert np.all(np.isfinite(losses))
  if sync:  # averaged over the workers: every worker holds the same statistics
    for s in jax.tree.leaves(state["batch_stats"]):
      np.testing.assert_allclose(s[0], s[1], rtol=1e-6)


def test_cifar_files_to_training(tmp_path):
  """train_and_evaluate end to end on CIFAR-format files (a small model)."""
  (tmp_path / "cifar").mkdir()
  write_cifar_dir(tmp_path / "cifar", per_batch=4)
  config = tiny_config(model="mlp", dataset="cifar10", data_dir=str(tmp_path / "cifar"),
                       num_workers=2, batch_size=4, num_steps=2, log_every=1, augment=True)
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert result.summary["steps"] == 2 and np.isfinite(result.summary["train_loss"])


# ------------------------------------------------------------ modes, resume


def test_loss_goes_down_in_each_mode_and_the_modes_agree(tmp_path):
  results = {}
  for mode in ("vmap", "shard_map"):
    config = tiny_config(mode=mode, num_steps=30, log_every=5, eval_every=30,
                         learning_rate=0.3, batch_size=16, test_limit=0)
    results[mode] = train.train_and_evaluate(config, str(tmp_path / mode))
    losses = [r["train_loss"] for r in results[mode].history]
    assert results[mode].summary["mode"] == mode
    assert losses[-1] < 0.5 * losses[0], (mode, losses)
    assert results[mode].summary["test_accuracy"] > 0.5
  first = [results[m].history[0] for m in ("vmap", "shard_map")]
  np.testing.assert_allclose(first[0]["train_loss"], first[1]["train_loss"], rtol=1e-4)
  assert first[0]["mb_sent"] == first[1]["mb_sent"] > 0


@pytest.fixture
def compile_cache(tmp_path):
  """A persistent compilation cache, so that the three runs of a resume test
  compile each step function once."""
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  old = {n: getattr(jax.config, n) for n in names}
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  yield
  for n, v in old.items():
    jax.config.update(n, v)


@pytest.mark.parametrize("model,method,compressor,kwargs", [
    # dropout: the workers' keys matter (the CNN compiles slowly)
    pytest.param("cnn", "ef_sgd", "top_k(ratio=0.1)", {}, marks=pytest.mark.slow),
    ("mlp", "neolithic", "top_k(ratio=0.1)", {"rounds": 2}),  # accumulate, FCC errors
])
def test_resume_equals_uninterrupted_run_bit_for_bit(tmp_path, compile_cache, model, method,
                                                     compressor, kwargs):
  config = tiny_config(model=model, method=method, compressor=compressor, num_steps=6,
                       log_every=2, eval_every=2, checkpoint_every=2, momentum=0.5,
                       weight_decay=1e-4, schedule="cosine")
  config.method_kwargs.update(kwargs)
  full = train.train_and_evaluate(config, str(tmp_path / "full"))
  halted = config.copy_and_resolve_references()
  halted.halt_after_steps = 3  # stops between two log steps, as a preemption would
  first = train.train_and_evaluate(halted, str(tmp_path / "resumed"))
  assert first.summary["steps"] == 3
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert resumed.summary["steps"] == 6
  leaves_equal(full.state, resumed.state)
  strip = lambda h: [{k: v for k, v in r.items() if k != "wall_time"} for r in h]
  by_step = {r["step"]: r for r in strip(resumed.history)}
  for r in strip(full.history):  # every logged step of the full run, identical
    if r["step"] != 4:  # the resumed run logged 3 -> 4 as its own window
      assert by_step[r["step"]] == r
  with open(tmp_path / "resumed" / "metrics.jsonl") as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == sorted(steps) and steps[-1] == 6


@pytest.mark.slow  # the rules: tests/test_checkpoint.py (reshard_ef_keeps_the_virtual_iterate)
def test_resume_on_another_number_of_workers(tmp_path):
  # 4 workers stop at step 3; the run resumes on 2 (compopt.reshard_state)
  halted = tiny_config(num_steps=6, halt_after_steps=3)
  first = train.train_and_evaluate(halted, str(tmp_path))
  assert first.summary["steps"] == 3
  old_payload = sum(compopt.comm_bits(first.state["opt_state"]).payload)
  resumed = train.train_and_evaluate(tiny_config(num_workers=2, num_steps=6), str(tmp_path))
  assert resumed.summary["steps"] == 6 and resumed.summary["workers"] == 2
  assert all(a.shape[0] == 2 for a in jax.tree.leaves(resumed.state))
  # the counters' totals carry over: 3 more steps of 2 workers, each sending
  # as much per step as the 4 did
  per_worker_step = old_payload // (3 * 4)
  assert sum(compopt.comm_bits(resumed.state["opt_state"]).payload) == (
      old_payload + 3 * 2 * per_worker_step)
  assert np.isfinite(resumed.summary["train_loss"])
  with open(tmp_path / "metrics.jsonl") as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == sorted(steps) and steps[-1] == 6


def test_report_table_and_figure(tmp_path):
  hist = [{"step": s, "epoch": s / 10, "train_loss": 1.0 / s, "mb_sent": s * 2.0,
           "test_accuracy": 0.5 + s / 100, "test_loss": 1.0} for s in (1, 2, 3)]
  summaries = [
      {"label": "P-SGD", "method": "psgd", "train_loss": 0.3, "test_accuracy": 0.9,
       "mb_sent": 100.0, "wall_time": 3.0},
      {"label": "EF top-k", "method": "ef_sgd", "train_loss": 0.4, "test_accuracy": 0.88,
       "mb_sent": 5.0, "wall_time": 4.0},
  ]
  text = report.table(summaries)
  assert "20.0x less" in text and "90.00%" in text
  path = report.plot({"P-SGD": hist, "EF": hist}, str(tmp_path / "fig.png"))
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------- command line
@pytest.mark.parametrize("hostile", [
    "().__class__.__bases__[0].__subclasses__()",
    "top_k(ratio=__import__('os').system('touch pwned'))",
    "top_k(ratio=0.1).__class__.__init__.__globals__",
    "[c for c in ().__class__.__base__.__subclasses__()]",
    "top_k(ratio=(lambda: 0.1)())",
    "top_k(**{'ratio': 0.1})",
    "top_k(ratio=0.05 + 0.05)",
    "open('x')",
    "compopt.compressors.top_k(ratio=0.1)",
])
def test_a_compressor_string_never_runs_code(hostile, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match="config.compressor="):
    methods.make_compressor(hostile)
  assert not (tmp_path / "pwned").exists()


def test_compressor_expressions_build_nested_factories():
  c = methods.make_compressor("induced(top_k(ratio=0.025), rand_k_wangni(k=3))")
  assert c == compopt.compressors.induced(compopt.compressors.top_k(ratio=0.025),
                                          compopt.compressors.rand_k_wangni(k=3))
  assert methods.make_compressor(" qsgd(4, norm='inf') ") == compopt.compressors.qsgd(4, norm="inf")
  assert methods.make_compressor("") is None
  with pytest.raises(ValueError, match=r"`ratio` must be in \(0, 1\]"):
    methods.make_compressor("top_k(ratio=-0.1)")
  with pytest.raises(ValueError, match="choose from .*top_k"):
    methods.make_compressor("topk(ratio=0.1)")


def test_naming_a_method_on_the_command_line_runs_that_method_alone():
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  from examples import main  # pylint: disable=import-outside-toplevel

  def presets(*argv):  # parsed as examples.main parses its --config flags
    argv = ["main", *argv]
    with mock.patch.object(sys, "argv", argv):  # ml_collections reads the overrides there
      fv = flags.FlagValues()
      config_flags.DEFINE_config_file("config", main._DEFAULT, flag_values=fv)  # pylint: disable=protected-access
      fv(argv)
    return main.presets_to_run(fv.config, config_flags.get_override_values(fv["config"]))

  everything = presets()
  assert len(everything) == 6 and "ef_topk" in everything
  assert presets("--config.method=ef_sgd", "--config.compressor=top_k(ratio=0.01)") == (None,)
  assert presets("--config.compressor=natural()") == (None,)
  assert presets("--config.num_steps=3") == everything
  assert presets("--config.method=ef_sgd", "--config.methods=('psgd',)") == ("psgd",)


def test_list_names_methods_compressors_and_presets():
  text = methods.listing()
  for name in ("ef_sgd", "neolithic", "top_k(", "induced(", "ef_topk"):
    assert name in text
  assert "tree_omega" not in text

"""Crash-safe checkpoints: a process SIGKILLed while it overwrites a
checkpoint (``save(..., force=True)``) leaves the old checkpoint or the new
one, bit for bit, never an error or a missing directory; restore never reads
a half-written temporary directory; what a killed save leaves behind does not
block the next save, which removes it."""

import multiprocessing
import os
import time

import numpy as np
import pytest

import _checkpoint_child as child
import compopt

KILLS = 10


@pytest.fixture(scope="module")
def ctx():
  """Processes forked from a server that has imported JAX, orbax and compopt."""
  context = multiprocessing.get_context("forkserver")
  # Installed modules only: the server does not see the tests' sys.path (the
  # processes it forks do, and import _checkpoint_child quickly then).
  context.set_forkserver_preload(["numpy", "jax", "orbax.checkpoint", "compopt"])
  return context


def restore(path):
  like = child.tree(0)
  return child.which(compopt.checkpoint.restore(path, like))


def siblings(tmp_path):
  return sorted(os.listdir(tmp_path))


def test_sigkill_during_force_save_leaves_the_old_or_the_new(ctx, tmp_path):
  path = str(tmp_path / "ckpt")
  compopt.checkpoint.save(path, child.tree(0))
  done = 0  # the newest k whose save returned
  mid_save = 0  # kills that found the save's own directories beside the checkpoint
  for trial in range(KILLS):
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child.save_forever, args=(path, done + 1, send), daemon=True)
    proc.start()
    send.close()
    if trial % 2:  # after its first save, at a point that moves through the next one
      assert receive.poll(60), "the saving process sent nothing in 60 s"
      time.sleep(0.004 * trial)
    else:  # at a point from its start up to a few saves in
      time.sleep(0.05 * trial)
    proc.kill()
    proc.join()
    try:
      while receive.poll():
        done = receive.recv()
    except EOFError:  # every k sent has been read
      pass
    receive.close()
    left = siblings(tmp_path)
    mid_save += left != ["ckpt"]
    got = restore(path)  # never raises: there is a checkpoint
    assert got in (done, done + 1), (trial, got, done, left)
    done = got  # the next process overwrites what is there
  assert mid_save >= KILLS // 3, mid_save  # most kills caught a save in progress
  # The next save cleans up whatever the kills left.
  compopt.checkpoint.save(path, child.tree(done + 1), force=True)
  assert siblings(tmp_path) == ["ckpt"]
  assert restore(path) == done + 1


@pytest.mark.parametrize("die_at,expect", [
    (("before", 1), "old"),  # the new checkpoint complete beside the old
    (("after", 1), "new"),  # the old moved aside: no directory under the name
    (("after", 2), "new"),  # the new in place, the old still aside
    (("after", 3), "new"),  # the old in the trash, not yet deleted
])
def test_sigkill_between_the_renames(ctx, tmp_path, die_at, expect):
  path = str(tmp_path / "ckpt")
  compopt.checkpoint.save(path, child.tree(1))
  proc = ctx.Process(target=child.save_and_die, args=(path, 2, die_at))
  proc.start()
  proc.join()
  assert proc.exitcode == -9, proc.exitcode  # it died where it was told to
  assert siblings(tmp_path) != ["ckpt"]  # it left something to clean up
  assert restore(path) == {"old": 1, "new": 2}[expect]
  with pytest.raises(ValueError, match="already exists"):  # repaired first
    compopt.checkpoint.save(path, child.tree(3))
  compopt.checkpoint.save(path, child.tree(3), force=True)
  assert siblings(tmp_path) == ["ckpt"]
  assert restore(path) == 3


def test_stale_temporaries_neither_restored_nor_blocking(tmp_path):
  path = str(tmp_path / "ckpt")
  for stale in ("ckpt.orbax-checkpoint-tmp", "ckpt.orbax-checkpoint-tmp-1712345678",
                "ckpt.compopt-new.orbax-checkpoint-tmp", "ckpt.compopt-trash"):
    os.makedirs(tmp_path / stale / "x00")
    (tmp_path / stale / "x00" / "half").write_bytes(b"\0" * 100)
  with pytest.raises(FileNotFoundError):  # a temporary directory is no checkpoint
    compopt.checkpoint.restore(path, child.tree(0))
  compopt.checkpoint.save(path, child.tree(5))
  assert siblings(tmp_path) == ["ckpt"]
  assert restore(path) == 5
  os.makedirs(tmp_path / "ckpt.compopt-new.orbax-checkpoint-tmp" / "x00")
  compopt.checkpoint.save(tmp_path / "ckpt", child.tree(6), force=True)
  assert siblings(tmp_path) == ["ckpt"]
  assert restore(path) == 6
  np.testing.assert_array_equal(compopt.checkpoint.restore(path, child.tree(0))["x15"],
                                child.tree(6)["x15"])

"""Processes that tests/test_checkpoint_crash.py kills while they save (not a test).

They run in processes forked from a ``multiprocessing`` fork server that has
imported JAX, orbax and compopt once, so that each one starts in a fraction
of a second.
"""

import os
import signal

import numpy as np

import compopt
from compopt._src import checkpoint as impl

LEAVES = 16
SIZE = 1 << 15  # 16 leaves of 128 KiB: a save takes tens of milliseconds


def tree(k):
  """The k-th checkpoint's contents: every value differs from the others'."""
  return {f"x{i:02d}": np.arange(SIZE, dtype=np.float32) + np.float32(k * LEAVES + i)
          for i in range(LEAVES)}


def which(restored):
  """The k of a restored :func:`tree`, after checking it bit for bit."""
  k = int(restored["x00"][0]) // LEAVES
  want = tree(k)
  assert sorted(restored) == sorted(want)
  for name, value in want.items():
    np.testing.assert_array_equal(np.asarray(restored[name]), value)
  return k


def save_forever(directory, first, conn):
  """Overwrites ``directory`` with tree(first), tree(first + 1), ... and sends
  each k through ``conn`` once its save has returned."""
  k = first
  while True:
    compopt.checkpoint.save(directory, tree(k), force=True)
    conn.send(k)
    k += 1


def save_and_die(directory, k, die_at):
  """Overwrites ``directory`` with tree(k), SIGKILLing itself just before
  (``("before", n)``) or just after (``("after", n)``) the save's n-th
  rename of a whole checkpoint directory (counting from 1)."""
  when, n = die_at
  calls = [0]
  rename = impl._rename

  def dying_rename(src, dst):
    calls[0] += 1
    if calls[0] == n and when == "before":
      os.kill(os.getpid(), signal.SIGKILL)
    rename(src, dst)
    if calls[0] == n and when == "after":
      os.kill(os.getpid(), signal.SIGKILL)

  impl._rename = dying_rename
  compopt.checkpoint.save(directory, tree(k), force=True)

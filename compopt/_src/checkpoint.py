"""Saving and restoring any pytree of arrays with orbax; the public face is
:mod:`compopt.checkpoint`.

Crash safety. Orbax writes a checkpoint into ``<directory>.orbax-checkpoint-tmp``
and renames it to ``<directory>`` once every process has written its part, so
a new checkpoint appears whole or not at all; but to overwrite (``force=True``)
it deletes the old directory first, and a process killed before the rename
leaves no checkpoint (or, killed during the deletion, a half-deleted one). :func:`save` therefore writes an overwrite beside
the old checkpoint and swaps the two by renames, and :func:`restore` reads
whichever complete checkpoint a crash left. The names, for a checkpoint
``ckpt``:

================================= =============================================
``ckpt``                          the checkpoint
``ckpt.compopt-new``              a complete new checkpoint that replaces
                                  ``ckpt`` (orbax's rename made it)
``ckpt.compopt-old``              the old checkpoint, moved aside for the new
``ckpt.compopt-trash``            a directory being deleted
``ckpt*.orbax-checkpoint-tmp*``   orbax's half-written temporary directories
================================= =============================================

An overwrite runs: orbax writes ``ckpt.compopt-new`` (through its temporary
directory), then ``ckpt`` → ``ckpt.compopt-old``, ``ckpt.compopt-new`` →
``ckpt``, and ``ckpt.compopt-old`` is deleted (renamed to the trash first).
Every directory under the first three names is a complete checkpoint at
every moment, and at every moment one of them holds the newest complete one:
``ckpt`` if it exists, else ``ckpt.compopt-new``, else ``ckpt.compopt-old``;
that is the one :func:`restore` reads (it never writes). The next
:func:`save` first finishes or undoes what a crash interrupted, in that same
order of preference, and deletes the leftovers and stale temporary
directories, so none of them blocks it.

Several processes (``jax.distributed``): every process calls :func:`save` and
writes its shards; process 0 (orbax's primary host, which also renames
orbax's temporary directory) alone repairs, renames and deletes, between
barriers: none of them starts while a process may still read the directory
(a restore just before), every process sees the same directories, and each
returns once the new checkpoint is in place. The directory must be on a file
system that all processes share, as orbax requires.
"""

from __future__ import annotations

import os
from typing import Any
import shutil

import jax

NEW_SUFFIX = ".compopt-new"
OLD_SUFFIX = ".compopt-old"
TRASH_SUFFIX = ".compopt-trash"
ORBAX_TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's; matched as a prefix of the name


def _path(directory):
  path = os.fspath(directory)
  if not os.path.isabs(path):
    path = os.path.abspath(path)
  return path.rstrip(os.sep) or os.sep


def _barrier(name):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def _rename(src, dst):
  os.rename(src, dst)


def _delete(path, trash):
  """Deletes the directory ``path`` so that it never exists half-deleted:
  renamed to ``trash`` first, then removed."""
  if os.path.lexists(trash):
    shutil.rmtree(trash)
  _rename(path, trash)
  shutil.rmtree(trash)


def _stale_temporaries(path):
  """Orbax's temporary directories for ``path`` and its ``.compopt-new``."""
  parent, name = os.path.split(path)
  if not os.path.isdir(parent):
    return []
  prefixes = (name + ORBAX_TMP_SUFFIX, name + NEW_SUFFIX + ORBAX_TMP_SUFFIX)
  return [os.path.join(parent, entry) for entry in os.listdir(parent)
          if entry.startswith(prefixes)]


def _recover(path):
  """Finishes or undoes an overwrite that a crash interrupted and removes what
  it left behind (process 0, while no save is running): afterwards ``path``
  holds the checkpoint :func:`restore` would have read, and no other
  directory of the table in the module docstring exists."""
  new, old, trash = path + NEW_SUFFIX, path + OLD_SUFFIX, path + TRASH_SUFFIX
  if not os.path.isdir(path):
    for complete in (new, old):
      if os.path.isdir(complete):
        _rename(complete, path)
        break
  for leftover in (new, old):
    if os.path.isdir(leftover):
      _delete(leftover, trash)
  for stale in _stale_temporaries(path) + ([trash] if os.path.lexists(trash) else []):
    shutil.rmtree(stale)


def _readable(path):
  """The directory holding the newest complete checkpoint of ``path``."""
  for candidate in (path, path + NEW_SUFFIX, path + OLD_SUFFIX):
    if os.path.isdir(candidate):
      return candidate
  return path  # none: orbax says that it is missing


def _orbax(owner: str):
  """orbax.checkpoint, or an ImportError that names the extra installing it."""
  try:
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        f"compopt.checkpoint.{owner} needs orbax-checkpoint, which compopt's "
        "'checkpoint' extra installs: pip install 'compopt[checkpoint]' (or "
        "pip install orbax-checkpoint)") from e
  return ocp


def _orbax_save(path, tree):
  ocp = _orbax("save")
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, tree)
    ckptr.wait_until_finished()


def save(directory: str | os.PathLike, tree: Any, *, force: bool = False) -> None:
  """Writes ``tree`` (params, stacked optimizer states, any pytree of arrays)
  to ``directory`` with orbax, and waits until it is on disk.

  Crash-safe: a process killed at any moment of a save leaves ``directory``
  readable by :func:`restore`, with the old checkpoint or the new one, never
  a mix or nothing; the next save cleans up after it (see the module
  docstring). With several processes every process calls it.

  Args:
    directory: a path that does not exist yet (or ``force=True``).
    tree: the pytree to save; sharded arrays are written from all hosts.
    force: replace an existing checkpoint; the old one stays in place until
      the new one is complete.

  Raises:
    ValueError: ``directory`` holds a checkpoint and ``force`` is False.
  """
  path = _path(directory)
  _barrier("compopt_checkpoint_save_begin")  # no process still reads the old one
  if jax.process_index() == 0:
    _recover(path)
  _barrier("compopt_checkpoint_save_start")
  if not (force and os.path.isdir(path)):
    _orbax_save(path, tree)  # orbax refuses an existing directory
    return
  new = path + NEW_SUFFIX
  _orbax_save(new, tree)  # complete once this returns on process 0
  if jax.process_index() == 0:
    _rename(path, path + OLD_SUFFIX)
    _rename(new, path)
    _delete(path + OLD_SUFFIX, path + TRASH_SUFFIX)
  _barrier("compopt_checkpoint_save_end")


def restore(directory: str | os.PathLike, like: Any) -> Any:
  """Reads a checkpoint written by :func:`save`: the new one if a save was
  killed after completing it, else the old one, never a half-written
  temporary directory.

  Args:
    directory: the checkpoint's path.
    like: a tree with the structure, shapes, dtypes and (optional) shardings
      to restore into: concrete arrays (e.g. a freshly initialised, stacked
      and sharded state) or ``jax.ShapeDtypeStruct`` leaves. NamedTuple states come
      back as NamedTuples.

  Returns:
    The restored tree, placed like ``like``.

  Raises:
    FileNotFoundError: no checkpoint at ``directory``.
  """
  ocp = _orbax("restore")

  def abstract(x):
    if isinstance(x, jax.ShapeDtypeStruct):
      return x
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  target = jax.tree.map(abstract, like)
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(_readable(_path(directory)), target)

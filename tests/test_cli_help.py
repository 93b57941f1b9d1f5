"""Every command-line script names itself as it is run and documents every
flag: the parser each one builds is captured and inspected (nothing runs)."""

import argparse
import importlib

import pytest

SCRIPTS = [
    ("examples.compress_demo", "main"),
    ("examples.nnx_mnist", "main"),
    ("examples.launch", "_parser"),
    ("benchmarks.sockets.__main__", "_parser"),
    ("benchmarks.sockets.worker", "main"),
    ("benchmarks.perf.__main__", "main"),
    ("benchmarks.perf.step", "main"),
    ("benchmarks.perf.scale", "main"),
    ("benchmarks.perf.throughput", "main"),
    ("benchmarks.perf.wire", "main"),
    ("benchmarks.perf.network", "main"),
    ("benchmarks.perf.peers", "main"),  # needs torch (the perf extra)
    ("benchmarks.reproduce.__main__", "main"),
]


class _Captured(Exception):
  def __init__(self, parser):
    super().__init__()
    self.parser = parser


def _parser_of(module_name, entry, monkeypatch):
  if module_name == "benchmarks.perf.peers":
    pytest.importorskip("torch")
  module = importlib.import_module(module_name)

  def capture(self, *args, **kwargs):
    raise _Captured(self)

  monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
  monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
  result = getattr(module, entry)
  if entry == "_parser":
    return result()
  with pytest.raises(_Captured) as info:
    try:
      result([])
    except TypeError:  # main() without an argv parameter
      result()
  return info.value.parser


@pytest.mark.parametrize("module_name,entry", SCRIPTS, ids=[s[0] for s in SCRIPTS])
def test_every_flag_has_help_and_the_program_its_name(module_name, entry, monkeypatch):
  parser = _parser_of(module_name, entry, monkeypatch)
  command = "python -m " + module_name.removesuffix(".__main__")
  assert parser.prog == command
  assert parser.description
  for action in parser._actions:  # pylint: disable=protected-access
    if isinstance(action, argparse._HelpAction):  # pylint: disable=protected-access
      continue
    assert action.help and action.help.strip(), (module_name, action.option_strings)

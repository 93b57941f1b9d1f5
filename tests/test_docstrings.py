"""The runnable examples in the public docstrings stay correct."""

import doctest
import importlib
import pkgutil

import pytest

import compopt

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(compopt.__path__, prefix="compopt."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def test_the_public_examples_are_collected():
  # The methods' docstrings carry examples; an empty run would prove nothing.
  finder = doctest.DocTestFinder()
  tests = [t for t in finder.find(compopt.ef_sgd) if t.examples]
  assert tests

"""The package's layers only point down: every import inside ``compopt._src``
goes to a module of a lower layer, the communication layer knows no concrete
compressor and resharding knows no method (read from the source, no JAX)."""

import ast
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parent.parent / "compopt"

# Lowest first. A module may import only modules of a strictly lower layer.
LAYERS = [
    # checks: argument validation, imports nothing from compopt
    {"checks"},
    # wire formats, the compressor interface, counters, samplings, drivers
    {"wire", "counters", "sampling", "parallel", "checkpoint", "compressors.rng",
     "compressors.fusion"},
    {"compressors.base", "reshard", "partition"},
    # concrete compressors and their tree constants
    {"compressors.tree", "compressors.sparse", "compressors.sign", "compressors.quantize",
     "compressors.combine", "compressors.per_worker", "compressors.cast",
     "compressors.onebit"},
    # compressors built on the sparse ones
    {"compressors.threshold"},
    # exchange schemes and the theorems' constants
    {"schemes", "theory"},
    # the communication layer, and the public signatures' types
    {"comm", "typing"},
    # methods: the guard, then the families, then methods built on families
    {"methods.guard"},
    {"methods.dcsgd", "methods.error_feedback", "methods.shifted", "methods.accumulate"},
    {"methods.baselines", "methods.comp_ams", "methods.neolithic", "methods.powersgd",
     "methods.dgc", "methods.onebit_sgd", "methods.onebit_adam"},
    # built on methods: the jitted data-parallel step, hyperparameter
    # injection, iterate averaging
    {"data_parallel", "hyperparams", "averaging"},
]
RANK = {name: rank for rank, layer in enumerate(LAYERS) for name in layer}
CONCRETE_COMPRESSORS = {"compressors.sparse", "compressors.sign", "compressors.quantize",
                        "compressors.combine", "compressors.cast", "compressors.onebit",
                        "compressors.threshold"}


def _src_modules():
  for path in sorted((SRC / "_src").rglob("*.py")):
    if path.name == "__init__.py":
      continue
    yield ".".join(path.relative_to(SRC / "_src").with_suffix("").parts), path


def _imports(path):
  """The compopt modules ``path`` imports, as names relative to compopt._src
  (or "compopt.<face>" for the public faces)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("compopt"):
      base = node.module
      for alias in node.names:
        full = f"{base}.{alias.name}"
        # `from compopt._src import comm` names a module; `from compopt._src.x import y`
        # names an attribute of module x.
        target = full if (SRC / "_src" / pathlib.Path(*full.split(".")[2:])).with_suffix(
            ".py").exists() else base
        out.add(target)
    elif isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.startswith("compopt"))
  return {t[len("compopt._src."):] if t.startswith("compopt._src.") else t for t in out}


def test_every_private_module_has_a_layer():
  names = {name for name, _ in _src_modules()}
  assert names == set(RANK), (sorted(names - set(RANK)), sorted(set(RANK) - names))


@pytest.mark.parametrize("name,path", list(_src_modules()), ids=[n for n, _ in _src_modules()])
def test_imports_point_down(name, path):
  for target in _imports(path):
    assert not target.startswith("compopt"), f"{name} imports the public face {target}"
    assert RANK[target] < RANK[name], (
        f"{name} (layer {RANK[name]}) imports {target} (layer {RANK[target]})")


def test_comm_knows_no_concrete_compressor_and_reshard_no_method():
  assert not _imports(SRC / "_src" / "comm.py") & CONCRETE_COMPRESSORS
  assert not any(t.startswith("methods") for t in _imports(SRC / "_src" / "reshard.py"))


def test_public_faces_only_re_export():
  for path in SRC.glob("*.py"):
    tree = ast.parse(path.read_text())
    defs = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert not defs, f"{path.name} implements {defs}; implementation belongs in _src"

"""The package as users get it: the wheel and the sdist build, the wheel
installs into a fresh virtual environment and imports, carrying its license,
its type marker and the version the package reports; compopt.checkpoint
names the extra it needs when orbax is missing."""

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile

import pytest

import compopt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_and_sdist_build_install_and_import(tmp_path):
  pytest.importorskip("build")
  src = tmp_path / "src"  # the sources a clean clone has, away from this checkout's build files
  for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md"):
    shutil.copy(os.path.join(ROOT, name), src / name if src.exists() else (
        src.mkdir() or src / name))
  shutil.copytree(os.path.join(ROOT, "compopt"), src / "compopt",
                  ignore=shutil.ignore_patterns("__pycache__"))
  dist = tmp_path / "dist"
  proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel",
                         "--outdir", str(dist), str(src)], capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  (wheel,) = dist.glob("compopt-*.whl")
  (sdist,) = dist.glob("compopt-*.tar.gz")
  version = compopt.__version__
  assert wheel.name.startswith(f"compopt-{version}-") and sdist.name == f"compopt-{version}.tar.gz"
  names = zipfile.ZipFile(wheel).namelist()
  assert "compopt/py.typed" in names
  assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE")
             for n in names), names
  assert not any(n.startswith(("tests/", "examples/", "benchmarks/")) for n in names)
  members = tarfile.open(sdist).getnames()
  for name in ("LICENSE", "README.md", "pyproject.toml", "compopt/py.typed"):
    assert f"compopt-{version}/{name}" in members, name

  # A fresh environment gets the wheel alone; its dependencies (jax, optax,
  # numpy) are read from this environment's site-packages, after it.
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
  python = venv / "bin" / "python"
  subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                  str(wheel)], check=True, timeout=120)
  deps = sysconfig.get_paths()["purelib"]
  check = ("import sys; sys.path.append(%r); import compopt, importlib.metadata as m; "
           "print(compopt.__file__); print(compopt.__version__, m.version('compopt')); "
           "print(compopt.ef_sgd(0.1, compressor=compopt.compressors.top_k(1)) is not None)"
           % deps)
  out = subprocess.run([str(python), "-c", check], capture_output=True, text=True, timeout=120,
                       cwd=str(tmp_path),  # not this checkout, which -c would put first
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
  assert out.returncode == 0, out.stderr[-3000:]
  where, versions, ok = out.stdout.split("\n")[:3]
  assert where.startswith(str(venv)), where  # the installed wheel, not this checkout
  assert versions == f"{version} {version}" and ok == "True"


def test_checkpoint_without_orbax_names_the_extra(monkeypatch, tmp_path):
  for name in [m for m in sys.modules if m == "orbax" or m.startswith("orbax.")]:
    monkeypatch.delitem(sys.modules, name)
  monkeypatch.setitem(sys.modules, "orbax", None)  # import orbax... raises ImportError
  monkeypatch.setitem(sys.modules, "orbax.checkpoint", None)
  with pytest.raises(ImportError, match=r"pip install 'compopt\[checkpoint\]'"):
    compopt.checkpoint.save(str(tmp_path / "ckpt"), {"a": 1.0})
  with pytest.raises(ImportError, match=r"compopt.checkpoint.restore needs orbax-checkpoint"):
    compopt.checkpoint.restore(str(tmp_path / "ckpt"), {"a": 1.0})


def test_the_public_api_is_annotated():
  """py.typed promises type hints: every parameter of every public function
  (compressors, schemes, samplings and dtypes included) has one."""
  import inspect  # pylint: disable=import-outside-toplevel
  modules = [compopt, compopt.compressors, compopt.exchange, compopt.parallel,
             compopt.sampling, compopt.theory, compopt.checkpoint]
  missing = []
  for module in modules:
    for name in module.__all__:
      fn = getattr(module, name)
      if not inspect.isfunction(fn):
        continue
      for param in inspect.signature(fn).parameters.values():
        if param.annotation is inspect.Parameter.empty:
          missing.append(f"{module.__name__}.{name}({param.name})")
  assert not missing, missing

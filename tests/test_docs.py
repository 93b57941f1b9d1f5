"""The documentation: its guides' code runs, the API pages cover the public
API, and Sphinx builds it without a warning.

Code in the guides (``docs/**/*.md``): every ```python block runs, in order,
one namespace per page, so a page reads as one program. A ```text block
right after a ```python block is the output that block prints. Code that
cannot run here (several processes) is written as ```{code-block} python,
which Sphinx highlights the same way and this test leaves out.
"""

import contextlib
import importlib
import io
import pathlib
import re
import subprocess
import sys
import tempfile

import pytest

import compopt

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"

_FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)


def _guides():
  return sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)


def _examples(path):
  """[(first line, code, expected stdout or None)] of a page's python blocks."""
  text = path.read_text(encoding="utf-8")
  fences = list(_FENCE.finditer(text))
  examples = []
  for i, fence in enumerate(fences):
    if fence.group("info").strip() != "python":
      continue
    expected = None
    if i + 1 < len(fences):
      after = fences[i + 1]
      if (after.group("info").strip() == "text"
          and not text[fence.end():after.start()].strip()):
        expected = after.group("body")
    line = text.count("\n", 0, fence.start("body")) + 1
    examples.append((line, fence.group("body"), expected))
  return examples


def _page_id(path):
  return str(path.relative_to(DOCS))


# Pages whose code takes long: the data-parallel guide compiles a step for 8
# devices three times (about 9 s). Its first example is the README's, which
# tests/test_data_parallel.py runs in the default run.
_SLOW = {"guides/data_parallel.md"}
_PAGES = [p for p in _guides() if _examples(p)]
_PAGE_PARAMS = [pytest.param(p, id=_page_id(p),
                             marks=[pytest.mark.slow] if _page_id(p) in _SLOW else [])
                for p in _PAGES]


def test_the_guides_have_examples():
  # An empty run would prove nothing: the guides below must keep their code.
  names = {_page_id(p) for p in _PAGES}
  for page in ("index.md", "guides/getting_started.md", "guides/data_parallel.md",
               "guides/worker_stacked.md", "guides/fault_tolerance.md"):
    assert page in names, f"docs/{page} has no ```python block"


@pytest.mark.parametrize("path", _PAGE_PARAMS)
def test_guide_code_runs(path, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)                       # files a page writes
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
  namespace = {"__name__": "__docs__"}
  for line, code, expected in _examples(path):
    # Line numbers of tracebacks are the page's own.
    compiled = compile("\n" * (line - 1) + code, str(path), "exec")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      exec(compiled, namespace)  # pylint: disable=exec-used
    if expected is not None:
      got = [l.rstrip() for l in out.getvalue().rstrip().splitlines()]
      want = [l.rstrip() for l in expected.rstrip().splitlines()]
      assert got == want, f"{_page_id(path)}, block at line {line}: printed output differs"


# -- the API pages cover the public API -----------------------------------------

_PUBLIC_MODULES = ("compopt", "compopt.checkpoint", "compopt.compressors", "compopt.exchange",
                   "compopt.parallel", "compopt.sampling", "compopt.theory")
_DIRECTIVE = re.compile(r"^\.\. (?P<kind>module|currentmodule|automodule|autofunction|autoclass|"
                        r"autodata|autoexception):: (?P<name>\S+)", re.M)


def _resolve(name):
  module_name, _, attr = name.partition(".")
  obj = importlib.import_module(module_name)
  for part in attr.split(".") if attr else ():
    obj = getattr(obj, part)
  return obj


def _documented():
  """ids of the objects (and names of the modules) the API pages document."""
  objects, modules = set(), set()
  for page in sorted((DOCS / "api").glob("*.rst")):
    current = None
    for m in _DIRECTIVE.finditer(page.read_text(encoding="utf-8")):
      kind, name = m.group("kind"), m.group("name")
      if kind in ("module", "currentmodule", "automodule"):
        current = name
        modules.add(name)
        continue
      full = name if current is None or name.startswith(current + ".") else f"{current}.{name}"
      objects.add(id(_resolve(full)))
  return objects, modules


def test_the_api_pages_document_every_public_name():
  objects, modules = _documented()
  missing = []
  for module_name in _PUBLIC_MODULES:
    module = importlib.import_module(module_name)
    assert module_name in modules, f"no API page for {module_name}"
    for name in module.__all__:
      obj = getattr(module, name)
      if isinstance(obj, type(compopt)):
        if obj.__name__ not in modules:
          missing.append(f"{module_name}.{name}")
      elif id(obj) not in objects:
        missing.append(f"{module_name}.{name}")
  assert not missing, f"not in docs/api/*.rst: {missing}"


# -- the build -------------------------------------------------------------------


def test_the_docs_build_without_warnings(tmp_path):
  # About 12 s on 2 CPU cores. Needs the documentation's packages (Sphinx,
  # myst-parser, sphinx-book-theme); skipped where they are not installed.
  for module in ("sphinx", "myst_parser", "sphinx_book_theme"):
    pytest.importorskip(module)
  result = subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
       "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
      capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-5000:]
  assert (tmp_path / "html" / "api" / "compopt.html").exists()

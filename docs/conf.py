"""Sphinx configuration of compopt's documentation.

Build (warnings are errors), from the repository root::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The guides are MyST Markdown; the API pages are reStructuredText, because
autodoc's docstrings are reStructuredText (Google style, read by napoleon).
"""

import ast
import functools
import importlib
import inspect
import os
import re
import sys
import textwrap

# autodoc imports compopt, and with it JAX: keep JAX on the CPU, so that a
# build never looks for accelerators or reserves their memory.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

sys.path.insert(0, os.path.abspath(".."))

import compopt  # noqa: E402
from docutils import nodes  # noqa: E402
from sphinx import addnodes  # noqa: E402
from sphinx.ext import autosummary  # noqa: E402

project = "compopt"
author = "The compopt authors"
copyright = "The compopt authors"  # noqa: A001 (Sphinx's name)
release = compopt.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
templates_path = []

# -- MyST (the guides) --------------------------------------------------------

myst_enable_extensions = ["dollarmath"]
# Anchors for headings down to ###, so guides can link to sections.
myst_heading_anchors = 3

# -- autodoc, napoleon, autosummary (the API pages) ---------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Defaults as written in the source (``2**14``, ``jnp.float32``), not reprs.
autodoc_preserve_defaults = True
# Annotations as the user reads them: optax's aliases by name (expanded,
# ScalarOrSchedule fills four lines), compopt's types by their public names.
autodoc_type_aliases = {
    **{name: name for name in ("optax.ScalarOrSchedule", "optax.Schedule", "optax.Updates",
                               "optax.Params", "optax.OptState", "jax.sharding.Mesh")},
    "counters.CommBits": "compopt.CommBits",
    "cbase.Compressor": "compopt.compressors.Compressor",
}
autodoc_default_options = {
    "exclude-members": "__init__, __new__",
}
# Long signatures (keyword-only arguments with types) one parameter a line.
python_maximum_signature_line_length = 88

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True

# The API pages list their own tables; no generated stub pages.
autosummary_generate = False

# -- HTML ----------------------------------------------------------------------

html_theme = "sphinx_book_theme"
html_title = f"compopt {release}"
html_static_path = []
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
    "use_download_button": False,
    "use_fullscreen_button": False,
    # One search field, in the sidebar (not a second one in a header bar).
    "navbar_persistent": [],
}
pygments_style = "default"


# -- NamedTuple fields ----------------------------------------------------------
#
# compopt's states are NamedTuples whose fields are explained by a comment on
# (or above) the field's line. Python gives every field the docstring "Alias
# for field number N"; show the comment instead.

_ALIAS = re.compile(r"Alias for field number \d+$")


def _field_comments(cls) -> dict:
  """{field: its comment} for the annotated fields of a class body."""
  try:
    source = textwrap.dedent(inspect.getsource(cls))
  except (OSError, TypeError):
    return {}
  lines = source.splitlines()
  comments = {}
  for node in ast.parse(source).body[0].body:
    if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
      continue
    text = []
    above = node.lineno - 2
    while above >= 0 and lines[above].strip().startswith("#"):
      text.insert(0, lines[above].strip().lstrip("#").strip())
      above -= 1
    after = lines[node.end_lineno - 1][node.end_col_offset:].strip()
    if after.startswith("#"):
      text.append(after.lstrip("#").strip())
    # `name` in a comment is code: a literal in reStructuredText.
    comments[node.target.id] = re.sub(r"(?<!`)`([^`]+)`(?!`)", r"``\1``", " ".join(text))
  return comments


def _namedtuple_field_doc(app, what, name, obj, options, lines):
  del app, what, obj, options
  if len(lines) > 2 or not lines or not _ALIAS.match(lines[0]):
    return
  owner_name, _, field = name.rpartition(".")
  module_name, _, attr_path = owner_name.partition(".")
  try:
    owner = functools.reduce(getattr, attr_path.split("."), importlib.import_module(module_name))
  except (ImportError, AttributeError):
    return
  comment = _field_comments(owner).get(field, "")
  lines[:] = [comment] if comment else []


# -- autosummary: the whole first paragraph --------------------------------------
#
# autosummary cuts a summary at the first ". ", which in compopt's docstrings
# is often an abbreviation ("Horváth & Richtárik 2021, Alg. 1."). The tables
# show the docstring's first paragraph instead.


def _first_paragraph(doc, document):
  del document
  lines = []
  for line in doc:
    if not line.strip():
      if lines:
        break
      continue
    lines.append(line.strip())
  summary = " ".join(lines)
  return summary[:-1] if summary.endswith("::") else summary


autosummary.extract_summary = _first_paragraph


# -- public names for private paths ----------------------------------------------
#
# Annotations that autodoc cannot map through autodoc_type_aliases (class
# signatures of NamedTuples, napoleon's attribute types) keep the module
# paths they were written with; show the names a user imports.

_PRIVATE_PATHS = [
    (re.compile(r"~?\bcompopt\._src\.(?:\w+\.)*(?=[A-Z])"), ""),
    (re.compile(r"\b(?:counters|cbase|schemes|sampling_lib)\.(?=[A-Z])"), ""),
    (re.compile(r"\bjax\._src\.mesh\.Mesh\b"), "jax.sharding.Mesh"),
]


def _public(text):
  for pattern, replacement in _PRIVATE_PATHS:
    text = pattern.sub(replacement, text)
  return text


def _public_signature(app, what, name, obj, options, signature, return_annotation):
  del app, what, name, obj, options
  return (None if signature is None else _public(signature),
          None if return_annotation is None else _public(return_annotation))


def _public_docstring(app, what, name, obj, options, lines):
  del app, what, name, obj, options
  lines[:] = [_public(line) for line in lines]


def _public_xrefs(app, doctree):
  """Cross-references written with a private path (an attribute's type)."""
  del app
  for node in doctree.findall(addnodes.pending_xref):
    target = node.get("reftarget", "")
    if _public(target) == target:
      continue
    node["reftarget"] = _public(target)
    for text in list(node.findall(nodes.Text)):
      text.parent.replace(text, nodes.Text(_public(str(text))))


def setup(app):
  app.connect("doctree-read", _public_xrefs)
  app.connect("autodoc-process-docstring", _namedtuple_field_doc)
  app.connect("autodoc-process-docstring", _public_docstring)
  app.connect("autodoc-process-signature", _public_signature)

"""The optimizer of a run: a compopt method and compressor chosen by config,
chained with the usual optax pieces (weight decay, schedule, momentum).

``config.method`` names a compopt method (any public function of ``compopt``
whose first argument is the learning rate: ``psgd``, ``dcsgd``, ``ef_sgd``,
``diana``, ``comp_ams``, ``neolithic`` ...); ``config.compressor`` is a compressor
expression over ``compopt.compressors``, e.g. ``"top_k(ratio=0.05)"`` or
``"induced(top_k(ratio=0.025), rand_k_wangni(ratio=0.025))"``;
``config.method_kwargs`` holds the method's other arguments (``alpha``,
``rounds``, ``b1`` ...). ``PRESETS`` are the named setups the main command
compares.
"""

from __future__ import annotations

import ast
import inspect

import optax

import compopt
from compopt import compressors as cc


def _is_method(name: str) -> bool:
  fn = getattr(compopt, name)
  if not inspect.isfunction(fn):
    return False
  params = list(inspect.signature(fn).parameters)
  return bool(params) and params[0] == "learning_rate"


# compopt's methods, read off its public API rather than listed again here.
METHODS = tuple(sorted(name for name in compopt.__all__ if _is_method(name)))

# Named setups: each is a partial config (label, method, compressor, step size).
# K = 5% of the coordinates for the sparsifiers, as in
# Horváth & Richtárik 2021, §5. Methods with a momentum argument (P-SGD, DCSGD)
# use heavy ball 0.9 (Horváth & Richtárik 2021, §5.4) and step 0.1; the others
# plain steps of 0.5 (from that paper's grid 1, 0.5, 0.1); COMP-AMS Adam-like
# 1e-3.
PRESETS = {
    "psgd": dict(label="P-SGD", method="psgd", compressor="", learning_rate=0.1,
                 momentum=0.9),
    "dcsgd_induced": dict(label="DCSGD induced(top-2.5%, Wangni-2.5%)", method="dcsgd",
                          compressor="induced(top_k(ratio=0.025), rand_k_wangni(ratio=0.025))",
                          learning_rate=0.1, momentum=0.9),
    "ef_topk": dict(label="EF-SGD top-5%", method="ef_sgd", compressor="top_k(ratio=0.05)",
                    learning_rate=0.5, momentum=0.0),
    "diana": dict(label="DIANA natural", method="diana", compressor="natural()",
                  learning_rate=0.5, momentum=0.0),
    "comp_ams": dict(label="COMP-AMS top-1%", method="comp_ams",
                     compressor="top_k(ratio=0.01)", learning_rate=1e-3, momentum=0.0),
    "neolithic": dict(label="NEOLITHIC top-5%, R=2", method="neolithic",
                      compressor="top_k(ratio=0.05)", learning_rate=0.5, momentum=0.0,
                      method_kwargs={"rounds": 2}),
    "ef_scaled_sign": dict(label="EF scaled-sign", method="ef_sgd",
                           compressor="scaled_sign()", learning_rate=0.1, momentum=0.0),
}


def compressor_factories() -> dict:
  """The public factories of ``compopt.compressors`` by name (its lower-case
  callables but the ``tree_*`` constants): what ``config.compressor`` may call."""
  return {k: getattr(cc, k) for k in sorted(cc.__all__)
          if k[:1].islower() and not k.startswith("tree_") and callable(getattr(cc, k))}


_LITERALS = (ast.Constant, ast.UnaryOp, ast.Tuple, ast.List)


def _value(node, factories, expr):
  """The value of one node of a compressor expression: a call of a factory,
  or a literal. Nothing else is evaluated (no names, attributes, operators
  or subscripts), so a config string cannot run code."""
  if isinstance(node, ast.Call):
    if not isinstance(node.func, ast.Name) or node.func.id not in factories:
      what = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
      raise ValueError(f"config.compressor={expr!r}: {what!r} is not a factory of "
                       f"compopt.compressors; choose from {', '.join(factories)}")
    args = [_value(a, factories, expr) for a in node.args]
    kwargs = {}
    for kw in node.keywords:
      if kw.arg is None:
        raise ValueError(f"config.compressor={expr!r}: ** arguments are not allowed")
      kwargs[kw.arg] = _value(kw.value, factories, expr)
    return factories[node.func.id](*args, **kwargs)
  if isinstance(node, _LITERALS):
    try:
      return ast.literal_eval(node)
    except ValueError:
      pass
  raise ValueError(f"config.compressor={expr!r}: {ast.unparse(node)!r} is neither a call of a "
                   "compopt.compressors factory nor a literal (numbers, strings, True/False/"
                   "None, tuples and lists of them)")


def make_compressor(expr: str):
  """A compressor from an expression over ``compopt.compressors``: a factory
  call whose arguments are literals or factory calls, e.g.
  ``"induced(top_k(ratio=0.025), rand_k_wangni(ratio=0.025))"``.

  The string is parsed, never evaluated: only the factories of
  ``compopt.compressors`` can be called.
  """
  if not expr:
    return None
  factories = compressor_factories()
  try:
    tree = ast.parse(expr.strip(), mode="eval")
  except SyntaxError as e:
    raise ValueError(f"config.compressor={expr!r} is not an expression ({e.msg}); e.g. "
                     "'top_k(ratio=0.05)'") from e
  if not isinstance(tree.body, ast.Call):
    raise ValueError(f"config.compressor={expr!r} must call a factory of compopt.compressors, "
                     "e.g. 'top_k(ratio=0.05)' or 'natural()'")
  try:
    c = _value(tree.body, factories, expr)
  except (TypeError, ValueError) as e:
    if str(e).startswith("config.compressor="):
      raise
    raise ValueError(f"config.compressor={expr!r}: {type(e).__name__}: {e}") from e
  if not isinstance(c, compopt.Compressor):
    raise ValueError(f"config.compressor={expr!r} gives {c!r}, not a compopt compressor")
  return c


def listing() -> str:
  """What the command line can name: methods, compressor factories and presets."""
  lines = ["methods (--config.method):"]
  lines += [f"  {m}" for m in METHODS]
  lines.append("compressors (--config.compressor, a call such as 'top_k(ratio=0.05)'):")
  for name, fn in compressor_factories().items():
    lines.append(f"  {name}{inspect.signature(fn)}")
  lines.append("presets (--config.methods, a tuple of these names):")
  lines += [f"  {k}: {v['label']}" for k, v in PRESETS.items()]
  return "\n".join(lines)


def make_schedule(config):
  """Step size schedule: constant, cosine or step decay, with linear warmup."""
  lr, steps, warmup = config.learning_rate, config.num_steps, config.get("warmup_steps", 0)
  kind = config.get("schedule", "constant")
  if kind == "constant":
    sched = optax.constant_schedule(lr)
  elif kind == "cosine":
    sched = optax.cosine_decay_schedule(lr, max(steps - warmup, 1))
  elif kind == "step":
    sched = optax.piecewise_constant_schedule(
        lr, {int(steps * 0.5) - warmup: 0.1, int(steps * 0.75) - warmup: 0.1})
  else:
    raise ValueError(f"unknown config.schedule {kind!r}; choose constant, cosine or step")
  if warmup:
    sched = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), sched], [warmup])
  return sched


def make_optimizer(config, axis_name: str | None) -> optax.GradientTransformation:
  """Per-worker optimizer: weight decay on the local gradient, then the
  compressed method (which averages over ``axis_name``), momentum and the
  schedule."""
  name = config.method
  if name not in METHODS:
    raise ValueError(f"unknown config.method {name!r}; choose one of {', '.join(METHODS)}")
  fn = getattr(compopt, name)
  params = inspect.signature(fn).parameters
  kwargs = dict(config.get("method_kwargs", {}) or {})
  compressor = make_compressor(config.get("compressor", ""))
  if "compressor" in params:
    if compressor is None:
      raise ValueError(f"method {name!r} needs config.compressor (e.g. 'top_k(ratio=0.05)')")
    kwargs["compressor"] = compressor
  elif compressor is not None:
    raise ValueError(f"method {name!r} takes no compressor; set config.compressor=''")
  if "key" in params:
    kwargs["key"] = config.seed + 17
  momentum = config.get("momentum", 0.0) or 0.0
  extra_momentum = None
  if momentum:
    if "momentum" in params:
      kwargs["momentum"] = momentum
    else:  # heavy ball on the method's update, after the step size
      extra_momentum = momentum
  opt = fn(make_schedule(config), axis_name=axis_name, **kwargs)
  parts = []
  if config.get("weight_decay", 0.0):
    parts.append(optax.add_decayed_weights(config.weight_decay))
  parts.append(opt)
  if extra_momentum:
    parts.append(optax.trace(decay=extra_momentum))
  tx = optax.chain(*parts) if len(parts) > 1 else opt
  if name == "neolithic":
    # Alg. 2 averages R minibatch gradients per compressed step: one exchange
    # per window, a worker's non-finite minibatch left out of its mean.
    tx = compopt.accumulate(tx, every_k=int(kwargs["rounds"]), axis_name=axis_name)
  return tx

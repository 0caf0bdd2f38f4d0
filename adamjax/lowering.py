r"""Chains of known primitives, run as one fused native kernel where that is the same.

The chain is the specification; a kernel is one way to run it. :func:`chain` composes
transformations like ``optax.chain`` and, when its parts are exactly the primitives of a
pattern it knows, returns a transformation with the same ``init`` and state that owns the
fused apply of :func:`adamjax.apply_gradients` (the native CPU kernel, :mod:`adamjax.native`,
updating the parameters in place) and, with ``implementation="native"``, whose ``update``
runs the kernel's update form. The patterns (Kingma & Ba, ICLR 2015, Algorithms 1 and 2)::

    Adam:    scale_by_moments    -> [bias_correct] -> precondition -> scale_by_lr
    AdaMax:  scale_by_inf_moment -> [bias_correct] -> precondition -> scale_by_lr
    AdamW:   scale_by_moments    -> [bias_correct] -> precondition
                                 -> add_decayed_weights -> scale_by_lr

per element, with :math:`t` the step and :math:`c_i = 1 - \beta_i^t` (1 without
``bias_correct``):

.. math::
    m_t = \beta_1 m + (1-\beta_1) g,\quad v_t = \beta_2 v + (1-\beta_2) g^2
    \ (\text{AdaMax: } u_t = \max(\beta_2 u, |g|)),\quad
    u = -\alpha_t \frac{m_t / c_1}{\sqrt{v_t / c_2} + \epsilon}
    \ (\text{AdaMax: } -\alpha_t \frac{m_t / c_1}{u_t + \epsilon};
    \ \text{AdamW: } -\alpha_t (\frac{m_t / c_1}{\sqrt{v_t / c_2} + \epsilon}
    + \lambda_t \theta))

(AdamW: Loshchilov & Hutter, ICLR 2019, Algorithm 2, with :math:`\eta_t = \alpha_t`.)

The kernel runs when (:func:`kernel_gate` decides, for an alias and a chain by hand alike),
at trace time: ``implementation`` is not ``"jax"``; the default
backend is the CPU with a single CPU device (XLA's SPMD partitioner would replicate a
custom call over a mesh) and 64-bit mode is off; the configuration is one the kernel has
(``eps_root`` the number 0, a first moment stored, moments stored as float32 or
bfloat16, or both as ``"int8"``; any ``b1_decay``, folded into the step's ``b1_t``;
AdamW's ``weight_decay`` a number, a float32 scalar array or a schedule, and its mask's
leaves Python booleans, the leaves masked out running Adam's kernel; AdamW with 8-bit
moments runs the chain); every gradient leaf is float32 (params too, for the fused apply)
with float32/bfloat16 moments or 8-bit blocks (:class:`adamjax.quantize.QuantizedArray`,
the 8-bit kernel; small float32 leaves of the same tree go to the float kernel);
array hyperparameters are float32 scalars (a boolean for ``enabled``); and the library
loaded and passed its self-test (for 8-bit moments also a one-time comparison with the
XLA-compiled chain, :func:`_quantized_kernel_check`). Otherwise the chain runs as
written. Its outputs are those of the XLA-compiled chain bit for bit (tests/native,
tests/test_fast_paths.py, tests/test_fast_paths_int8.py).

It stays differentiable: the kernel is wrapped in ``jax.custom_jvp`` whose rule is the
JVP of the pure chain, with every hyperparameter an explicit argument, so ``jax.grad``
and ``jax.jvp`` through ``update`` (w.r.t. the gradients, the state or e.g. a traced
learning rate) give the chain's derivatives. Under ``jax.vmap`` over hyperparameters the
kernel takes one row of hyperparameters per configuration.
"""

from __future__ import annotations

import numbers
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.custom_derivatives import SymbolicZero

from adamjax import _validate, native, quantize
from adamjax._tree import mask_tree
from adamjax.base import GradientTransformationExtraArgs, apply_updates, safe_increment
from adamjax.bias import bias_correct
from adamjax.lr import scale_by_lr
from adamjax.moments import scale_by_moments
from adamjax.native import Hyper
from adamjax.precondition import precondition
from adamjax.spec import Spec, spec_of
from adamjax.step import FusedTransformation, apply_gradients

__all__ = ["Verdict", "chain", "kernel_gate"]

_IMPLEMENTATIONS = ("auto", "jax", "native")
_F32 = jnp.dtype(jnp.float32)
_STATE_DTYPES = (_F32, jnp.dtype(jnp.bfloat16))
_ALGO = {"scale_by_moments": "adam", "scale_by_inf_moment": "adamax"}


def chain(*transforms: Any, implementation: str = "auto") -> GradientTransformationExtraArgs:
    r"""Compose transformations left to right, like :func:`optax.chain` (same state).

    ``adamjax.adam`` is ``chain(scale_by_moments, bias_correct, precondition,
    scale_by_lr)``. When the parts are exactly such a chain of adamjax primitives (Adam's,
    AdaMax's or AdamW's, with or without ``bias_correct``), the result is lowered: it owns the
    kernel's fused apply (:func:`adamjax.apply_gradients`), and with
    ``implementation="native"`` its ``update`` runs the kernel too, where the module
    docstring says it can, with the same results bit for bit.

    Args:
      *transforms: the transformations, applied in order.
      implementation: ``"auto"`` (``apply_gradients`` runs the kernel where it applies;
        ``update`` runs the chain, which XLA fuses with the caller's ``apply_updates``,
        except with 8-bit moments, where ``update`` runs the kernel too),
        ``"jax"`` (always the chain as written: exactly ``optax.chain``) or ``"native"``
        (``update`` and ``apply_gradients`` both run the kernel; raises a ``ValueError`` at
        construction if the chain is not one it runs, and a ``TypeError``/``RuntimeError``
        at trace time for unsupported arrays or an unavailable library).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` (a
      :class:`adamjax.step.FusedTransformation` when lowered).

    Examples:
      Algorithm 1 written out, one primitive per line; its first step is
      :math:`-\alpha\,\mathrm{sign}(g)`:

      >>> import jax.numpy as jnp
      >>> import adamjax
      >>> by_hand = adamjax.chain(
      ...     adamjax.scale_by_moments(0.9, 0.999),
      ...     adamjax.bias_correct(),
      ...     adamjax.precondition(1e-8),
      ...     adamjax.scale_by_lr(0.1),
      ... )
      >>> g = jnp.array([0.5, -2.0])
      >>> updates, _ = by_hand.update(g, by_hand.init(g))
      >>> bool(jnp.allclose(updates, -0.1 * jnp.sign(g), rtol=1e-5))
      True

      A composition that cannot work fails when it is traced, and says what to do:

      >>> bad = adamjax.chain(adamjax.precondition(1e-8), adamjax.scale_by_lr(0.1))
      >>> bad.update(g, bad.init(g))
      Traceback (most recent call last):
      ...
      adamjax.base.CompositionError: precondition expected the Moments ... before precondition.
    """
    if implementation not in _IMPLEMENTATIONS:
        raise ValueError(
            f"chain: implementation must be one of {_IMPLEMENTATIONS}, got {implementation!r}."
        )
    pure = optax.chain(*transforms)
    if implementation == "jax":
        return pure
    verdict = kernel_gate(transforms, implementation=implementation)
    if verdict.plan is None:
        if implementation == "native" and verdict.error is not None:
            raise verdict.error
        return pure
    return _lowered(transforms, pure, implementation == "native")


# ----------------------------------------------------------------------------------------
# The gate: the one place that decides whether the kernel runs a chain, and a step of it.


@dataclass(frozen=True)
class Verdict:
    """The answer of :func:`kernel_gate`.

    Attributes:
      plan: the recognised chain (its algorithm and its parts' specs), or None when the
        chain is not one the kernel has.
      why: None when the kernel runs it; else why not, in words.
      error: what ``implementation="native"`` raises instead of running the chain (None
        when "native" runs the chain too: nothing for the kernel to do, or the chain
        itself reports what is missing).
      step: for a step that the kernel runs, its leaves and scalars (internal).
    """

    plan: _Plan | None
    why: str | None = None
    error: Exception | None = None
    step: _Step | None = None

    @property
    def runs(self) -> bool:
        """Whether the kernel runs it."""
        return self.why is None


@dataclass(frozen=True)
class _Step:
    """One step's inputs as the kernel takes them (lists of leaves) and its scalars."""

    treedef: Any
    g: list
    mu: list
    nu: list
    p: list | None
    values: dict[str, Any]
    flags: tuple[bool, ...] | None
    new_lr_state: Any
    new_wd_state: tuple


def kernel_gate(
    transforms: Any,
    grads: Any = None,
    state: Any = None,
    params: Any = None,
    *,
    mode: str = "apply",
    implementation: str = "auto",
) -> Verdict:
    """Whether the native kernel runs this chain (with these leaves), and if not, why.

    The one place where the rules of the module docstring are decided: :func:`chain` (and
    so every alias built on it) asks it when it is built, and its lowered ``update`` and
    fused apply ask it again at trace time, with the step's arrays.

    Args:
      transforms: the chain's parts, as given to :func:`chain`.
      grads, state, params: a step's gradients, the chain's state and the parameters (or
        None). Without ``grads`` the answer is about the chain alone (its parts, their
        hyperparameters as given and the moments' storage); with them, also about this
        process (the CPU backend, one CPU device, 64-bit mode off, the library loaded and
        checked) and the step's leaves and array hyperparameters.
      mode: ``"apply"`` (the fused apply of :func:`adamjax.apply_gradients`, which reads
        the parameters) or ``"update"``.
      implementation: ``"native"`` asks for the kernel's call on any backend (it lowers to
        the chain off the CPU); ``"auto"`` for the kernel on the CPU only.

    Returns:
      A :class:`Verdict`: ``runs`` True, or ``why`` not and the error
      ``implementation="native"`` raises.

    Examples:
      >>> import jax.numpy as jnp
      >>> import adamjax
      >>> from adamjax.lowering import kernel_gate
      >>> parts = [adamjax.scale_by_moments(0.9, 0.999, mu_dtype=jnp.bfloat16),
      ...          adamjax.bias_correct(), adamjax.precondition(1e-8, eps_root=1e-8),
      ...          adamjax.scale_by_lr(1e-3)]
      >>> kernel_gate(parts).why
      'eps_root=1e-08 (the kernel has no epsilon inside the root)'
    """
    plan, why = _match(tuple(transforms))
    if plan is None:
        message = f"implementation='native' cannot run this chain: {why}. Use 'auto' to run "
        return Verdict(None, why, ValueError(message + "it as written."))
    if grads is None:
        return Verdict(plan)
    force = implementation == "native"
    if not force and jax.default_backend() != "cpu":
        return Verdict(plan, f"the default backend is {jax.default_backend()}, not the CPU", None)
    if jnp.result_type(float) == jnp.float64:  # the chain would compute some terms in f64
        x64 = ValueError("implementation='native' needs 64-bit mode (jax_enable_x64) off.")
        return Verdict(plan, "64-bit mode (jax_enable_x64) is on", x64)
    ms = state[0]
    _validate.check_gradients(
        plan.algo,
        grads,
        params,
        state={
            "the optimizer state's first moment m": ms.mu,
            "the optimizer state's second moment v": ms.nu,
        },
    )
    reads_params = mode == "apply" or plan.decay is not None
    if reads_params and params is None:
        return Verdict(plan, "the parameters (not given)", None)  # the chain says so
    g, flat_def = jax.tree.flatten(grads)
    treedef: Any = flat_def
    mu, nu = treedef.flatten_up_to(ms.mu), treedef.flatten_up_to(ms.nu)
    p = treedef.flatten_up_to(params) if reads_params else None
    lr, new_lr_state = _scheduled(plan.lr.hyper["learning_rate"], state[-1])
    flags: tuple[bool, ...] | None = None
    new_wd_state: tuple = ()
    why_not: tuple[str, type[Exception]] | None = None
    if plan.decay is None:
        values = plan.values(lr)
    else:
        wd, wd_state = _scheduled(plan.decay.hyper["weight_decay"], state[-2])
        new_wd_state = (wd_state,)
        values = plan.values(lr, wd)
        flags, why_mask = _decay_flags(plan.decay.options["mask"], params, treedef)
        why_not = None if why_mask is None else (why_mask, TypeError)
    why_not = why_not or _why_not_here(plan, values, g, mu, nu, p)
    if why_not is None and sum(jnp.size(x) for x in g) == 0:
        return Verdict(plan, "no elements to compute", None)
    if why_not is not None:
        text, kind = why_not
        return Verdict(plan, f"needs {text}", kind(f"implementation='native' needs {text}."))
    if not native.ready():
        reason = native.native_info()["reason"]
        error = RuntimeError(
            f"implementation='native' but the native kernel is unavailable: {reason}"
        )
        return Verdict(plan, f"the native kernel is unavailable: {reason}", error)
    if plan.int8 and any(isinstance(m, quantize.QuantizedArray) for m in mu):
        why_8bit = _quantized_kernel_check()
        if why_8bit is not None:
            error = RuntimeError(f"implementation='native': the 8-bit kernel {why_8bit}")
            return Verdict(plan, f"the 8-bit kernel {why_8bit}", error)
    step = _Step(treedef, g, mu, nu, p, values, flags, new_lr_state, new_wd_state)
    return Verdict(plan, step=step)


# ----------------------------------------------------------------------------------------
# Recognising a chain.


def _is_number(x: Any, value: float) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and float(x) == value


@dataclass(frozen=True)
class _Plan:
    """A recognised chain: its algorithm and the specs of its parts."""

    algo: str  # "adam", "adamax" or "adamw"
    int8: bool  # moments stored as 8-bit blocks (adamjax.quantize)
    moments: Spec
    bias: Spec | None
    precondition: Spec
    lr: Spec
    decay: Spec | None = None  # add_decayed_weights (AdamW)

    def values(self, lr: Any, wd: Any = None) -> dict[str, Any]:
        """The hyperparameters as given, with the learning rate (and, for AdamW, the weight
        decay) of this step."""
        bias = self.bias.hyper if self.bias is not None else {}
        decay = {} if self.decay is None else {"wd": wd}
        return {
            **decay,
            "b1": self.moments.hyper["b1"],
            "b2": self.moments.hyper["b2"],
            "b1_decay": self.moments.hyper.get("b1_decay", 1.0),
            "cb1": bias.get("b1"),  # None: the estimator's rate
            "cb2": bias.get("b2"),
            "enabled": bias.get("enabled", True),
            "eps": self.precondition.hyper["eps"],
            "lr": lr,
        }

    def pure(self, v: dict[str, Any], mask: Any = None) -> optax.GradientTransformation:
        """The chain rebuilt from its primitives with the hyperparameters ``v``; AdamW's
        decay with ``mask`` (``False``: the chain without it, i.e. Adam's)."""
        rates = {"b1": v["b1"], "b2": v["b2"]}
        if "b1_decay" in self.moments.hyper:
            rates["b1_decay"] = v["b1_decay"]
        parts = [self.moments.rebuild(**rates)]
        if self.bias is not None:
            parts.append(self.bias.rebuild(b1=v["cb1"], b2=v["cb2"], enabled=v["enabled"]))
        parts.append(self.precondition.rebuild(eps=v["eps"]))
        if self.decay is not None and mask is not False:
            parts.append(self.decay.build(weight_decay=v["wd"], mask=mask))
        parts.append(self.lr.rebuild(learning_rate=v["lr"]))
        return optax.chain(*parts)


def _match(transforms: tuple) -> tuple[_Plan | None, str]:
    """The plan of a chain the kernel runs, or ``(None, why not)``."""
    specs = [spec_of(t) for t in transforms]
    if not specs or any(s is None for s in specs):
        return None, "its parts are not all adamjax primitives"
    names = [s.name for s in specs if s is not None]
    shape = [n for n in names if n != "bias_correct"]
    algo = _ALGO.get(names[0])
    if algo == "adam" and shape[1:] == ["precondition", "add_decayed_weights", "scale_by_lr"]:
        algo = "adamw"
    elif shape[1:] != ["precondition", "scale_by_lr"]:
        algo = None
    if algo is None or len(names) != len(shape) + (names[1] == "bias_correct"):
        return None, f"{' -> '.join(names)} is not a chain the kernel knows"
    bias = specs[1] if names[1] == "bias_correct" else None
    decay = specs[-2] if algo == "adamw" else None
    moments, precond, lr = specs[0], specs[names.index("precondition")], specs[-1]
    assert moments is not None and precond is not None and lr is not None
    m = moments.hyper
    if _is_number(m["b1"], 0.0) and _is_number(m.get("b1_decay", 1.0), 1.0):
        return None, "b1=0 (no first moment is stored)"
    stored = {k: moments.options.get(k) for k in ("mu_dtype", "nu_dtype")}
    int8 = [quantize.is_int8(sd) for sd in stored.values()]
    if any(int8) and not all(int8):
        return None, f"{stored} (8-bit storage of one moment only)"
    for key, sd in stored.items():
        if sd is not None and not quantize.is_int8(sd) and jnp.dtype(sd) not in _STATE_DTYPES:
            return None, f"{key}={sd!r} (the kernel stores float32, bfloat16 or 'int8')"
    if not _is_number(precond.hyper.get("eps_root", 0.0), 0.0):
        eps_root = precond.hyper["eps_root"]
        return None, f"eps_root={eps_root!r} (the kernel has no epsilon inside the root)"
    if all(int8) and algo == "adamw":
        return None, "AdamW with 8-bit moments (the 8-bit kernel has no weight decay term)"
    return _Plan(algo, all(int8), moments, bias, precond, lr, decay), ""


# ----------------------------------------------------------------------------------------
# The lowered transformation.


def _lowered(transforms: tuple, pure: Any, force: bool) -> FusedTransformation:
    # ``update`` runs the kernel's update form only when asked (``"native"``): it has to
    # write the update to a buffer of its own, which XLA:CPU allocates afresh every step,
    # while the chain fuses with the caller's apply_updates into one pass without it.
    # Measured (one donated jitted step of update + optax.apply_updates, 10M and 50M
    # float32 params): 0.67x and 0.70x Optax's speed with the kernel's update form, against
    # 1.19x and 0.88x with the chain (docs/fast-paths.md). The fused apply has no such
    # buffer (28 bytes per parameter, in place) and is taken wherever it runs.
    # With 8-bit moments the kernel's update form is taken under "auto" too: it moves 12
    # bytes per parameter, where the XLA-compiled chain decodes and encodes the blocks
    # through long select chains many times slower (docs/fast-paths.md).
    def fused_apply(grads, state, params):
        return _maybe_native("apply", transforms, force, grads, state, params)

    plan = kernel_gate(transforms).plan
    assert plan is not None
    if not (force or plan.int8):
        return FusedTransformation(pure.init, pure.update, fused_apply)

    def update(updates, state, params=None, **extra_args):
        out = _maybe_native("update", transforms, force, updates, state, params)
        if out is None:
            return pure.update(updates, state, params, **extra_args)
        return out

    update.__doc__ = pure.update.__doc__
    return FusedTransformation(pure.init, update, fused_apply)


def _dynamic_ok(name: str, x: Any) -> bool:
    dtype = jnp.bool_ if name == "enabled" else _F32
    return jnp.shape(x) == () and jnp.result_type(x) == dtype


def _why_not_here(plan, values, g, mu, nu, p) -> tuple[str, type[Exception]] | None:
    """Why the kernel cannot run this step (and the error ``native`` raises), or None."""
    if len(jax.devices("cpu")) > 1:
        return "several CPU devices (a mesh would replicate the kernel call)", ValueError
    leaves = list(zip(g, mu, nu, p if p is not None else [None] * len(g), strict=True))
    for grad, m, v, param in leaves:
        if not _supported(grad, m, v, param):
            arrays = ", ".join(f"{jnp.result_type(a)}{list(jnp.shape(a))}" for a in (grad, m, v))
            return (
                "float32 gradients and parameters and float32 or bfloat16 moments of one "
                f"shape in every leaf (got {arrays})",
                TypeError,
            )
    for name, x in values.items():
        if isinstance(x, jax.Array) and not _dynamic_ok(name, x):
            return f"{name} must be a float32 scalar (got {jax.typeof(x)})", TypeError
    return None


def _supported(g, m, v, p) -> bool:
    shape = jnp.shape(g)
    if jnp.result_type(g) != _F32:
        return False
    if p is not None and (jnp.result_type(p) != _F32 or jnp.shape(p) != shape):
        return False
    if isinstance(m, quantize.QuantizedArray) or isinstance(v, quantize.QuantizedArray):
        return all(_quantized_like(s, shape) for s in (m, v)) and m.signed and not v.signed
    return all(jnp.result_type(s) in _STATE_DTYPES and jnp.shape(s) == shape for s in (m, v))


def _quantized_like(s: Any, shape: tuple) -> bool:
    """Whether ``s`` is the 8-bit form of an array of ``shape`` (as adamjax.quantize writes)."""
    if not isinstance(s, quantize.QuantizedArray) or tuple(s.shape) != tuple(shape):
        return False
    nb = quantize.n_blocks(s.size)
    return (
        jnp.shape(s.codes) == (nb, quantize.BLOCK_SIZE)
        and jnp.shape(s.scales) == (nb,)
        and jnp.result_type(s.codes) == jnp.uint8
        and jnp.result_type(s.scales) == _F32
    )


def _maybe_native(mode: str, transforms: tuple, force: bool, grads, state, params):
    """The step (``update``'s or the fused apply's result) from the kernel, or None when
    :func:`kernel_gate` says it does not run here (``force``: raise its error instead)."""
    impl = "native" if force else "auto"
    verdict = kernel_gate(transforms, grads, state, params, mode=mode, implementation=impl)
    if not verdict.runs:
        if force and verdict.error is not None:
            raise verdict.error
        return None
    plan, st = verdict.plan, verdict.step
    assert plan is not None and st is not None
    ms = state[0]
    static = {k: x for k, x in st.values.items() if not isinstance(x, jax.Array)}
    dynamic = {k: x for k, x in st.values.items() if isinstance(x, jax.Array)}
    step = _custom_step(mode, plan, static, st.flags)
    first, new_mu, new_nu = step(dynamic, st.p or [], st.g, st.mu, st.nu, ms.count)
    new_ms = ms._replace(
        count=safe_increment(ms.count),
        mu=st.treedef.unflatten(new_mu),
        nu=st.treedef.unflatten(new_nu),
    )
    kept = state[1 : len(state) - 1 - len(st.new_wd_state)]
    new_state = type(state)((new_ms, *kept, *st.new_wd_state, st.new_lr_state))
    return st.treedef.unflatten(first), new_state


def _scheduled(value: Any, state: Any) -> tuple[Any, Any]:
    """A hyperparameter's value at this step and its primitive's next state: a schedule is
    called with the state's count (which then advances), as scale_by_lr and
    add_decayed_weights do."""
    if callable(value) and not hasattr(value, "dtype"):
        return value(state.count), state._replace(count=safe_increment(state.count))
    return value, state


def _decay_flags(mask: Any, params: Any, treedef: Any) -> tuple[Any, str | None]:
    """Which leaves AdamW decays, as Python booleans (``None`` and why when the mask's
    leaves are not static booleans: the chain then runs as written)."""
    if mask is None:
        return (True,) * treedef.num_leaves, None
    try:
        leaves = treedef.flatten_up_to(mask_tree(mask, params))
    except ValueError:  # the chain raises its own error about the mask
        return None, "a mask with the structure of the parameters"
    flags = []
    for x in leaves:
        static_bool = isinstance(x, (bool, np.bool_)) or (
            isinstance(x, np.ndarray) and x.shape == () and x.dtype == np.bool_
        )
        if not static_bool:
            return None, f"a mask of Python booleans (got a leaf {type(x).__name__})"
        flags.append(bool(x))
    return tuple(flags), None


# ----------------------------------------------------------------------------------------
# The kernel call, with the pure chain as its fallback and derivative.


def _correction(beta: Any, count: jax.Array, enabled: Any) -> jax.Array:
    """``1 - beta**t`` in float32 (the expression of adamjax.bias_correct), or 1 where
    correction is off."""
    t = count.astype(jnp.float32)
    c = 1 - beta**t
    if enabled is True:
        return c
    return jnp.where(enabled, c, jnp.ones_like(c))


def _hyper(plan: _Plan, v: dict[str, Any], old_count: jax.Array):
    """The kernel's scalars, computed with the chain's own expressions so that they are
    the same bits (XLA turns the chain's ``m / c`` into ``m * (1 / c)``); AdamW's hold the
    weight decay too."""
    count = safe_increment(old_count)
    one = jnp.ones([], jnp.float32)
    inv_c1 = inv_c2 = one
    if plan.bias is not None:
        which = plan.bias.options  # bias_correct(mu=..., nu=...): both when absent
        cb1 = v["b1"] if v["cb1"] is None else v["cb1"]
        if which.get("mu", True):
            inv_c1 = 1 / _correction(cb1, count, v["enabled"])
        if plan.algo != "adamax" and which.get("nu", True):
            cb2 = v["b2"] if v["cb2"] is None else v["cb2"]
            inv_c2 = 1 / _correction(cb2, count, v["enabled"])
    b1, b2, decay = v["b1"], v["b2"], v["b1_decay"]
    # Sec. 4's b1_t = b1 * decay**(t-1), as scale_by_moments computes it; bias_correct
    # keeps the paper's 1 - b1**t.
    b1_t = b1 if _is_number(decay, 1.0) else b1 * decay ** (count - 1).astype(jnp.float32)
    wd = v["wd"] if plan.decay is not None else None
    return Hyper(-v["lr"], b1_t, 1 - b1_t, b2, 1 - b2, v["eps"], inv_c1, inv_c2, wd)


def _custom_step(mode: str, plan: _Plan, static: dict[str, Any], flags: Any) -> Callable:
    """``step(dynamic, p, g, mu, nu, count) -> (p or u, mu, nu)`` (lists of leaves): the
    kernel as primal, the pure chain's JVP as derivative, the pure chain off the CPU.

    ``flags``: AdamW's decayed leaves (Python booleans), or None for Adam and AdaMax. The
    decayed leaves run AdamW's kernel, the others Adam's (the chain leaves them untouched,
    where ``0 * p`` would turn an infinite parameter into NaN); ``p`` is read by both forms
    of AdamW's step.
    """

    def pure(dynamic, p, g, mu, nu, count, mask=None):
        # The chain on lists of leaves (elementwise, so the structure changes no bit).
        tx = plan.pure({**static, **dynamic}, mask=mask)
        st = tx.init(g)  # only its structure is used: XLA drops the zeros
        ms = st[0]._replace(count=count, mu=list(mu), nu=list(nu))
        u, new = tx.update(list(g), (ms, *st[1:]), list(p) if p else None)
        first = apply_updates(list(p), u) if mode == "apply" else u
        return list(first), list(new[0].mu), list(new[0].nu)

    def run(algo, hyper, dynamic, p, g, mu, nu, count, mask):
        reads_p = mode == "apply" or algo == "adamw"

        def fallback(leaves):
            cols = [list(c) for c in zip(*leaves, strict=True)]
            args = cols if reads_p else [[], *cols]
            return list(zip(*pure(dynamic, *args, count, mask=mask), strict=True))

        def group(idx):  # the leaves idx, as (p, g, m, v) or (g, m, v)
            cols = ([p[i] for i in idx],) if reads_p else ()
            return [*cols, *([x[i] for i in idx] for x in (g, mu, nu))]

        # 8-bit moments (QuantizedArray) go to the 8-bit kernel, the others (float32 or
        # bfloat16, e.g. leaves too small to quantize) to the float kernel.
        q8 = [i for i, m in enumerate(mu) if isinstance(m, quantize.QuantizedArray)]
        plain = [i for i in range(len(g)) if i not in set(q8)]
        outs: list = [None] * len(g)
        if plain:
            kernel = getattr(native, f"{algo}_{mode}")
            for i, out in zip(plain, kernel(*group(plain), hyper, fallback=fallback), strict=True):
                outs[i] = out
        if q8:
            got = _quantized(native, algo, mode, group(q8), hyper, fallback)
            for i, out in zip(q8, got, strict=True):
                outs[i] = out
        return outs

    @jax.custom_jvp
    def step(dynamic, p, g, mu, nu, count):
        hyper = _hyper(plan, {**static, **dynamic}, count)
        if flags is None:
            outs = run(plan.algo, hyper, dynamic, p, g, mu, nu, count, None)
        else:
            outs = [None] * len(g)
            for decayed in (True, False):
                idx = [i for i, f in enumerate(flags) if f is decayed]
                if not idx:
                    continue
                algo, h = (
                    ("adamw", hyper) if decayed else ("adam", hyper._replace(weight_decay=None))
                )
                pick = [[leaves[i] for i in idx] for leaves in (p, g, mu, nu)]
                if not decayed and mode == "update":
                    pick[0] = []
                res = run(algo, h, dynamic, *pick, count, None if decayed else False)
                for i, r in zip(idx, res, strict=True):
                    outs[i] = r
        return tuple(list(col) for col in zip(*outs, strict=True))

    mask_all = None if flags is None else list(flags)

    def step_jvp(primals, tangents):
        # Differentiate the pure chain w.r.t. the arguments with nonzero tangents only, so
        # that the program (and XLA's rounding) is the one JAX builds for the chain itself.
        flat_p, tree = jax.tree.flatten(primals)
        flat_t = tree.flatten_up_to(tangents)
        live = [i for i, t in enumerate(flat_t) if not isinstance(t, SymbolicZero)]

        def of_live(*xs):
            full = list(flat_p)
            for i, x in zip(live, xs, strict=True):
                full[i] = x
            return pure(*jax.tree.unflatten(tree, full), mask=mask_all)

        return jax.jvp(of_live, [flat_p[i] for i in live], [flat_t[i] for i in live])

    step.defjvp(step_jvp, symbolic_zeros=True)

    return step


def _quantized(native, algo: str, mode: str, cols: list, hyper, fallback) -> list:
    """The 8-bit kernel on leaves given as columns ``[p,] g, m, v`` (QuantizedArray m, v):
    ``[(p or u, m, v), ...]``."""
    *pg, mu, nu = cols
    leaves = [
        (*first, m.codes, m.scales, v.codes, v.scales)
        for *first, m, v in zip(*pg, mu, nu, strict=True)
    ]

    def raw_fallback(raw):
        # The chain on the raw leaves (codes and scales rebuilt into QuantizedArray).
        width = len(pg)
        back = []
        for leaf, m, v in zip(raw, mu, nu, strict=True):
            mc, ms, vc, vs = leaf[width:]
            back.append(
                (
                    *leaf[:width],
                    quantize.QuantizedArray(mc, ms, m.shape, m.signed),
                    quantize.QuantizedArray(vc, vs, v.shape, v.signed),
                )
            )
        out = fallback(back)
        return [(f, m.codes, m.scales, v.codes, v.scales) for f, m, v in out]

    tables = (quantize.decode_table(True), quantize.decode_table(False))
    got = native.quantized_step(algo, mode, leaves, hyper, tables, fallback=raw_fallback)
    return [
        (
            f,
            quantize.QuantizedArray(mc, ms, m.shape, m.signed),
            quantize.QuantizedArray(vc, vs, v.shape, v.signed),
        )
        for (f, mc, ms, vc, vs), m, v in zip(got, mu, nu, strict=True)
    ]


# ----------------------------------------------------------------------------------------
# A one-time check of the 8-bit kernel against the chain as XLA compiles it here.

_CHECK: dict[str, Any] = {"done": False, "why": None}
_CHECK_LOCK = threading.RLock()  # re-entered by the check's own native steps


def _quantized_kernel_check() -> str | None:
    """Why the 8-bit kernel must not run here, or None: once per process, a few native
    steps of ``adam(state_dtype="int8")`` against the XLA-compiled chain, bit for bit.

    The kernel copies what XLA's CPU compiler makes of quantize.py (the reciprocal it
    multiplies by for ``/ 0.9`` and ``/ scale``, its FMA contractions, NaN -> 0 in
    float -> int conversions); a jaxlib that compiled the chain otherwise would be caught
    here and the chain run instead (with one RuntimeWarning).
    """
    with _CHECK_LOCK:
        if _CHECK["done"]:
            return _CHECK["why"]
        _CHECK["done"] = True  # the check's own native steps run without it
        try:
            why = _compare_quantized_steps()
        except Exception as e:  # noqa: BLE001 - any failure means: run the chain
            why = f"failed its check: {type(e).__name__}: {e}"
        _CHECK["why"] = why
    if why is not None:
        warnings.warn(
            f"adamjax: the native 8-bit-state kernel {why}; 8-bit steps run the pure-JAX "
            "chain (same results, slower).",
            RuntimeWarning,
            stacklevel=3,
        )
    return why


def _compare_quantized_steps() -> str | None:
    """Adam's chain with 8-bit moments, lowered onto the kernel and as written, through
    :func:`adamjax.native.quantized_self_test` on two full blocks and a tail."""
    if not native.quantized_available():
        return (
            "is missing from the compiled library (built before it was added: rebuild "
            "adamjax, e.g. `python setup.py build_ext --inplace`)"
        )

    def adam_int8(implementation: str) -> Any:  # adamjax.adam(1e-3, state_dtype="int8")
        return chain(
            scale_by_moments(0.9, 0.999, state_dtype="int8"),
            bias_correct(),
            precondition(1e-8),
            scale_by_lr(1e-3),
            implementation=implementation,
        )

    kernel, written = adam_int8("native"), adam_int8("jax")
    return native.quantized_self_test(
        lambda g, s, p: apply_gradients(kernel, g, s, p),
        lambda g, s, p: apply_gradients(written, g, s, p),
        kernel.init,
        2 * quantize.BLOCK_SIZE + 5,
    )

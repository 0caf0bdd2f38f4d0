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
XLA-compiled chain, ``lowering._packing._quantized_kernel_check``). Otherwise the chain runs as
written. Its outputs are those of the XLA-compiled chain bit for bit (tests/native,
tests/test_fast_paths.py, tests/test_fast_paths_int8.py).

It stays differentiable: the kernel is wrapped in ``jax.custom_jvp`` whose rule is the
JVP of the pure chain, with every hyperparameter an explicit argument, so ``jax.grad``
and ``jax.jvp`` through ``update`` (w.r.t. the gradients, the state or e.g. a traced
learning rate) give the chain's derivatives. Under ``jax.vmap`` over hyperparameters the
kernel takes one row of hyperparameters per configuration.

This module holds :func:`chain` and the gate; ``_match`` recognises a chain and checks a
step's leaves, ``_kernel_step`` computes the kernel's scalars and wraps its call,
``_packing`` converts 8-bit moments to the kernel's leaves and runs the one-time check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adamjax import _validate, native, quantize
from adamjax.base import GradientTransformationExtraArgs
from adamjax.lowering._kernel_step import _custom_step
from adamjax.lowering._match import _decay_flags, _match, _Plan, _why_not_here
from adamjax.lowering._packing import _quantized_kernel_check
from adamjax.step import FusedTransformation

__all__ = ["Verdict", "chain", "kernel_gate"]

_IMPLEMENTATIONS = ("auto", "jax", "native")


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
    return _lowered(transforms, verdict.plan, pure, implementation == "native")


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
    ms = plan.state_of(plan.moments, state)
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
    # Each part's hyperparameters at this step (a schedule called with its part's count).
    lr = plan.lr.hyper_at(plan.state_of(plan.lr, state))["learning_rate"]
    flags: tuple[bool, ...] | None = None
    why_not: tuple[str, type[Exception]] | None = None
    if plan.decay is None:
        values = plan.values(lr)
    else:
        wd = plan.decay.hyper_at(plan.state_of(plan.decay, state))["weight_decay"]
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
        why_8bit = _quantized_kernel_check(chain)
        if why_8bit is not None:
            error = RuntimeError(f"implementation='native': the 8-bit kernel {why_8bit}")
            return Verdict(plan, f"the 8-bit kernel {why_8bit}", error)
    step = _Step(treedef, g, mu, nu, p, values, flags)
    return Verdict(plan, step=step)


# ----------------------------------------------------------------------------------------
# The lowered transformation.


def _lowered(transforms: tuple, plan: _Plan, pure: Any, force: bool) -> FusedTransformation:
    # ``update`` runs the kernel's update form only when asked (``"native"``): it has to
    # write the update to a buffer of its own, which XLA:CPU allocates afresh every step,
    # while the chain fuses with the caller's apply_updates into one pass without it, and
    # is faster for it. The fused apply has no such buffer (28 bytes per parameter, in
    # place) and is taken wherever it runs. With 8-bit moments the kernel's update form is
    # taken under "auto" too: it moves 12 bytes per parameter, where the XLA-compiled chain
    # decodes and encodes the blocks through long select chains many times slower. The
    # figures: docs/fast-paths.md, "Measurements behind the code's choices".
    def fused_apply(grads, state, params):
        return _maybe_native("apply", transforms, force, grads, state, params)

    if not (force or plan.int8):
        return FusedTransformation(pure.init, pure.update, fused_apply)

    def update(updates, state, params=None, **extra_args):
        out = _maybe_native("update", transforms, force, updates, state, params)
        if out is None:
            return pure.update(updates, state, params, **extra_args)
        return out

    update.__doc__ = pure.update.__doc__
    return FusedTransformation(pure.init, update, fused_apply)


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
    ms = plan.state_of(plan.moments, state)
    static = {k: x for k, x in st.values.items() if not isinstance(x, jax.Array)}
    dynamic = {k: x for k, x in st.values.items() if isinstance(x, jax.Array)}
    step = _custom_step(mode, plan, static, st.flags)
    first, new_mu, new_nu = step(dynamic, st.p or [], st.g, st.mu, st.nu, ms.count)
    new_state = plan.next_state(
        state, mu=st.treedef.unflatten(new_mu), nu=st.treedef.unflatten(new_nu)
    )
    return st.treedef.unflatten(first), new_state

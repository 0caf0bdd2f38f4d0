"""Base types shared by every adamjax transformation.

An optimizer is an :class:`optax.GradientTransformation`: a pure ``(init, update)`` pair.
adamjax reuses Optax's base types so that everything here drops into ``optax.chain``,
``flax.training.train_state.TrainState`` and ``flax.nnx.Optimizer`` unchanged.

Between the primitives of Algorithm 1 (Kingma & Ba, ICLR 2015) the moments travel as a
typed pytree, :class:`Moments`, so that a wrong composition fails at trace time with a
message that names the primitive and what it expected.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax
from optax import EmptyState as EmptyState
from optax import GradientTransformation as GradientTransformation
from optax import GradientTransformationExtraArgs as GradientTransformationExtraArgs

Params = Any
Updates = Any
OptState = Any

MomentKind = Literal["ema_sq", "inf_norm", "sum_sq"]

_INT32_MAX = jnp.iinfo(jnp.int32).max


@jax.tree_util.register_pytree_node_class
class Moments:
    """The moment estimates passed from one primitive of Algorithm 1 to the next.

    Attributes:
      mu: tree of first-moment estimates ``m_t`` (or ``m_hat_t`` once corrected).
      nu: tree of second-moment estimates: ``v_t`` (``kind="ema_sq"``), the infinity norm
        ``u_t`` of AdaMax (``kind="inf_norm"``) or AdaGrad's running sum of squares
        (``kind="sum_sq"``).
      count: the step ``t`` (int32 scalar, 1 at the first step) these moments belong to.
      kind: which second moment ``nu`` holds (static).
      corrected: whether :func:`adamjax.bias_correct` has been applied (static).

    It is a pytree, so it can flow through ``jax.jit`` and ``optax.chain``; it is never
    stored in an optimizer state.
    """

    def __init__(
        self,
        mu: Any,
        nu: Any,
        count: jax.Array,
        kind: MomentKind = "ema_sq",
        corrected: bool = False,
    ):
        self.mu = mu
        self.nu = nu
        self.count = count
        self.kind = kind
        self.corrected = corrected

    def tree_flatten(self):
        return (self.mu, self.nu, self.count), (self.kind, self.corrected)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)

    def replace(self, **changes: Any) -> Moments:
        fields = dict(
            mu=self.mu, nu=self.nu, count=self.count, kind=self.kind, corrected=self.corrected
        )
        fields.update(changes)
        return Moments(**fields)

    def __repr__(self) -> str:
        return f"Moments(kind={self.kind!r}, corrected={self.corrected}, mu=..., nu=...)"


class CompositionError(TypeError):
    """Raised at trace time when primitives are chained in an order that cannot work."""


def expect_moments(primitive: str, value: Any, hint: str) -> Moments:
    """Return ``value`` if it is :class:`Moments`, else raise :class:`CompositionError`."""
    if not isinstance(value, Moments):
        raise CompositionError(
            f"{primitive} expected the Moments produced by an earlier primitive, but received "
            f"{_describe(value)}. {hint}"
        )
    return value


def expect_updates(primitive: str, value: Any, hint: str) -> Any:
    """Return ``value`` if it is a plain update tree, else raise :class:`CompositionError`."""
    if isinstance(value, Moments):
        raise CompositionError(
            f"{primitive} expected a tree of gradients or updates, but received {value!r}. {hint}"
        )
    return value


def _describe(value: Any) -> str:
    leaves = jax.tree_util.tree_leaves(value)
    return f"a {type(value).__name__} with {len(leaves)} array leaves (plain gradients/updates)"


def safe_increment(count: jax.Array) -> jax.Array:
    """``count + 1`` that saturates at the int32 maximum instead of wrapping negative.

    Bias corrections use ``1 - b**t``; a wrapped (negative) ``t`` would make them huge or
    negative, so the counter stops at ``2**31 - 1`` (where every correction is exactly 1).
    """
    count = jnp.asarray(count, jnp.int32)
    return jnp.where(count < _INT32_MAX, count + 1, _INT32_MAX)


def compute_dtype(x: Any) -> jnp.dtype:
    """The dtype the math runs in for a leaf: at least float32, complex kept complex.

    float16/bfloat16 leaves are promoted to float32; float64 (with ``jax_enable_x64``)
    and complex dtypes are kept.
    """
    dtype = jnp.result_type(x)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return jnp.promote_types(dtype, jnp.complex64)
    return jnp.promote_types(dtype, jnp.float32)


def real_dtype(dtype: Any) -> jnp.dtype:
    """The real counterpart of ``dtype`` (complex64 -> float32, float32 -> float32)."""
    return jnp.finfo(dtype).dtype


def state_dtype_for(x: Any, state_dtype: Any | None) -> jnp.dtype:
    """Storage dtype of a moment for leaf ``x``: ``state_dtype`` or the compute dtype.

    A real ``state_dtype`` (e.g. bfloat16) applied to a complex leaf keeps it complex.
    """
    base = compute_dtype(x)
    if state_dtype is None:
        return base
    dtype = jnp.dtype(state_dtype)
    if jnp.issubdtype(base, jnp.complexfloating) and not jnp.issubdtype(dtype, jnp.complexfloating):
        return jnp.promote_types(dtype, jnp.complex64)
    return dtype


def abs_sq(g: jax.Array) -> jax.Array:
    """``|g|^2``: ``g * conj(g)`` (real) for complex ``g``, ``g * g`` otherwise."""
    if jnp.iscomplexobj(g):
        return (g * jnp.conj(g)).real
    return g * g


def chain(*transforms: GradientTransformation) -> GradientTransformationExtraArgs:
    r"""Compose transformations left to right: the output of one is the input of the next.

    Identical to :func:`optax.chain` (re-exported so that code can import only adamjax).
    ``adamjax.adam`` is ``chain(scale_by_moments, bias_correct, precondition, scale_by_lr)``.

    Examples:
      Algorithm 1 written out, one primitive per line; its first step is
      :math:`-\alpha\,\mathrm{sign}(g)`:

      >>> import jax.numpy as jnp
      >>> import adamjax
      >>> by_hand = adamjax.chain(
      ...     adamjax.scale_by_moments(0.9, 0.999),
      ...     adamjax.bias_correct(0.9, 0.999),
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
    return optax.chain(*transforms)


def apply_updates(params: Params, updates: Updates) -> Params:
    """``theta_t = theta_{t-1} + update``, leaf by leaf, in at least float32.

    Low-precision (float16/bfloat16) parameters are added in float32 and cast back to
    their own dtype, so a small update is rounded once, not twice. ``None`` leaves pass
    through.
    """

    def add(p, u):
        if p is None:
            return None
        p = jnp.asarray(p)
        if not jnp.issubdtype(p.dtype, jnp.inexact):
            return p
        dt = compute_dtype(p)
        return (p.astype(dt) + jnp.asarray(u).astype(dt)).astype(p.dtype)

    return jax.tree.map(add, params, updates, is_leaf=lambda x: x is None)

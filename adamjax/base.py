"""Base types shared by every adamjax transformation.

An optimizer is an :class:`optax.GradientTransformation`: a pure ``(init, update)`` pair.
adamjax reuses Optax's base types so that everything here drops into ``optax.chain``,
``flax.training.train_state.TrainState`` and ``flax.nnx.Optimizer`` unchanged.

Between the primitives of Algorithm 1 (Kingma & Ba, ICLR 2015) the moments travel as a
typed pytree, :class:`Moments`, so that a wrong composition fails at trace time with a
message that names the primitive and what it expected.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp
from optax import EmptyState as EmptyState
from optax import GradientTransformation as GradientTransformation
from optax import GradientTransformationExtraArgs as GradientTransformationExtraArgs

from adamjax import _validate

Params = Any
Updates = Any
OptState = Any

MomentKind = Literal["ema_sq", "inf_norm", "sum_sq"]

_INT32_MAX = jnp.iinfo(jnp.int32).max


def _static(default: Any) -> Any:
    """A dataclass field that is part of the treedef, not a pytree child."""
    return dataclasses.field(default=default, metadata={"static": True})


@dataclasses.dataclass(frozen=True, repr=False, eq=False)
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
      b1, b2: the estimator's decay rates as arrays (``None`` where it has none, as for
        AdaGrad's sum), so that consumers such as :func:`adamjax.bias_correct` never ask
        the user to repeat them. They are pytree children: a vmapped ``b1`` stays batched.
      grad: the gradient ``g_t`` the moments were updated with (in the compute dtype), for
        consumers that need it beside ``m_t`` (Nesterov's look-ahead, centring).
      known_betas: the decay rates when they were Python numbers (static; ``None`` for a
        traced or array rate), used to check explicit arguments against them at trace time.

    It is a registered dataclass pytree (the ``static`` fields are its treedef, the rest its
    children), so it can flow through ``jax.jit`` and ``optax.chain``; it is never stored in
    an optimizer state.
    """

    mu: Any
    nu: Any
    count: jax.Array
    kind: MomentKind = _static("ema_sq")
    corrected: bool = _static(False)
    b1: Any = None
    b2: Any = None
    grad: Any = None
    known_betas: tuple[float | None, float | None] = _static((None, None))

    def replace(self, **changes: Any) -> Moments:
        """A copy with ``changes`` applied (:func:`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        return f"Moments(kind={self.kind!r}, corrected={self.corrected}, mu=..., nu=...)"


# The field lists are read from the ``static`` metadata, so each field is named once.
jax.tree_util.register_dataclass(
    Moments,
    data_fields=[f.name for f in dataclasses.fields(Moments) if not f.metadata.get("static")],
    meta_fields=[f.name for f in dataclasses.fields(Moments) if f.metadata.get("static")],
)


def record_beta(beta: Any) -> tuple[Any, float | None]:
    """``(array, python_value_or_None)`` of a decay rate, for :class:`Moments`."""
    if _validate.is_python_number(beta):
        return jnp.asarray(beta), float(beta)
    return jnp.asarray(beta), None


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


def on_moments(primitive: str, hint: str, step: Any) -> GradientTransformation:
    """A stateless stage between primitives of Algorithm 1: ``update`` checks that it
    receives :class:`Moments` (else :class:`CompositionError` with ``hint``) and returns
    ``step(moments)``, the moments (or the update tree) this stage makes of them."""

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None):
        del params
        return step(expect_moments(primitive, updates, hint)), state

    return GradientTransformation(init, update)


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
    if isinstance(state_dtype, str) and state_dtype == "int8":
        raise TypeError(
            "state_dtype='int8' (8-bit block-wise moments) is a storage format of the moment "
            "estimators scale_by_moments and scale_by_inf_moment (adam, adamax, rmsprop); "
            "this transformation stores float state: pass None, jnp.float32 or jnp.bfloat16."
        )
    dtype = jnp.dtype(state_dtype)
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(
            f"state_dtype={state_dtype!r} is not a floating-point dtype; pass None, "
            "jnp.float32, jnp.bfloat16, or 'int8' (8-bit moments) to adam/adamax/rmsprop."
        )
    if jnp.issubdtype(base, jnp.complexfloating) and not jnp.issubdtype(dtype, jnp.complexfloating):
        return jnp.promote_types(dtype, jnp.complex64)
    return dtype


def abs_sq(g: jax.Array) -> jax.Array:
    """``|g|^2``: ``g * conj(g)`` (real) for complex ``g``, ``g * g`` otherwise."""
    if jnp.iscomplexobj(g):
        return (g * jnp.conj(g)).real
    return g * g


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

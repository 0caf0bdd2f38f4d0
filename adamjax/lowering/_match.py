"""Recognising a chain the kernel runs, and a step's leaves it takes.

:func:`_match` reads the specs of a chain's parts (:mod:`adamjax.spec`) into a
:class:`_Plan`, which rebuilds the chain from its primitives with other hyperparameters
(the kernel's fallback and derivative); the rest checks one step's arrays and reads its
scheduled hyperparameters and AdamW's mask, for :func:`adamjax.lowering.kernel_gate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adamjax import _validate, quantize
from adamjax._tree import mask_tree
from adamjax.spec import Spec, spec_of

_F32 = jnp.dtype(jnp.float32)
_STATE_DTYPES = (_F32, jnp.dtype(jnp.bfloat16))
_ALGO = {"scale_by_moments": "adam", "scale_by_inf_moment": "adamax"}


@dataclass(frozen=True)
class _Plan:
    """A recognised chain: its algorithm and the specs of its parts (``parts``: all of them,
    in the chain's order, that of the chain's state)."""

    algo: str  # "adam", "adamax" or "adamw"
    int8: bool  # moments stored as 8-bit blocks (adamjax.quantize)
    moments: Spec
    bias: Spec | None
    precondition: Spec
    lr: Spec
    decay: Spec | None  # add_decayed_weights (AdamW)
    parts: tuple[Spec, ...]

    def state_of(self, part: Spec, state: tuple) -> Any:
        """The state of one part, from the chain's state (``optax.chain``'s: one per part)."""
        return state[self.parts.index(part)]

    def next_state(self, state: tuple, **outputs: Any) -> tuple:
        """The chain's state after a step the kernel ran: each part's, as its spec advances
        it given the kernel's ``outputs`` (the new moment trees ``mu`` and ``nu``)."""
        parts = zip(self.parts, state, strict=True)
        return type(state)(tuple(spec.next_state(s, **outputs) for spec, s in parts))

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

    def pure(
        self, v: dict[str, Any], mask: Any = None
    ) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
        """The chain rebuilt from its primitives with the hyperparameters ``v``, as its
        moment estimator and the stateless rest that turns its moments into an update;
        AdamW's decay with ``mask`` (``False``: the chain without it, i.e. Adam's)."""
        rates = {"b1": v["b1"], "b2": v["b2"]}
        if "b1_decay" in self.moments.hyper:
            rates["b1_decay"] = v["b1_decay"]
        rest = []
        if self.bias is not None:
            rest.append(self.bias.rebuild(b1=v["cb1"], b2=v["cb2"], enabled=v["enabled"]))
        rest.append(self.precondition.rebuild(eps=v["eps"]))
        if self.decay is not None and mask is not False:
            rest.append(self.decay.build(weight_decay=v["wd"], mask=mask))
        rest.append(self.lr.rebuild(learning_rate=v["lr"]))  # a value: no schedule state
        return self.moments.rebuild(**rates), optax.chain(*rest)


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
    if _validate.is_python_number(m["b1"], 0.0) and _validate.is_python_number(
        m.get("b1_decay", 1.0), 1.0
    ):
        return None, "b1=0 (no first moment is stored)"
    stored = {k: moments.options.get(k) for k in ("mu_dtype", "nu_dtype")}
    int8 = [quantize.is_int8(sd) for sd in stored.values()]
    if any(int8) and not all(int8):
        return None, f"{stored} (8-bit storage of one moment only)"
    for key, sd in stored.items():
        if sd is not None and not quantize.is_int8(sd) and jnp.dtype(sd) not in _STATE_DTYPES:
            return None, f"{key}={sd!r} (the kernel stores float32, bfloat16 or 'int8')"
    if not _validate.is_python_number(precond.hyper.get("eps_root", 0.0), 0.0):
        eps_root = precond.hyper["eps_root"]
        return None, f"eps_root={eps_root!r} (the kernel has no epsilon inside the root)"
    if all(int8) and algo == "adamw":
        return None, "AdamW with 8-bit moments (the 8-bit kernel has no weight decay term)"
    parts = tuple(s for s in specs if s is not None)
    return _Plan(algo, all(int8), moments, bias, precond, lr, decay, parts), ""


# ----------------------------------------------------------------------------------------
# A step's arrays and scheduled hyperparameters.


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

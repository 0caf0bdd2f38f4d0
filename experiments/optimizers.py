"""The optimizers the experiments compare, built from hyperparameter arrays.

Every hyperparameter may be a traced array, so :func:`build` can run inside ``jax.vmap`` over
a grid of configs: one compiled program trains the whole grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

import adamjax

__all__ = ["OPTIMIZERS", "HParam", "OptimizerSpec", "build"]


@dataclass(frozen=True)
class HParam:
    """One hyperparameter: its type, default, and the allowed range ``[low, high)``."""

    kind: type  # float or bool
    default: Any
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True

    def check(self, where: str, value: Any) -> None:
        """Raise ``ValueError`` naming ``where`` if ``value`` is the wrong type or range."""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{where}: expected true/false, got {value!r}")
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        if self.low is not None and (
            value < self.low or (value == self.low and not self.low_inclusive)
        ):
            op = ">=" if self.low_inclusive else ">"
            raise ValueError(f"{where}: {value!r} out of range, must be {op} {self.low}")
        if self.high is not None and value >= self.high:
            raise ValueError(f"{where}: {value!r} out of range, must be < {self.high}")


def _lr(default: float = 1e-3) -> HParam:
    return HParam(float, default, 0.0, None, low_inclusive=False)


class _Range(TypedDict, total=False):
    """Shared :class:`HParam` fields, unpacked as ``HParam(default=..., **_BETA)``."""

    kind: type
    low: float | None
    high: float | None


_BETA = _Range(kind=float, low=0.0, high=1.0)
_EPS = _Range(kind=float, low=0.0)


@dataclass(frozen=True)
class OptimizerSpec:
    """A named optimizer: its label for plots and its hyperparameters."""

    label: str
    hparams: dict[str, HParam]


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "adam": OptimizerSpec(
        "Adam",
        {
            "learning_rate": _lr(1e-3),
            "b1": HParam(default=0.9, **_BETA),
            "b2": HParam(default=0.999, **_BETA),
            "eps": HParam(default=1e-8, **_EPS),
            "bias_correction": HParam(bool, True),
        },
    ),
    "adamax": OptimizerSpec(
        "AdaMax",
        {
            "learning_rate": _lr(2e-3),
            "b1": HParam(default=0.9, **_BETA),
            "b2": HParam(default=0.999, **_BETA),
            "eps": HParam(default=1e-8, **_EPS),
        },
    ),
    "adagrad": OptimizerSpec(
        "AdaGrad", {"learning_rate": _lr(1e-2), "eps": HParam(default=1e-8, **_EPS)}
    ),
    "rmsprop": OptimizerSpec(
        "RMSProp",
        {
            "learning_rate": _lr(1e-3),
            "decay": HParam(default=0.9, **_BETA),
            "eps": HParam(default=1e-8, **_EPS),
        },
    ),
    "sgd": OptimizerSpec("SGD", {"learning_rate": _lr(1e-2)}),
    "sgd_momentum": OptimizerSpec(
        "SGD momentum", {"learning_rate": _lr(1e-2), "momentum": HParam(default=0.9, **_BETA)}
    ),
    "sgd_nesterov": OptimizerSpec(
        "SGD Nesterov", {"learning_rate": _lr(1e-2), "momentum": HParam(default=0.9, **_BETA)}
    ),
    "adadelta": OptimizerSpec(
        "AdaDelta",
        {
            "learning_rate": _lr(1.0),
            "rho": HParam(default=0.95, **_BETA),
            "eps": HParam(default=1e-6, **_EPS),
        },
    ),
}

SCHEDULES = ("constant", "inverse_sqrt")


def _schedule(kind: str, alpha: Any):
    if kind == "constant":
        return alpha
    if kind == "inverse_sqrt":
        return adamjax.inverse_sqrt_schedule(alpha)
    raise ValueError(f"unknown schedule {kind!r}; expected one of {SCHEDULES}")


def build(name: str, hp: Mapping[str, Any], schedule: str = "constant"):
    """The optimizer ``name`` with hyperparameters ``hp`` (arrays or numbers).

    Missing hyperparameters take their defaults; ``schedule`` turns ``learning_rate`` into
    ``alpha_t = alpha`` ('constant') or ``alpha / sqrt(t)`` ('inverse_sqrt').
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    spec = OPTIMIZERS[name]
    unknown = set(hp) - set(spec.hparams)
    if unknown:
        raise ValueError(f"optimizer {name!r} has no hyperparameter(s) {sorted(unknown)}")
    h = {k: hp.get(k, p.default) for k, p in spec.hparams.items()}
    lr = _schedule(schedule, h.pop("learning_rate"))
    if name == "adam":
        bc = h.pop("bias_correction")
        return adamjax.adam(lr, h["b1"], h["b2"], h["eps"], bias_correction=bc)
    if name == "adamax":
        return adamjax.adamax(lr, h["b1"], h["b2"], h["eps"])
    if name == "adagrad":
        return adamjax.adagrad(lr, eps=h["eps"])
    if name == "rmsprop":
        return adamjax.rmsprop(lr, decay=h["decay"], eps=h["eps"])
    if name == "sgd":
        return adamjax.sgd(lr)
    if name in ("sgd_momentum", "sgd_nesterov"):
        return adamjax.sgd(lr, momentum=h["momentum"], nesterov=name == "sgd_nesterov")
    return adamjax.adadelta(lr, rho=h["rho"], eps=h["eps"])

"""A primitive's static description of itself, for the lowering of known chains.

Each primitive of Algorithm 1 returns a :class:`Primitive`: an ordinary
``optax.GradientTransformation`` that also carries a :class:`Spec` (its name, its
hyperparameters, how to build it again and, for a fused step run in its place, how its
state advances). :func:`adamjax.chain` reads the specs of its
parts to recognise a chain it can run as a fused kernel (see :mod:`adamjax.lowering`).

A spec belongs to one exact object: a wrapper that rebuilds ``update`` (``optax.chain``,
``functools.wraps``, ``opt._replace(update=...)``) yields an object without it, so a
wrapped primitive is never mistaken for the primitive itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from adamjax.base import GradientTransformation

__all__ = ["Primitive", "Spec", "spec_of"]


@dataclass(frozen=True, eq=False)
class Spec:
    """What a primitive is: ``build(**hyper, **options)`` makes it again.

    Attributes:
      name: the primitive's function name, e.g. ``"scale_by_moments"``.
      hyper: its numeric hyperparameters as given (Python numbers, arrays, tracers or a
        schedule); the lowering may rebuild the primitive with other values for them.
      options: its static options (e.g. ``state_dtype``).
      build: the primitive's constructor.
      at: ``state -> {name: value}``, the values at this step of the hyperparameters that
        depend on the primitive's state (a schedule called with its count); None: none do.
      advance: ``(state, **outputs) -> state``, the primitive's state after a step run for
        it (by the fused kernel), given its state before and the step's outputs (``mu`` and
        ``nu``: the new moment trees); None: the state does not change.
    """

    name: str
    hyper: Mapping[str, Any]
    options: Mapping[str, Any]
    build: Callable[..., GradientTransformation]
    at: Callable[[Any], Mapping[str, Any]] | None = None
    advance: Callable[..., Any] | None = None

    def rebuild(self, **hyper: Any) -> GradientTransformation:
        """The primitive with some hyperparameters replaced (the others as given)."""
        return self.build(**{**self.hyper, **hyper}, **self.options)

    def hyper_at(self, state: Any) -> Mapping[str, Any]:
        """The hyperparameters' values at the step that starts from ``state``."""
        return self.hyper if self.at is None else {**self.hyper, **self.at(state)}

    def next_state(self, state: Any, **outputs: Any) -> Any:
        """The primitive's state after a step from ``state`` with these outputs."""
        return state if self.advance is None else self.advance(state, **outputs)


class Primitive(GradientTransformation):
    """``optax.GradientTransformation(init, update)`` that carries its :class:`Spec`."""

    def __new__(cls, init: Any, update: Any, spec: Spec | None = None) -> Primitive:
        self = super().__new__(cls, init, update)
        # Held by this object only: ``_replace(update=...)`` builds a tuple without it.
        self.__dict__["_spec"] = spec
        return self


def spec_of(t: Any) -> Spec | None:
    """The :class:`Spec` of ``t`` if ``t`` is a primitive that carries one, else None."""
    return t.__dict__.get("_spec") if isinstance(t, Primitive) else None

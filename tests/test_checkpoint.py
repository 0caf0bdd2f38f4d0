"""adamjax.checkpoint and every state format through every path a user steps and saves with.

The matrix: each state format (float32, bfloat16, separate mu/nu dtypes, 8-bit, Kahan
summation, stochastic rounding) x each way of stepping (``update`` + ``optax.apply_updates``,
``adamjax.apply_gradients``, Flax's ``TrainState``, ``adamjax.flax.TrainState``,
``nnx.Optimizer``, ``adamjax.flax.Optimizer``), jitted with the state donated, saved after
two steps with Orbax, ``adamjax.checkpoint`` and ``flax.serialization``, restored into a
fresh target (built as a user builds one: ``TrainState.create`` with ``step=0``, a new nnx
model and optimizer) and continued. The reference is the same run, uninterrupted: the
continued run must equal it bit for bit, leaf for leaf, with the same tree structure.
One case restores in a child process.
"""

from __future__ import annotations

import copy
import pickle
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from flax.training import train_state

import adamjax
import adamjax.flax
from adamjax import checkpoint
from adamjax.quantize import MIN_QUANTIZED_SIZE, QuantizedArray
from adamjax.rounding import stochastic_rounding

# One leaf large enough for 8-bit blocks (3 blocks, the last partial), two small ones.
BIG = (2, MIN_QUANTIZED_SIZE // 2 + 2)
SMALL = (3,)
STEPS_BEFORE, STEPS_AFTER = 2, 2

FORMATS: dict[str, tuple[Callable[[], Any], Any]] = {
    # name: (transformation, parameter dtype)
    "float32": (lambda: adamjax.adam(1e-2), jnp.float32),
    "bfloat16": (lambda: adamjax.adam(1e-2, state_dtype=jnp.bfloat16), jnp.float32),
    "mu_bf16_nu_f32": (
        lambda: adamjax.adam(1e-2, mu_dtype=jnp.bfloat16, nu_dtype=jnp.float32),
        jnp.float32,
    ),
    "int8": (lambda: adamjax.adam(1e-2, state_dtype="int8"), jnp.float32),
    "kahan": (lambda: adamjax.kahan_summation(adamjax.adam(1e-2)), jnp.bfloat16),
    "stochastic_rounding": (
        lambda: stochastic_rounding(adamjax.adam(1e-2), 7),
        jnp.bfloat16,
    ),
}
PATHS = ["update", "apply_gradients", "flax_train_state", "adamjax_train_state"]
NNX_PATHS = ["nnx_optimizer", "adamjax_nnx_optimizer"]
SAVERS = ["orbax", "adamjax_checkpoint", "flax_serialization"]


def _initial(dtype: Any) -> dict[str, jax.Array]:
    big = jnp.linspace(-1.0, 1.0, BIG[0] * BIG[1]).reshape(BIG)
    return {
        "big": big.astype(dtype),
        "small": jnp.array([0.5, -0.25, 2.0], dtype),
        "scalar": jnp.asarray(1.5, dtype),
    }


def _loss(params: dict[str, jax.Array]) -> jax.Array:
    """A loss whose gradient differs in size and sign across each leaf and each step."""
    total = jnp.float32(0.0)
    for name in sorted(params):
        p = params[name].astype(jnp.float32)
        w = jnp.cos(jnp.arange(p.size, dtype=jnp.float32).reshape(p.shape) * 0.37) + 1.5
        total = total + jnp.sum(w * jnp.sin(3.0 * p) + 0.5 * p * p)
    return total


class _Model(nnx.Module):
    def __init__(self, dtype: Any):
        for name, value in _initial(dtype).items():
            setattr(self, name, nnx.Param(value))

    def params(self) -> dict[str, jax.Array]:
        return {name: getattr(self, name)[...] for name in ("big", "small", "scalar")}


# ------------------------------------------------------------------------------------------
# Each path: a fresh target, a jitted donated step, and the tree of what it holds.


def _fresh(path: str, fmt: str, tx: Any = None) -> Any:
    """A new target for ``path``; pass the ``tx`` of an earlier run to reuse its compiled
    step (a transformation is static data of Flax's classes)."""
    make_tx, dtype = FORMATS[fmt]
    tx = make_tx() if tx is None else tx
    if path in ("update", "apply_gradients"):
        params = _initial(dtype)
        return params, tx.init(params)
    if path == "flax_train_state":
        return train_state.TrainState.create(apply_fn=None, params=_initial(dtype), tx=tx)
    if path == "adamjax_train_state":
        return adamjax.flax.TrainState.create(apply_fn=None, params=_initial(dtype), tx=tx)
    model = _Model(dtype)
    cls = nnx.Optimizer if path == "nnx_optimizer" else adamjax.flax.Optimizer
    return model, cls(model, tx, wrt=nnx.Param)


def _step_fn(path: str, tx: Any) -> Callable[[Any], Any]:
    """The jitted step of ``path`` (state donated); the same function serves every run."""
    if path == "update":

        def step(carry):
            params, state = carry
            updates, state = tx.update(jax.grad(_loss)(params), state, params)
            return optax.apply_updates(params, updates), state

    elif path == "apply_gradients":

        def step(carry):
            params, state = carry
            return adamjax.apply_gradients(tx, jax.grad(_loss)(params), state, params)

    elif path in ("flax_train_state", "adamjax_train_state"):

        def step(ts):
            return ts.apply_gradients(grads=jax.grad(_loss)(ts.params))

    else:

        @nnx.jit(donate_argnums=0)
        def nnx_step(carry):
            model, opt = carry
            grads = nnx.grad(lambda m: _loss(m.params()))(model)
            opt.update(model, grads)

        def step(carry):
            nnx_step(carry)
            return carry

        return step
    return jax.jit(step, donate_argnums=0)


def _saved(path: str, carry: Any) -> Any:
    """What a user saves: the pytree itself, or nnx's state of the model and optimizer."""
    if path in NNX_PATHS:
        model, opt = carry
        return {"model": nnx.state(model), "opt": nnx.state(opt)}
    return carry


def _load_into(path: str, fresh: Any, restored: Any) -> Any:
    if path in NNX_PATHS:
        model, opt = fresh
        nnx.update(model, restored["model"])
        nnx.update(opt, restored["opt"])
        return fresh
    return restored


def _arrays(path: str, carry: Any) -> tuple[Any, list[np.ndarray]]:
    """``(structure, leaves as NumPy)`` of everything a run holds (params and state)."""
    tree = nnx.as_pure(_saved(path, carry)) if path in NNX_PATHS else carry
    leaves, treedef = jax.tree.flatten(tree)
    return str(treedef), [np.asarray(x) for x in leaves]


def _assert_same_bits(a: tuple[Any, list[np.ndarray]], b: tuple[Any, list[np.ndarray]]) -> None:
    assert a[0] == b[0], "tree structures differ"
    assert len(a[1]) == len(b[1])
    for i, (x, y) in enumerate(zip(a[1], b[1], strict=True)):
        assert x.dtype == y.dtype and x.shape == y.shape, (i, x.dtype, y.dtype, x.shape, y.shape)
        assert x.tobytes() == y.tobytes(), f"leaf {i} differs"


# ------------------------------------------------------------------------------------------
# Savers: write the tree after two steps, then read it into a fresh target.


def _save(saver: str, tree: Any, directory: Any) -> Any:
    if saver == "orbax":
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(directory / "orbax", tree)
            ckptr.wait_until_finished()
        return directory / "orbax"
    if saver == "adamjax_checkpoint":
        checkpoint.save(directory / "adamjax", tree)
        return directory / "adamjax"
    if isinstance(tree, dict) and isinstance(tree.get("opt"), nnx.State):
        # nnx's own recipe: flax.serialization takes nnx state as a pure dict
        tree = jax.tree.map(nnx.to_pure_dict, tree, is_leaf=lambda x: isinstance(x, nnx.State))
    return flax.serialization.to_bytes(tree)


def _restore(saver: str, written: Any, target: Any) -> Any:
    if saver == "orbax":
        with ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore(written, target)
    if saver == "adamjax_checkpoint":
        return checkpoint.restore(written, target)
    if isinstance(target, dict) and isinstance(target.get("opt"), nnx.State):
        pure_target = {name: nnx.to_pure_dict(state) for name, state in target.items()}
        pure = flax.serialization.from_bytes(pure_target, written)
        for name, state in target.items():
            nnx.replace_by_pure_dict(state, pure[name])
        return target
    return flax.serialization.from_bytes(target, written)


def _run(step: Callable[[Any], Any], carry: Any, n: int) -> Any:
    for _ in range(n):
        carry = step(carry)
    return carry


@pytest.mark.parametrize("path", PATHS + NNX_PATHS)
@pytest.mark.parametrize("fmt", list(FORMATS))
def _opt_state(path: str, carry: Any) -> Any:
    if path in NNX_PATHS:
        return nnx.as_pure(carry[1].opt_state)
    return carry[1] if isinstance(carry, tuple) else carry.opt_state


@pytest.mark.parametrize("path", PATHS + NNX_PATHS)
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_save_restore_continue_equals_the_uninterrupted_run(fmt, path, tmp_path):
    tx = FORMATS[fmt][0]()
    step = _step_fn(path, tx)
    carry = _run(step, _fresh(path, fmt, tx), STEPS_BEFORE)
    if fmt == "int8":  # the big leaf's moments stay QuantizedArrays, not their children
        kinds = jax.tree.leaves(
            _opt_state(path, carry), is_leaf=lambda v: isinstance(v, QuantizedArray)
        )
        assert sum(isinstance(x, QuantizedArray) for x in kinds) == 2
    written = {s: _save(s, _saved(path, carry), tmp_path) for s in SAVERS}
    reference = _arrays(path, _run(step, carry, STEPS_AFTER))
    for saver in SAVERS:
        fresh = _fresh(path, fmt, tx)
        restored = _load_into(path, fresh, _restore(saver, written[saver], _saved(path, fresh)))
        _assert_same_bits(_arrays(path, _run(step, restored, STEPS_AFTER)), reference)


def test_int8_state_round_trips_through_jax_tree_copy_and_pickle():
    opt = adamjax.adam(1e-2, state_dtype="int8")
    state = opt.init(_initial(jnp.float32))
    leaves, treedef = jax.tree.flatten(state)
    for again in (
        jax.tree.unflatten(treedef, leaves),
        jax.tree.map(lambda x: x, state),
        copy.copy(state),
        copy.deepcopy(state),
        pickle.loads(pickle.dumps(state)),
    ):
        assert isinstance(again[0].mu["big"], QuantizedArray)
        assert jax.tree.structure(again) == treedef
        for x, y in zip(jax.tree.leaves(again), leaves, strict=True):
            assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def test_restore_takes_a_fresh_train_state_and_abstract_targets(tmp_path):
    """``TrainState.create`` sets ``step=0`` (a Python int): the restored step is an int,
    and a tree of ``ShapeDtypeStruct`` s restores the same values."""
    st = adamjax.flax.TrainState.create(
        apply_fn=None, params={"w": jnp.arange(5000.0)}, tx=adamjax.adam(1e-3)
    )
    st = st.replace(step=3)
    checkpoint.save(tmp_path / "c", st)
    fresh = adamjax.flax.TrainState.create(
        apply_fn=None, params={"w": jnp.zeros(5000)}, tx=adamjax.adam(1e-3)
    )
    back = checkpoint.restore(tmp_path / "c", fresh)
    assert type(back.step) is int and back.step == 3
    np.testing.assert_array_equal(back.params["w"], np.arange(5000.0, dtype=np.float32))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), fresh)
    back2 = checkpoint.restore(tmp_path / "c", abstract)
    np.testing.assert_array_equal(back2.params["w"], back.params["w"])
    assert int(back2.step) == 3
    mixed = {"n": 2, "x": 0.5, "a": np.ones(3, np.float32), "none": None}
    checkpoint.save(tmp_path / "m", mixed)
    got = checkpoint.restore(
        tmp_path / "m", {"n": 0, "x": 0.0, "a": np.zeros(3, np.float32), "none": None}
    )
    assert got["n"] == 2 and got["x"] == 0.5 and got["none"] is None
    np.testing.assert_array_equal(got["a"], np.ones(3))


_CHILD = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    sys.path.insert(0, {root!r})
    from tests.test_checkpoint import _fresh, _step_fn, _run, _arrays, STEPS_AFTER
    from adamjax import checkpoint
    fresh = _fresh("adamjax_train_state", "int8")
    step = _step_fn("adamjax_train_state", fresh.tx)
    restored = checkpoint.restore({path!r}, fresh)
    structure, leaves = _arrays("adamjax_train_state", _run(step, restored, STEPS_AFTER))
    np.savez({out!r}, structure=np.array(structure), *leaves)
    """
)


def test_int8_train_state_restores_and_continues_in_a_child_process(tmp_path):
    fresh = _fresh("adamjax_train_state", "int8")
    step = _step_fn("adamjax_train_state", fresh.tx)
    carry = _run(step, fresh, STEPS_BEFORE)
    checkpoint.save(tmp_path / "ck", carry)
    reference = _arrays("adamjax_train_state", _run(step, carry, STEPS_AFTER))
    root = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    out = str(tmp_path / "child.npz")
    code = _CHILD.format(root=root, path=str(tmp_path / "ck"), out=out)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
    got = np.load(out)
    leaves = [got[f"arr_{i}"] for i in range(len(got.files) - 1)]

    def unaddressed(structure: str) -> str:  # the static tx's functions live elsewhere there
        return re.sub(r"0x[0-9a-f]+", "", structure)

    _assert_same_bits(
        (unaddressed(str(got["structure"])), leaves), (unaddressed(reference[0]), reference[1])
    )

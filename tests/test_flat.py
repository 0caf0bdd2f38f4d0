"""The flat layout (adamjax.flat): the tree layout's numbers (ravel exactly; updates to the
rounding of one division, see ``assert_trees_within_ulps``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamjax
from adamjax.flat import FlatState, flat_layout, layout_of, ravel
from adamjax.step import apply_gradients
from tests.helpers import assert_trees_equal


def mixed_tree(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "dense": {
            "w": jnp.asarray(rng.normal(size=(7, 3)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32),
        },
        "scalar": jnp.asarray(rng.normal(), jnp.float32),
        "empty": jnp.zeros((0, 4), jnp.float32),
        "half": [jnp.asarray(rng.normal(size=(5, 2)), jnp.bfloat16)],
        "conv": (jnp.asarray(rng.normal(size=(2, 2, 1, 4)), jnp.float32),),
    }


def grads_like(tree, step):
    return jax.tree.map(
        lambda x: (jnp.sin(x.astype(jnp.float32) * (step + 1)) + 0.1).astype(x.dtype), tree
    )


def ulps_apart(x, y) -> float:
    """Largest ``|x - y|`` in units in the last place of ``y`` (in ``y``'s own dtype)."""
    x32, y32 = np.asarray(x, np.float32), np.asarray(y, np.float32)
    if y.dtype == jnp.bfloat16:  # 8 significant bits: 2^16 float32 ulps
        ulp = np.spacing(np.abs(y32)) * 2.0**16
    else:
        ulp = np.spacing(np.abs(y32))
    return float(np.max(np.abs(x32 - y32) / ulp, initial=0.0))


def assert_trees_within_ulps(a, b, max_ulps=2):
    """The same elementwise results up to how XLA rounds one division: ``max_ulps`` ulp.

    The flat and tree layouts evaluate the same elementwise expression on the same inputs.
    XLA:CPU compiles a division inside a vectorised loop as ``x * (1 / y)`` (two roundings)
    and divides directly in scalar code (one rounding); which code a leaf gets depends on its
    size and shape, which the two layouts do not share. ``x * (1/y)`` is within 1 ulp of the
    correctly rounded ``x / y``, and the following multiplication by ``-alpha`` can turn one
    ulp of its input into at most two ulp of its output: an update of either layout is within
    2 ulp of the other's. An update much smaller than its parameter then moves the parameter
    to the same float, or (per step) to the neighbouring one: parameters after ``k`` steps
    are within ``k`` ulp. (adamjax.flat's docstring states this bound.)
    """
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape, (x.dtype, y.dtype, x.shape, y.shape)
        assert ulps_apart(x, y) <= max_ulps, (x, y, ulps_apart(x, y))


def run_updates(opt, params, steps=4):
    state = opt.init(params)
    update = jax.jit(opt.update)
    outs = []
    for t in range(steps):
        u, state = update(grads_like(params, t), state, params)
        params = adamjax.apply_updates(params, u)
        outs.append(u)
    return outs, params


def test_ravel_round_trip_keeps_dtypes_and_bits():
    tree = mixed_tree()
    flat, unravel = ravel(tree)
    assert set(flat) == {"float32", "bfloat16"}
    assert flat["float32"].shape == (21 + 3 + 1 + 0 + 16,)
    assert flat["bfloat16"].dtype == jnp.bfloat16 and flat["bfloat16"].shape == (10,)
    assert_trees_equal(unravel(flat), tree)  # a copy: exact, scalars included


def test_layout_is_static_and_shape_only():
    tree = mixed_tree()
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    assert layout_of(tree) == layout_of(shapes)
    assert hash(layout_of(tree)) == hash(layout_of(shapes))
    assert layout_of(tree).num_leaves == len(jax.tree.leaves(tree))


@pytest.mark.parametrize(
    "make",
    [
        lambda: adamjax.adam(1e-2, implementation="jax"),
        lambda: adamjax.adam(1e-2, bias_correction=False, implementation="jax"),
        lambda: adamjax.adam(1e-2, state_dtype=jnp.bfloat16, implementation="jax"),
        lambda: adamjax.adam(adamjax.inverse_sqrt_schedule(1e-2), implementation="jax"),
        lambda: adamjax.adamax(1e-2),
        lambda: adamjax.rmsprop(1e-2),
        lambda: adamjax.sgd(1e-2, 0.9, nesterov=True),
        lambda: optax.adam(1e-2),
    ],
    ids=[
        "adam",
        "adam-nobias",
        "adam-bf16",
        "adam-schedule",
        "adamax",
        "rmsprop",
        "nesterov",
        "optax",
    ],
)
def test_flat_layout_updates_equal_tree_updates_to_rounding(make):
    params = mixed_tree()
    want, want_p = run_updates(make(), params)
    got, got_p = run_updates(flat_layout(make()), params)
    for u_tree, u_flat in zip(want, got, strict=True):
        assert_trees_within_ulps(u_flat, u_tree)
    assert_trees_within_ulps(got_p, want_p, max_ulps=len(want))


def test_flat_state_is_one_buffer_per_dtype():
    params = mixed_tree()
    state = adamjax.adam(1e-3, layout="flat").init(params)
    assert isinstance(state, FlatState)
    moments = state.inner[0]
    assert set(moments.mu) == {"float32", "bfloat16"}
    assert moments.mu["float32"].shape == (41,)
    assert moments.nu["bfloat16"].dtype == jnp.float32  # math (and default state) in float32


@pytest.mark.parametrize("implementation", ["jax", "auto"])
def test_apply_gradients_flat_layout_equals_tree(implementation):
    params = mixed_tree()

    def run(opt):
        p, st = params, opt.init(params)
        step = jax.jit(lambda p, st, g: apply_gradients(opt, g, st, p), donate_argnums=(0, 1))
        p = jax.tree.map(jnp.copy, p)
        for t in range(4):
            p, st = step(p, st, grads_like(params, t))
        return p

    want = run(adamjax.adam(1e-2, implementation="jax"))
    got = run(adamjax.adam(1e-2, layout="flat", implementation=implementation))
    assert_trees_within_ulps(got, want, max_ulps=4)  # parameters after 4 steps


def test_flat_layout_fused_kernel_only_when_no_concatenation():
    """One leaf per dtype: the native kernel updates it in place; more leaves: split-and-add
    (no concatenation of the parameters). Both equal the tree layout."""
    from adamjax import native

    rng = np.random.default_rng(1)
    single = {"w": jnp.asarray(rng.normal(size=(300, 7)), jnp.float32)}
    many = {"w": single["w"], "b": jnp.asarray(rng.normal(size=(7,)), jnp.float32)}
    for params, fused in ((single, True), (many, False)):
        opt = adamjax.adam(1e-2, layout="flat")
        step = jax.jit(lambda p, st, g, opt=opt: apply_gradients(opt, g, st, p))
        hlo = step.lower(params, opt.init(params), params).compile().as_text()
        uses_kernel = "custom-call(" in hlo
        assert uses_kernel == (fused and native.native_available()), (list(params), uses_kernel)
        n = sum(x.size for x in params.values())
        concats = [ln for ln in hlo.splitlines() if f"f32[{n}]" in ln and "concatenate(" in ln]
        assert len(concats) == (0 if fused else 1), concats  # the gradients only
        p, st = params, opt.init(params)
        q, qst = params, adamjax.adam(1e-2, implementation="jax").init(params)
        tree = adamjax.adam(1e-2, implementation="jax")
        ref = jax.jit(lambda q, st, g, tree=tree: apply_gradients(tree, g, st, q))
        for t in range(3):
            g = grads_like(params, t)
            p, st = step(p, st, g)
            q, qst = ref(q, qst, g)
        assert_trees_within_ulps(p, q, max_ulps=3)  # parameters after 3 steps


def test_training_on_flat_params_equals_tree_training():
    """Params kept flat, views taken inside the loss: same gradients, same steps."""
    params = {k: v for k, v in mixed_tree().items() if k != "half"}
    x = jnp.linspace(-1, 1, 7)

    def loss(p):
        h = jnp.tanh(x @ p["dense"]["w"] + p["dense"]["b"])
        return jnp.sum(h**2) * p["scalar"] + jnp.sum(p["conv"][0] ** 2) + jnp.sum(p["empty"])

    opt = adamjax.adam(1e-2, implementation="jax")
    flat, unravel = ravel(params)
    g_tree = jax.grad(loss)(params)
    g_flat = jax.grad(lambda f: loss(unravel(f)))(flat)
    np.testing.assert_array_equal(g_flat["float32"], ravel(g_tree)[0]["float32"])

    p, st = params, opt.init(params)
    fp, fst = flat, opt.init(flat)
    for _ in range(3):
        p, st = apply_gradients(opt, jax.grad(loss)(p), st, p)
        fp, fst = apply_gradients(opt, jax.grad(lambda f: loss(unravel(f)))(fp), fst, fp)
    assert_trees_within_ulps(unravel(fp), p, max_ulps=3)  # after 3 steps


def test_layout_mismatch_is_a_clear_error():
    layout = layout_of({"a": jnp.zeros(3), "b": jnp.zeros(2)})
    with pytest.raises(ValueError, match="leaves"):
        layout.ravel({"a": jnp.zeros(3)})


def test_bad_layout_name():
    with pytest.raises(ValueError, match="layout"):
        adamjax.adam(1e-3, layout="bucketed")

"""Python-number hyperparameters are validated at build time; traced ones are not."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamjax

BAD = [
    (lambda: adamjax.adam(-1e-3), "learning_rate", "-0.001"),
    (lambda: adamjax.adam(1e-3, b1=1.0), "b1", "1.0"),
    (lambda: adamjax.adam(1e-3, b1=-0.1), "b1", "-0.1"),
    (lambda: adamjax.adam(1e-3, b2=1.5), "b2", "1.5"),
    (lambda: adamjax.adam(1e-3, b2=float("nan")), "b2", "nan"),
    (lambda: adamjax.adam(1e-3, eps=-1e-8), "eps", "-1e-08"),
    (lambda: adamjax.adam(1e-3, eps_root=-1.0), "eps_root", "-1.0"),
    (lambda: adamjax.adam(1e-3, b1_decay=0.0), "b1_decay", "0.0"),
    (lambda: adamjax.adam(1e-3, b1_decay=1.01), "b1_decay", "1.01"),
    (lambda: adamjax.adamax(-0.002), "learning_rate", "-0.002"),
    (lambda: adamjax.adamax(b2=1.0), "b2", "1.0"),
    (lambda: adamjax.adagrad(0.1, eps=-1.0), "eps", "-1.0"),
    (lambda: adamjax.rmsprop(0.1, decay=1.0), "b2", "1.0"),
    (lambda: adamjax.sgd(-0.1), "learning_rate", "-0.1"),
    (lambda: adamjax.sgd(0.1, momentum=1.2), "momentum", "1.2"),
    (lambda: adamjax.adadelta(rho=-0.5), "rho", "-0.5"),
    (lambda: adamjax.inverse_sqrt_schedule(-1.0), "alpha", "-1.0"),
    (lambda: adamjax.temporal_averaging(adamjax.adam(0.1), decay=1.0), "decay", "1.0"),
    (lambda: adamjax.adam(np.float32(-1.0)), "learning_rate", "-1.0"),
]


@pytest.mark.parametrize("build,name,value", BAD)
def test_bad_python_hyperparameter_is_named(build, name, value):
    with pytest.raises(ValueError) as info:
        build()
    message = str(info.value)
    assert name in message and value in message, message


def test_boundary_values_are_accepted():
    adamjax.adam(0.0, b1=0.0, b2=0.0, eps=0.0, b1_decay=1.0)
    adamjax.adam(1e-3, b1_decay=1e-6)
    adamjax.sgd(0.0, momentum=0.0)


def test_bias_correction_must_be_boolean():
    with pytest.raises(TypeError, match="bias_correction"):
        adamjax.adam(1e-3, bias_correction="yes")
    with pytest.raises(TypeError, match="bias_correction"):
        adamjax.adam(1e-3, bias_correction=jnp.array(1.0))


def test_nesterov_without_momentum_is_rejected():
    with pytest.raises(ValueError, match="momentum"):
        adamjax.sgd(0.1, nesterov=True)


def test_traced_hyperparameters_are_not_checked_or_rejected():
    params = jnp.ones(3)

    @jax.jit
    def step(lr, b1):
        opt = adamjax.adam(lr, b1=b1)  # out-of-range values: not knowable at build time
        return opt.update(jnp.ones(3), opt.init(params), params)[0]

    out = step(-1.0, 1.5)
    assert out.shape == (3,)
    # Concrete JAX arrays are not checked either (that would force a device sync).
    adamjax.adam(jnp.array(-1.0))


NOT_A_NUMBER = [
    (lambda: adamjax.adam("0.1"), TypeError, ["learning_rate", "'0.1'", "str"]),
    (lambda: adamjax.adam(None), TypeError, ["learning_rate", "None"]),
    (lambda: adamjax.adam(float("inf")), ValueError, ["learning_rate", "inf", "finite"]),
    (lambda: adamjax.adam(float("nan")), ValueError, ["learning_rate", "nan"]),
    (lambda: adamjax.adam([1e-3]), TypeError, ["learning_rate", "[0.001]", "list"]),
    (lambda: adamjax.adam(True), TypeError, ["learning_rate", "True", "bool"]),
    (lambda: adamjax.adam(1e-3, b1="0.9"), TypeError, ["b1", "'0.9'"]),
    (lambda: adamjax.adam(1e-3, b2=None), TypeError, ["b2", "None"]),
    (lambda: adamjax.adam(1e-3, eps=float("inf")), ValueError, ["eps", "inf"]),
    (lambda: adamjax.adam(1e-3, eps_root="0"), TypeError, ["eps_root", "'0'"]),
    (lambda: adamjax.adam(1e-3, mu_dtype=jnp.int32), TypeError, ["mu_dtype", "int32"]),
    (lambda: adamjax.adam(1e-3, nu_dtype="float3"), TypeError, ["nu_dtype", "float3"]),
    (lambda: adamjax.adam(1e-3, nesterov=1), TypeError, ["nesterov", "1"]),
    (lambda: adamjax.adamax("x"), TypeError, ["learning_rate", "'x'"]),
    (lambda: adamjax.adagrad(0.1, eps=None), TypeError, ["eps", "None"]),
    (lambda: adamjax.rmsprop(0.1, decay="0.9"), TypeError, ["b2", "'0.9'"]),
    (lambda: adamjax.rmsprop(0.1, centered=1), TypeError, ["centered", "1"]),
    (lambda: adamjax.rmsprop(0.1, momentum="0.9"), TypeError, ["momentum", "'0.9'"]),
    (lambda: adamjax.sgd(0.1, momentum=float("nan")), ValueError, ["momentum", "nan"]),
    (lambda: adamjax.sgd(0.1, 0.9, nesterov="yes"), TypeError, ["nesterov", "'yes'"]),
    (lambda: adamjax.adadelta(None), TypeError, ["learning_rate", "None"]),
    (lambda: adamjax.adadelta(rho=float("inf")), ValueError, ["rho", "inf"]),
    (lambda: adamjax.adamw(0.1, weight_decay="0.1"), TypeError, ["weight_decay", "'0.1'"]),
    (lambda: adamjax.adamw(0.1, weight_decay=-1.0), ValueError, ["weight_decay", "-1.0"]),
    (lambda: adamjax.amsgrad(float("inf")), ValueError, ["learning_rate", "inf"]),
    (lambda: adamjax.nadam(0.1, b1=1.0), ValueError, ["b1", "1.0"]),
    (lambda: adamjax.radam(0.1, threshold="5"), TypeError, ["threshold", "'5'"]),
    (lambda: adamjax.radam(0.1, threshold=3.0), ValueError, ["threshold", "3.0"]),
    (lambda: adamjax.bias_correct(b1="0.9"), TypeError, ["b1", "'0.9'"]),
    (lambda: adamjax.sgd(0.1, 0.9, accumulator_dtype=jnp.int8), TypeError, ["state_dtype", "int8"]),
    (lambda: adamjax.adadelta(state_dtype="bf16x"), TypeError, ["state_dtype", "bf16x"]),
]


@pytest.mark.parametrize("build,error,fragments", NOT_A_NUMBER)
def test_wrong_type_or_nonfinite_hyperparameter_is_named(build, error, fragments):
    with pytest.raises(error) as info:
        build()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    "make",
    [
        lambda: adamjax.adam(1e-3),
        lambda: adamjax.adamax(),
        lambda: adamjax.adagrad(0.1),
        lambda: adamjax.rmsprop(0.1),
        lambda: adamjax.sgd(0.1),
        lambda: adamjax.adadelta(),
        lambda: adamjax.adamw(0.1),
        lambda: adamjax.amsgrad(0.1),
        lambda: adamjax.nadam(0.1),
        lambda: adamjax.radam(0.1),
    ],
)
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint8, jnp.bool_])
def test_integer_parameter_leaves_are_refused_at_init(make, dtype):
    params = {"w": jnp.ones(3), "layer": {"steps": jnp.zeros(2, dtype)}}
    with pytest.raises(TypeError) as info:
        make().init(params)
    message = str(info.value)
    for fragment in ("['layer']['steps']", jnp.dtype(dtype).name, "floating", "None"):
        assert fragment in message, message
    # The leaf set to None (frozen) passes.
    make().init({"w": jnp.ones(3), "layer": {"steps": None}})


def test_schedules_and_arrays_pass_validation():
    adamjax.adam(adamjax.inverse_sqrt_schedule(0.1))
    adamjax.adam(np.float32(0.1), b1=np.float64(0.9))
    adamjax.adam(jnp.asarray(0.1), b1=jnp.asarray(0.9), eps=np.asarray(1e-8))
    adamjax.sgd(0.1, momentum=jnp.asarray(0.9))
    with pytest.raises(TypeError, match="learning_rate.*bool"):
        adamjax.adam(jnp.asarray(True))


# ------------------------------------------------------------------------------------------
# Gradients that do not fit the parameters or the state: errors that name the leaf. Each
# case is a row of the table in docs/state-formats.md ("What a wrong input says"), which
# must show the first sentence of the message raised here.

_P = {"layer": {"b": jnp.zeros(3), "w": jnp.ones((3, 4))}}
_TRANSPOSED = {"layer": {"b": jnp.zeros(3), "w": jnp.ones((4, 3))}}
_MISSING = {"layer": {"w": jnp.ones((3, 4))}}
_EXTRA = {"layer": {"b": jnp.zeros(3), "w": jnp.ones((3, 4)), "v": jnp.ones(2)}}
_INT = {"layer": {"b": jnp.zeros(3), "w": jnp.ones((3, 4), jnp.int32)}}
_COMPLEX = {"layer": {"b": jnp.zeros(3), "w": jnp.ones((3, 4), jnp.complex64)}}


def _update(tx, grads, params=_P, state_for=_P):
    return jax.jit(tx.update)(grads, tx.init(state_for), params)


def _apply(tx, grads):
    return jax.jit(lambda g, s, p: adamjax.apply_gradients(tx, g, s, p))(grads, tx.init(_P), _P)


def _train_state(tx, grads):
    import adamjax.flax

    st = adamjax.flax.TrainState.create(apply_fn=None, params=_P, tx=tx)
    return jax.jit(lambda st, g: st.apply_gradients(grads=g))(st, grads)


def _chain():
    import optax

    return optax.chain(optax.clip_by_global_norm(1.0), adamjax.adam(1e-3))


WRONG_INPUTS = [
    # (row label in the docs, call, exception, first sentence of the message)
    (
        "transposed gradient, `update`",
        lambda: _update(adamjax.adam(1e-3), _TRANSPOSED),
        ValueError,
        "adam: the gradient at ['layer']['w'] has shape (4, 3), but the parameter there has "
        "shape (3, 4).",
    ),
    (
        "transposed gradient, `optax.chain(clip, adam)`",
        lambda: _update(_chain(), _TRANSPOSED),
        ValueError,
        "adam: the gradient at ['layer']['w'] has shape (4, 3), but the parameter there has "
        "shape (3, 4).",
    ),
    (
        "transposed gradient, `kahan_summation(adam)`",
        lambda: _update(adamjax.kahan_summation(adamjax.adam(1e-3)), _TRANSPOSED),
        ValueError,
        "kahan_summation: the gradient at ['layer']['w'] has shape (4, 3), but the parameter "
        "there has shape (3, 4).",
    ),
    (
        "transposed gradient, `apply_gradients` or `adamjax.flax.TrainState`",
        lambda: _train_state(adamjax.adam(1e-3), _TRANSPOSED),
        ValueError,
        "apply_gradients: the gradient at ['layer']['w'] has shape (4, 3), but the parameter "
        "there has shape (3, 4).",
    ),
    (
        "transposed gradient, Optax's `optax.adam` through `apply_gradients`",
        lambda: _apply(__import__("optax").adam(1e-3), _TRANSPOSED),
        ValueError,
        "apply_gradients: the gradient at ['layer']['w'] has shape (4, 3), but the parameter "
        "there has shape (3, 4).",
    ),
    (
        "`update` without params, state built for other parameters",
        lambda: _update(
            adamjax.adam(1e-3),
            _P,
            params=None,
            state_for={"layer": {"b": _P["layer"]["b"], "w": jnp.ones((4, 3))}},
        ),
        ValueError,
        "scale_by_moments: the gradient at ['layer']['w'] has shape (3, 4), but the optimizer "
        "state's first moment m holds shape (4, 3) there.",
    ),
    (
        "the same with 8-bit state",
        lambda: jax.jit(adamjax.adam(1e-3, state_dtype="int8").update)(
            {"w": jnp.ones((64, 80))},
            adamjax.adam(1e-3, state_dtype="int8").init({"w": jnp.ones((80, 64))}),
        ),
        ValueError,
        "adam: the gradient at ['w'] has shape (64, 80), but the optimizer state's first "
        "moment m holds shape (80, 64) there.",
    ),
    (
        "gradient tree lacks a parameter",
        lambda: _update(adamjax.adam(1e-3), _MISSING),
        ValueError,
        "adam: the gradients' tree does not match that of the parameters: there is a leaf at "
        "['layer']['b'] in the parameters but not in the gradients.",
    ),
    (
        "gradient tree has an extra leaf",
        lambda: _apply(adamjax.adam(1e-3), _EXTRA),
        ValueError,
        "apply_gradients: the gradients' tree does not match that of the parameters: there is "
        "a leaf at ['layer']['v'] in the gradients but not in the parameters.",
    ),
    # a gradient that is not real floating, for a float32 parameter: the same message
    *(
        (
            label,
            lambda grads=grads: _update(adamjax.adam(1e-3), grads),
            TypeError,
            f"adam: the gradient at ['layer']['w'] has dtype {dtype}, but the parameter there "
            "has dtype float32 (real floating).",
        )
        for label, grads, dtype in [
            ("integer gradient", _INT, "int32 (non-floating)"),
            ("complex gradient of a real parameter", _COMPLEX, "complex64 (complex)"),
        ]
    ),
    (
        '`state_dtype="int4"`',
        lambda: adamjax.adam(1e-3, state_dtype="int4"),
        TypeError,
        "scale_by_moments: state_dtype='int4' is not a floating dtype (int4): moments stored "
        "in it would be truncated.",
    ),
    (
        "`state_dtype=jnp.int8` (the dtype, not the string)",
        lambda: adamjax.adam(1e-3, state_dtype=jnp.int8),
        TypeError,
        "scale_by_moments: state_dtype=<class 'jax.numpy.int8'> is not a floating dtype "
        "(int8): moments stored in it would be truncated.",
    ),
    (
        '`state_dtype="float8"`',
        lambda: adamjax.adam(1e-3, state_dtype="float8"),
        TypeError,
        "scale_by_moments: state_dtype='float8' is not a dtype.",
    ),
    (
        '`mu_dtype="int8"` for SGD\'s momentum',
        lambda: adamjax.sgd(0.1, momentum=0.9, accumulator_dtype="int8"),
        TypeError,
        "trace: state_dtype='int8' (8-bit block-wise moments) is a storage format of the "
        "moment estimators (scale_by_moments, scale_by_inf_moment: adam, adamw, adamax, "
        "rmsprop); this state is stored in floating point.",
    ),
]


def _first_sentence(message: str) -> str:
    return message.split(". ")[0] + "."


@pytest.mark.parametrize(("label", "call", "error", "first"), WRONG_INPUTS)
def test_a_wrong_input_raises_a_message_that_names_it(label, call, error, first):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert _first_sentence(message) == first
    if "gradient" in label or "`update`" in label:
        assert "Likely cause:" in message
    if "dtype" in label:
        assert "Accepted:" in message or "Accepted here:" in message


def test_the_docs_table_shows_each_wrong_input_and_its_message():
    import pathlib

    doc = (pathlib.Path(__file__).parents[1] / "docs" / "state-formats.md").read_text()
    for label, _, _, first in WRONG_INPUTS:
        row = f"| {label} | `{first}` |"
        assert row in doc, row


def test_gradient_checks_add_nothing_to_the_compiled_step(monkeypatch):
    """The checks run on shapes at trace time: the compiled step is the same program."""
    import optax

    from adamjax import _validate

    tx = adamjax.adam(1e-3, implementation="jax")
    params = {"w": jnp.ones((3, 4))}

    def step(g, s, p):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    args = (params, tx.init(params), params)
    checked = jax.jit(lambda *a: step(*a)).lower(*args).as_text()  # a fresh trace each
    monkeypatch.setattr(_validate, "check_gradients", lambda *a, **k: None)
    assert jax.jit(lambda *a: step(*a)).lower(*args).as_text() == checked

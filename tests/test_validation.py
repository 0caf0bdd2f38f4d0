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

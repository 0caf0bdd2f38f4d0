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

"""adamjax against PyTorch's optimizers, a third independent implementation."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import adamjax
from tests import reference as ref

torch = pytest.importorskip("torch", reason="PyTorch is an optional reference (extra 'torch')")

STEPS = 100


def _torch_run(make, theta0, grads):
    p = torch.nn.Parameter(torch.tensor(theta0, dtype=torch.float64))
    opt = make([p])
    out = []
    for g in grads:
        opt.zero_grad()
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        out.append(p.detach().numpy().copy())
    return np.stack(out)


def _ours(opt, theta0, grads):
    with jax.enable_x64(True):
        p = jax.numpy.asarray(theta0)
        s = opt.init(p)
        out = []
        for g in grads:
            u, s = jax.jit(opt.update)(jax.numpy.asarray(g), s, p)
            p = adamjax.apply_updates(p, u)
            out.append(np.asarray(p))
        return np.stack(out)


CASES = [
    ("adam", adamjax.adam(1e-2), lambda ps: torch.optim.Adam(ps, lr=1e-2, eps=1e-8)),
    (
        "adam-b1=0.5",
        adamjax.adam(3e-3, b1=0.5, b2=0.99, eps=1e-6),
        lambda ps: torch.optim.Adam(ps, lr=3e-3, betas=(0.5, 0.99), eps=1e-6),
    ),
    ("adamax", adamjax.adamax(0.002, eps=1e-8), lambda ps: torch.optim.Adamax(ps, lr=0.002)),
    (
        "sgd-nesterov",
        adamjax.sgd(0.01, 0.9, nesterov=True),
        lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9, nesterov=True),
    ),
    (
        "adagrad",
        adamjax.adagrad(0.1, eps=0.0),
        lambda ps: torch.optim.Adagrad(ps, lr=0.1, eps=0.0),
    ),
    (
        "adadelta",
        adamjax.adadelta(1.0, rho=0.9, eps=1e-6),
        lambda ps: torch.optim.Adadelta(ps, lr=1.0, rho=0.9, eps=1e-6),
    ),
]


@pytest.mark.parametrize("name,ours,theirs", CASES, ids=[c[0] for c in CASES])
def test_matches_pytorch(name, ours, theirs):
    rng = np.random.default_rng(11)
    theta0 = rng.normal(size=7)
    grads = rng.normal(size=(STEPS, 7)) + 0.2
    np.testing.assert_allclose(
        _ours(ours, theta0, grads), _torch_run(theirs, theta0, grads), rtol=1e-9, atol=1e-11
    )


def test_rmsprop_differs_from_pytorch_by_eps_placement():
    """PyTorch's RMSprop divides by sqrt(v) + eps; the paper's (and ours) by sqrt(v + eps)."""
    rng = np.random.default_rng(12)
    theta0 = rng.normal(size=5)
    grads = rng.normal(size=(20, 5)) * 1e-3
    ours = _ours(adamjax.rmsprop(1e-2, 0.9, eps=1e-6), theta0, grads)
    theirs = _torch_run(
        lambda ps: torch.optim.RMSprop(ps, lr=1e-2, alpha=0.9, eps=1e-6), theta0, grads
    )
    assert np.max(np.abs(ours - theirs)) > 1e-3
    # With eps = 0 the two definitions coincide.
    ours0 = _ours(adamjax.rmsprop(1e-2, 0.9, eps=0.0), theta0, grads)
    theirs0 = _torch_run(
        lambda ps: torch.optim.RMSprop(ps, lr=1e-2, alpha=0.9, eps=0.0), theta0, grads
    )
    np.testing.assert_allclose(ours0, theirs0, rtol=1e-9)


FAMILY = [
    (
        "adamw",
        adamjax.adamw(1e-2, weight_decay=0.05),
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.05, eps=1e-8),
    ),
    (
        # PyTorch's AMSGrad takes the maximum of the raw v_t: keep_max_nu before bias_correct.
        "amsgrad-raw-max",
        adamjax.chain(
            adamjax.scale_by_moments(0.9, 0.99),
            adamjax.keep_max_nu(),
            adamjax.bias_correct(),
            adamjax.precondition(1e-8),
            adamjax.scale_by_lr(1e-2),
        ),
        lambda ps: torch.optim.Adam(ps, lr=1e-2, betas=(0.9, 0.99), amsgrad=True),
    ),
    (
        # With eps = 0 PyTorch's eps placement (added to sqrt(v_t)) is immaterial.
        "radam-eps=0",
        adamjax.radam(1e-2, eps=0.0),
        lambda ps: torch.optim.RAdam(ps, lr=1e-2, eps=0.0),
    ),
]


@pytest.mark.parametrize("name,ours,theirs", FAMILY, ids=[c[0] for c in FAMILY])
def test_family_matches_pytorch(name, ours, theirs):
    rng = np.random.default_rng(13)
    theta0 = rng.normal(size=7)
    # a large early gradient: AMSGrad's maximum then binds; RAdam crosses its threshold at t=6
    grads = np.concatenate([rng.normal(size=(3, 7)) * 10, rng.normal(size=(STEPS, 7)) + 0.2])
    np.testing.assert_allclose(
        _ours(ours, theta0, grads), _torch_run(theirs, theta0, grads), rtol=1e-9, atol=1e-11
    )


def test_amsgrad_pytorch_differs_from_optax_placement():
    rng = np.random.default_rng(14)
    theta0 = rng.normal(size=5)
    grads = np.concatenate([np.full((5, 5), 10.0), rng.normal(size=(200, 5)) * 0.1])
    make = lambda ps: torch.optim.Adam(ps, lr=1e-2, betas=(0.9, 0.99), amsgrad=True)  # noqa: E731
    theirs = _torch_run(make, theta0, grads)
    ours = _ours(adamjax.amsgrad(1e-2, b2=0.99), theta0, grads)
    assert np.max(np.abs(ours - theirs)) > 1e-3


def test_radam_pytorch_eps_is_added_before_bias_correction():
    rng = np.random.default_rng(15)
    theta0 = rng.normal(size=5)
    grads = rng.normal(size=(50, 5)) * 1e-3
    theirs = _torch_run(lambda ps: torch.optim.RAdam(ps, lr=1e-2, eps=1e-4), theta0, grads)
    np.testing.assert_allclose(theirs, ref.radam(theta0, grads, 1e-2, eps=1e-4, eps_raw=True))
    ours = _ours(adamjax.radam(1e-2, eps=1e-4), theta0, grads)
    np.testing.assert_allclose(ours, ref.radam(theta0, grads, 1e-2, eps=1e-4), rtol=1e-10)
    assert np.max(np.abs(ours - theirs)) > 1e-4


def test_nadam_pytorch_uses_a_momentum_schedule():
    """PyTorch's NAdam is Dozat's algorithm with mu_t = b1 (1 - 0.5 * 0.96^(0.004 t));
    adamjax's (Optax's) keeps mu_t = b1. Each matches the transcription with its schedule."""
    rng = np.random.default_rng(16)
    theta0 = rng.normal(size=5)
    grads = rng.normal(size=(STEPS, 5)) + 0.3

    def mu(t):
        return 0.9 * (1 - 0.5 * 0.96 ** (t * 0.004))

    theirs = _torch_run(lambda ps: torch.optim.NAdam(ps, lr=1e-2), theta0, grads)
    np.testing.assert_allclose(theirs, ref.nadam(theta0, grads, 1e-2, mu=mu), rtol=1e-9)
    ours = _ours(adamjax.nadam(1e-2), theta0, grads)
    np.testing.assert_allclose(ours, ref.nadam(theta0, grads, 1e-2), rtol=1e-9)
    assert np.max(np.abs(ours - theirs)) > 1e-3

"""A task = a model plus its training cost and evaluation, as pure functions of arrays.

``cost(params, x, y, rng, train)`` is what the optimizer minimizes (mean over the minibatch,
plus the L2 penalty where the paper uses one); ``evaluate(params, x, y)`` returns per-example
losses and correctness for test metrics. Images come in as ``float32`` in ``[0, 1]``, flat:
shape ``(N, H*W*C)`` (``(N, 784)`` for MNIST); the CNN reshapes them to NHWC ``image_shape``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from experiments import models

__all__ = ["Task", "make_task", "MODELS"]

MODELS = ("logreg", "bow_logreg", "mlp", "cnn", "vae")
_EVAL_RNG = 1234  # fixed latent noise for the VAE's evaluation


@dataclass(frozen=True, eq=False)
class Task:
    """Pure functions of one model: ``init(rng)``, ``cost``, ``evaluate``, ``penalty``.

    Compared and hashed by identity, so compiled functions can be cached per task;
    ``activation_floats`` estimates the activations per example, for memory budgeting.
    """

    name: str
    module: nn.Module
    init: Callable[[jax.Array], Any]
    cost: Callable[..., jax.Array]
    evaluate: Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
    penalty: Callable[[Any], jax.Array]
    classifier: bool
    activation_floats: int = 4096


def _l2(weight_decay: float) -> Callable[[Any], jax.Array]:
    """``weight_decay / 2 * sum ||W||^2`` over the kernels (not the biases)."""

    def penalty(params):
        if weight_decay == 0:
            return jnp.zeros((), jnp.float32)
        leaves = jax.tree_util.tree_leaves_with_path(params)
        kernels = [x for path, x in leaves if "kernel" in jax.tree_util.keystr(path)]
        return 0.5 * weight_decay * sum(jnp.sum(jnp.square(k)) for k in kernels)

    return penalty


def _classifier(name: str, module: nn.Module, weight_decay: float, image_shape, act: int) -> Task:
    penalty = _l2(weight_decay)

    def prep(x):
        return x.reshape(x.shape[0], *image_shape) if name == "cnn" else x

    def init(rng):
        dummy = jnp.zeros((1, math.prod(image_shape)), jnp.float32)
        return module.init({"params": rng}, prep(dummy))["params"]

    def cost(params, x, y, rng, train=True):
        rngs = {} if rng is None else {"dropout": rng}
        logits = module.apply({"params": params}, prep(x), train=train, rngs=rngs)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return nll + penalty(params)

    def evaluate(params, x, y):
        logits = module.apply({"params": params}, prep(x), train=False)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return nll, (jnp.argmax(logits, -1) == y).astype(jnp.float32)

    return Task(name, module, init, cost, evaluate, penalty, classifier=True, activation_floats=act)


def _vae(module: models.VAE) -> Task:
    def neg_elbo(params, x, rng):
        logits, mean, logvar = module.apply({"params": params}, x, rng)
        rec = optax.sigmoid_binary_cross_entropy(logits, x).sum(-1)
        kl = 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar, axis=-1)
        return rec + kl

    def init(rng):
        return module.init({"params": rng}, jnp.zeros((1, 784)), jax.random.key(0))["params"]

    def cost(params, x, y, rng, train=True):
        del y, train
        return neg_elbo(params, x, rng).mean()

    def evaluate(params, x, y):
        loss = neg_elbo(params, x, jax.random.key(_EVAL_RNG))
        return loss, jnp.zeros_like(loss)

    return Task(
        "vae", module, init, cost, evaluate, _l2(0.0), classifier=False, activation_floats=5000
    )


@functools.cache
def make_task(
    model: str,
    *,
    weight_decay: float = 0.0,
    dropout: float = 0.0,
    input_dropout: float = 0.0,
    image_shape: tuple[int, int, int] = (28, 28, 1),
) -> Task:
    """Build (once, then cached) the task for ``model`` (one of :data:`MODELS`).

    ``image_shape`` (H, W, C) is the CNN's input (MNIST's by default, (32, 32, 3) for
    CIFAR-10); the other models take MNIST-sized flat images.
    """
    if model == "logreg":
        return _classifier(model, models.LogisticRegression(), weight_decay, (784,), 800)
    if model == "bow_logreg":  # IMDB sentiment: 2 classes on 10,000-word bag-of-words vectors
        module = models.LogisticRegression(num_classes=2, input_dropout=input_dropout)
        return _classifier(model, module, weight_decay, (math.prod(image_shape),), 20_000)
    if model == "mlp":
        mlp = models.MLP(dropout=dropout, input_dropout=input_dropout)
        return _classifier(model, mlp, weight_decay, (784,), 6000)
    if model == "cnn":
        act = 200_000 * (image_shape[0] * image_shape[1]) // (28 * 28)  # conv activations
        return _classifier(model, models.CNN(dropout=dropout), weight_decay, image_shape, act)
    if model == "vae":
        return _vae(models.VAE())
    raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")

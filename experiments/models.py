"""The paper's models, in Flax linen.

- :class:`LogisticRegression`: multiclass logistic regression (Sec. 6.1, Fig. 1).
- :class:`MLP`: 784-1000-1000-10 ReLU, optional dropout (Sec. 6.2, Fig. 2).
- :class:`CNN`: c64-c64-c128-1000, 5x5 convolutions, 3x3 max-pooling with stride 2 (Sec. 6.3).
- :class:`VAE`: Kingma & Welling (2013), one hidden layer of 500 softplus units in encoder and
  decoder, 50-d Gaussian latent, Bernoulli decoder (Sec. 6.4, Fig. 4).

The losses (with L2 weight decay where the paper uses it) live in :mod:`experiments.tasks`.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["LogisticRegression", "MLP", "CNN", "VAE", "Dropout", "keep_mask", "keep_fraction"]

_FIELD_BITS = (1, 2, 4, 8, 16)


def keep_fraction(rate: float) -> tuple[int, int]:
    """``(bits, threshold)`` of a keep mask: keep where a ``bits``-bit random field is below
    ``threshold``, so the kept fraction is ``threshold / 2**bits``.

    ``bits`` is the fewest of 1, 2, 4, 8, 16 for which ``(1 - rate) * 2**bits`` is a whole
    number (the fraction is then exact: rate 0.5 takes one bit per unit), else 16 with the
    nearest threshold (rate 0.2 keeps 52429/65536 = 0.800003 of the units).
    """
    keep = 1.0 - rate
    for bits in _FIELD_BITS:
        if (keep * 2**bits).is_integer():
            return bits, int(keep * 2**bits)
    return 16, round(keep * 2**16)


def keep_mask(rng: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """A boolean keep mask of ``shape`` drawn from few random bits (see :func:`keep_fraction`).

    Each 32-bit word of ``jax.random.bits`` holds ``32 / bits`` independent uniform fields,
    so a rate-0.5 mask costs 1/32 of the random words of ``jax.random.bernoulli`` (which
    draws one 32-bit word per unit), and a rate-0.2 mask half of them.
    """
    bits, threshold = keep_fraction(rate)
    per_word = 32 // bits
    n = math.prod(shape)
    words = jax.random.bits(rng, (-(-n // per_word),), jnp.uint32)
    shifts = jnp.arange(per_word, dtype=jnp.uint32) * bits
    fields = (words[:, None] >> shifts) & jnp.uint32(2**bits - 1)
    return (fields.reshape(-1)[:n] < threshold).reshape(shape)


class Dropout(nn.Module):
    r"""Inverted dropout from a cheap mask: :math:`y = x \odot m / q`, ``m`` ~ Bernoulli(``q``).

    ``q = threshold / 2**bits`` is the kept fraction of :func:`keep_fraction` (1 - ``rate``
    exactly, or to 3e-6), and dividing by it keeps :math:`E[y] = x`. The experiments' models
    use it instead of ``flax.linen.Dropout`` because on the CPU the masks of
    ``jax.random.bernoulli`` (one threefry word per unit) cost about a third of the MLP's
    whole training step. It takes the ``'dropout'`` rng; with ``deterministic`` or rate 0 it
    is the identity.
    """

    rate: float
    deterministic: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.deterministic or self.rate == 0.0:
            return x
        bits, threshold = keep_fraction(self.rate)
        mask = keep_mask(self.make_rng("dropout"), self.rate, x.shape)
        return jnp.where(mask, x * (2**bits / threshold), jnp.zeros_like(x))


class LogisticRegression(nn.Module):
    """Multiclass logistic regression: logits ``x @ W + b`` on flattened inputs.

    ``input_dropout`` drops input features while training (the paper's 50 % dropout on the
    IMDB bag-of-words vectors); it needs a ``'dropout'`` rng with ``train=True``.
    """

    num_classes: int = 10
    input_dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        if self.input_dropout:
            x = Dropout(self.input_dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="linear")(x)


class MLP(nn.Module):
    """Two hidden layers of ``hidden`` ReLU units.

    ``input_dropout`` and ``dropout`` are the drop rates of the input and of each hidden
    layer; dropout is active only with ``train=True`` and needs a ``'dropout'`` rng.
    """

    hidden: int = 1000
    num_classes: int = 10
    input_dropout: float = 0.0
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        x = Dropout(self.input_dropout, deterministic=not train)(x)
        for i in range(2):
            x = nn.relu(nn.Dense(self.hidden, name=f"hidden{i}")(x))
            x = Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="out")(x)


class CNN(nn.Module):
    """The paper's CNN: three 5x5 conv layers (64, 64, 128 channels) with ReLU, each followed
    by 3x3 max-pooling with stride 2, then a fully connected layer of 1000 ReLU units.

    Inputs are ``(N, H, W)`` or ``(N, H, W, C)`` images; ``dropout`` applies to the input and
    to the fully connected layer, as in the paper.
    """

    features: tuple[int, ...] = (64, 64, 128)
    hidden: int = 1000
    num_classes: int = 10
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if x.ndim == 3:
            x = x[..., None]
        x = Dropout(self.dropout, deterministic=not train)(x)
        for i, f in enumerate(self.features):
            x = nn.relu(nn.Conv(f, (5, 5), padding="SAME", name=f"conv{i}")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden, name="fc")(x))
        x = Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="out")(x)


class VAE(nn.Module):
    """Variational auto-encoder with a Gaussian encoder and a Bernoulli decoder.

    ``__call__(x, rng)`` returns ``(logits, mean, logvar)``: the decoder's Bernoulli logits
    for one latent sample ``z = mean + exp(logvar/2) * eps``, drawn with ``rng``.
    """

    hidden: int = 500
    latent: int = 50
    out_dim: int = 784

    def setup(self):
        self.enc_hidden = nn.Dense(self.hidden)
        self.enc_mean = nn.Dense(self.latent)
        self.enc_logvar = nn.Dense(self.latent)
        self.dec_hidden = nn.Dense(self.hidden)
        self.dec_out = nn.Dense(self.out_dim)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean and log-variance of q(z|x)."""
        h = nn.softplus(self.enc_hidden(x.reshape(x.shape[0], -1)))
        return self.enc_mean(h), self.enc_logvar(h)

    def decode(self, z: jax.Array) -> jax.Array:
        """Bernoulli logits of p(x|z)."""
        return self.dec_out(nn.softplus(self.dec_hidden(z)))

    def __call__(self, x: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        mean, logvar = self.encode(x)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
        return self.decode(z), mean, logvar

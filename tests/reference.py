"""Float64 NumPy transcriptions of the papers' algorithms, written independently of adamjax.

Each function runs an optimizer on one array for a whole sequence of gradients and returns
the parameters after every step, shape ``(T, *theta0.shape)``. They follow the papers line by
line (Kingma & Ba 2015 Algorithms 1 and 2, Sec. 4 and 7.2; Duchi et al. 2011; Tieleman &
Hinton 2012; Zeiler 2012), not adamjax's code.
"""

from __future__ import annotations

import numpy as np


def _moments(m, v, g, b1, b2):
    """Algorithm 1's biased first and second raw moment estimates after gradient g."""
    return b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2


def adam(
    theta0, grads, alpha, b1=0.9, b2=0.999, eps=1e-8, bias_correction=True, lam=1.0, alpha_fn=None
):
    """Algorithm 1 (with b1_t = b1 * lam^(t-1) from Sec. 4); alpha_fn(t) overrides alpha."""
    theta = np.array(theta0, np.float64)
    m = np.zeros_like(theta)  # Initialize 1st moment vector
    v = np.zeros_like(theta)  # Initialize 2nd moment vector
    out = []
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, np.float64)
        b1t = b1 * lam ** (t - 1)
        m = b1t * m + (1 - b1t) * g  # Update biased first moment estimate
        v = b2 * v + (1 - b2) * g**2  # Update biased second raw moment estimate
        if bias_correction:
            m_hat = m / (1 - b1**t)  # Compute bias-corrected first moment estimate
            v_hat = v / (1 - b2**t)  # Compute bias-corrected second raw moment estimate
        else:
            m_hat, v_hat = m, v
        a = alpha if alpha_fn is None else alpha_fn(t)
        theta = theta - a * m_hat / (np.sqrt(v_hat) + eps)  # Update parameters
        out.append(theta.copy())
    return np.stack(out)


def adamax(theta0, grads, alpha=0.002, b1=0.9, b2=0.999, eps=1e-8):
    """Algorithm 2 (eps added to u_t only to guard against division by zero)."""
    theta = np.array(theta0, np.float64)
    m = np.zeros_like(theta)
    u = np.zeros_like(theta)  # exponentially weighted infinity norm
    out = []
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, np.float64)
        m = b1 * m + (1 - b1) * g
        u = np.maximum(b2 * u, np.abs(g))
        theta = theta - (alpha / (1 - b1**t)) * m / (u + eps)
        out.append(theta.copy())
    return np.stack(out)


def adagrad(theta0, grads, alpha, eps=1e-8):
    """theta -= alpha * g / sqrt(sum_{i<=t} g_i^2 + eps)."""
    theta = np.array(theta0, np.float64)
    s = np.zeros_like(theta)
    out = []
    for g in grads:
        g = np.asarray(g, np.float64)
        s = s + g**2
        theta = theta - alpha * g / np.sqrt(s + eps)
        out.append(theta.copy())
    return np.stack(out)


def rmsprop(theta0, grads, alpha, decay=0.9, eps=1e-8):
    """v = decay v + (1 - decay) g^2; theta -= alpha g / sqrt(v + eps)."""
    theta = np.array(theta0, np.float64)
    v = np.zeros_like(theta)
    out = []
    for g in grads:
        g = np.asarray(g, np.float64)
        v = decay * v + (1 - decay) * g**2
        theta = theta - alpha * g / np.sqrt(v + eps)
        out.append(theta.copy())
    return np.stack(out)


def sgd(theta0, grads, alpha, momentum=0.0, nesterov=False):
    """Heavy ball b = mu b + g; step g + mu b (Nesterov) or b."""
    theta = np.array(theta0, np.float64)
    b = np.zeros_like(theta)
    out = []
    for g in grads:
        g = np.asarray(g, np.float64)
        b = momentum * b + g
        step = g + momentum * b if nesterov else b
        theta = theta - alpha * step
        out.append(theta.copy())
    return np.stack(out)


def adadelta(theta0, grads, alpha=1.0, rho=0.95, eps=1e-6):
    """Zeiler 2012, Algorithm 1 (times an optional alpha)."""
    theta = np.array(theta0, np.float64)
    eg2 = np.zeros_like(theta)
    edx2 = np.zeros_like(theta)
    out = []
    for g in grads:
        g = np.asarray(g, np.float64)
        eg2 = rho * eg2 + (1 - rho) * g**2
        dx = -np.sqrt(edx2 + eps) / np.sqrt(eg2 + eps) * g
        edx2 = rho * edx2 + (1 - rho) * dx**2
        theta = theta + alpha * dx
        out.append(theta.copy())
    return np.stack(out)


def temporal_average(thetas, b2=0.999):
    """Sec. 7.2: theta_bar_t = b2 theta_bar + (1 - b2) theta_t, divided by 1 - b2^t."""
    bar = np.zeros_like(thetas[0], dtype=np.float64)
    out = []
    for t, th in enumerate(thetas, start=1):
        bar = b2 * bar + (1 - b2) * th
        out.append(bar / (1 - b2**t))
    return np.stack(out)


def adamw(theta0, grads, alpha, b1=0.9, b2=0.999, eps=1e-8, wd=1e-4, decay=True):
    """Loshchilov & Hutter 2019, Algorithm 2 (AdamW) with the schedule multiplier eta_t = alpha.

    theta_t = theta_{t-1} - alpha * (m_hat / (sqrt(v_hat) + eps) + wd * theta_{t-1});
    ``decay`` may be a boolean array selecting the entries that decay (the mask); ``wd``
    may be a schedule ``wd(t - 1)`` of the 0-based step.
    """
    theta = np.array(theta0, np.float64)
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    mask = np.broadcast_to(np.asarray(decay, bool), theta.shape)
    out = []
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, np.float64)
        m, v = _moments(m, v, g, b1, b2)
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        wd_t = wd(t - 1) if callable(wd) else wd
        decay_term = np.where(mask, wd_t * theta, 0.0)
        theta = theta - alpha * (m_hat / (np.sqrt(v_hat) + eps) + decay_term)
        out.append(theta.copy())
    return np.stack(out)


def amsgrad(theta0, grads, alpha, b1=0.9, b2=0.999, eps=1e-8, max_of="corrected"):
    """Reddi, Kale & Kumar 2018, Algorithm 2 (AMSGrad), with the three placements in use.

    max_of="corrected": v_max = max(v_max, v_t / (1 - b2^t)), m corrected (Optax);
    max_of="raw": v_max = max(v_max, v_t), then divided by (1 - b2^t), m corrected (PyTorch);
    max_of="paper": v_max = max(v_max, v_t), no bias correction at all (the paper).
    """
    theta = np.array(theta0, np.float64)
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    v_max = np.zeros_like(theta)
    out = []
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, np.float64)
        m, v = _moments(m, v, g, b1, b2)
        if max_of == "paper":
            v_max = np.maximum(v_max, v)
            step = m / (np.sqrt(v_max) + eps)
        elif max_of == "raw":
            v_max = np.maximum(v_max, v)
            step = (m / (1 - b1**t)) / (np.sqrt(v_max / (1 - b2**t)) + eps)
        else:
            v_max = np.maximum(v_max, v / (1 - b2**t))
            step = (m / (1 - b1**t)) / (np.sqrt(v_max) + eps)
        theta = theta - alpha * step
        out.append(theta.copy())
    return np.stack(out)


def nadam(theta0, grads, alpha, b1=0.9, b2=0.999, eps=1e-8, mu=None):
    """Dozat 2016, Algorithm 2 (NAdam), without the extra b2 factor on n_hat.

    mu(t) is the momentum schedule mu_t (default: the constant b1); m_t averages with b1:
        g_hat = g / (1 - prod_{i<=t} mu_i)
        m_hat = m_t / (1 - prod_{i<=t+1} mu_i)
        m_bar = (1 - mu_t) g_hat + mu_{t+1} m_hat
        theta -= alpha * m_bar / (sqrt(n_t / (1 - b2^t)) + eps)
    """
    mu = (lambda t: b1) if mu is None else mu
    theta = np.array(theta0, np.float64)
    m = np.zeros_like(theta)
    n = np.zeros_like(theta)
    prod = 1.0
    out = []
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, np.float64)
        prod *= mu(t)
        m, n = _moments(m, n, g, b1, b2)
        g_hat = g / (1 - prod)
        m_hat = m / (1 - prod * mu(t + 1))
        m_bar = (1 - mu(t)) * g_hat + mu(t + 1) * m_hat
        theta = theta - alpha * m_bar / (np.sqrt(n / (1 - b2**t)) + eps)
        out.append(theta.copy())
    return np.stack(out)


def radam(theta0, grads, alpha, b1=0.9, b2=0.999, eps=1e-8, threshold=5.0, eps_raw=False):
    """Liu et al. 2020, Algorithm 2 (RAdam); ``eps_raw`` adds eps to sqrt(v_t) (PyTorch)."""
    theta = np.array(theta0, np.float64)
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    rho_inf = 2 / (1 - b2) - 1
    out = []
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, np.float64)
        m, v = _moments(m, v, g, b1, b2)
        m_hat = m / (1 - b1**t)
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho >= threshold:
            r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            if eps_raw:
                step = r * m_hat * np.sqrt(1 - b2**t) / (np.sqrt(v) + eps)
            else:
                step = r * m_hat / (np.sqrt(v / (1 - b2**t)) + eps)
        else:
            step = m_hat
        theta = theta - alpha * step
        out.append(theta.copy())
    return np.stack(out)

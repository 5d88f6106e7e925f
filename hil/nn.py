"""Numpy building blocks for the host side of the MLP.

Layout convention: a batch is ``x`` of shape ``(N, n_in)``, a weight matrix ``W``
has shape ``(n_in, n_out)`` and a layer computes ``z = x @ W + b``. Losses are
means over the batch, and return the gradient with respect to their input so
the backward pass can chain from it directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = [
    "Activation",
    "ACTIVATIONS",
    "get_activation",
    "softmax",
    "softmax_cross_entropy",
    "mse",
    "init_weights",
]


@dataclass(frozen=True)
class Activation:
    """``fn(z)`` and its elementwise derivative ``grad(z) = d fn / dz`` (both of ``z``)."""

    name: str
    fn: Callable[[np.ndarray], np.ndarray]
    grad: Callable[[np.ndarray], np.ndarray]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # numerically stable for large |z|: exp only ever of a non-positive number
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation("relu", lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(np.float64)),
    "tanh": Activation("tanh", np.tanh, lambda z: 1.0 - np.tanh(z) ** 2),
    "sigmoid": Activation("sigmoid", _sigmoid, lambda z: _sigmoid(z) * (1.0 - _sigmoid(z))),
    "identity": Activation("identity", lambda z: np.asarray(z, dtype=np.float64), np.ones_like),
}


def get_activation(name: str) -> Activation:
    """Look up an activation by name (``relu``, ``tanh``, ``sigmoid``, ``identity``)."""
    key = str(name).strip().lower()
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid names: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[key]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax (max-shifted, stable)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of ``softmax(logits)`` against int ``labels``.

    Returns ``(loss, dlogits)`` with ``dlogits = (softmax - onehot) / N``.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or y.shape != (z.shape[0],):
        raise ValueError(f"need logits (N, C) and labels (N,), got {z.shape} and {y.shape}")
    n = z.shape[0]
    shifted = z - z.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(n)
    loss = float(-log_p[rows, y].mean())
    d = np.exp(log_p)
    d[rows, y] -= 1.0
    return loss, d / n


def mse(pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean squared error over ALL elements: ``mean((pred - target)²)``.

    Returns ``(loss, dpred)`` with ``dpred = 2 (pred - target) / pred.size``.
    """
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"shapes differ: {p.shape} vs {t.shape}")
    diff = p - t
    return float(np.mean(diff * diff)), 2.0 * diff / diff.size


def init_weights(
    shape: tuple[int, int], rng: np.random.Generator, scheme: str = "he"
) -> np.ndarray:
    """Random weights of ``shape = (fan_in, fan_out)``.

    ``he``: normal, std ``sqrt(2/fan_in)`` (for ReLU). ``he_uniform``: uniform,
    limit ``sqrt(6/fan_in)``. ``xavier``: uniform, limit ``sqrt(6/(fan_in+fan_out))``
    (Glorot, for tanh/sigmoid). ``xavier_normal``: normal, std
    ``sqrt(2/(fan_in+fan_out))``.
    """
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be (fan_in, fan_out) with both >= 1, got {shape}")
    fan_in, fan_out = int(shape[0]), int(shape[1])
    key = str(scheme).strip().lower()
    if key == "he":
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out))
    if key == "he_uniform":
        lim = np.sqrt(6.0 / fan_in)
        return rng.uniform(-lim, lim, size=(fan_in, fan_out))
    if key == "xavier":
        lim = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-lim, lim, size=(fan_in, fan_out))
    if key == "xavier_normal":
        return rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), size=(fan_in, fan_out))
    raise ValueError(
        f"unknown init scheme {scheme!r}; valid: he, he_uniform, xavier, xavier_normal"
    )

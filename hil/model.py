"""A multilayer perceptron whose linear layers may live on the array.

Forward and backward passes are numpy on the host around the layers' own
``forward``/``backward_input`` (VMM and transposed VMM on the array for analog
layers); biases stay digital.  Gradients are computed on the host.
"""

from __future__ import annotations

import numpy as np

from hil.nn import get_activation


class MLP:
    def __init__(self, layers: list, biases: list[np.ndarray], hidden: str = "relu", output: str = "identity"):
        self.layers = layers
        self.biases = [np.array(b, dtype=np.float64) for b in biases]
        self.act_hidden = get_activation(hidden)
        self.act_out = get_activation(output)

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, list]:
        cache, a = [], x
        for k, (layer, b) in enumerate(zip(self.layers, self.biases)):
            z = layer.forward(a) + b
            act = self.act_out if k == len(self.layers) - 1 else self.act_hidden
            cache.append((a, z, act))
            a = act.fn(z)
        return a, cache

    def backward(self, cache: list, d_out: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Gradients of the loss for every weight matrix and bias, given dL/d(output)."""
        gw: list[np.ndarray] = [None] * len(self.layers)  # type: ignore[list-item]
        gb: list[np.ndarray] = [None] * len(self.layers)  # type: ignore[list-item]
        delta = d_out
        for k in range(len(self.layers) - 1, -1, -1):
            a_in, z, act = cache[k]
            delta = delta * act.grad(z)
            gw[k] = a_in.T @ delta
            gb[k] = delta.sum(axis=0)
            if k:
                delta = self.layers[k].backward_input(delta)
        return gw, gb

    def predict(self, x: np.ndarray, batch: int = 256) -> np.ndarray:
        return np.concatenate([self.forward(x[i:i + batch])[0] for i in range(0, len(x), batch)])

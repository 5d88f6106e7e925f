"""Host-side optimizers that *propose* parameter changes.

``step(grads)`` returns the desired change ``Δ`` of every parameter and applies
nothing: the training loop applies it digitally (biases, ``float`` runs) or maps
it to conductance changes for an :mod:`hil.update_rules` rule (array weights,
where the device holds the weight and the realised change differs from ``Δ``).
Optimizer state (momentum, Adam moments) always stays digital on the host.

Parameters are lists of numpy arrays; the state is created lazily from the shapes
of the first ``grads`` and must keep the same shapes afterwards. Arithmetic is in
float64. ``state_dict()`` returns copies (numpy arrays + Python scalars) and
``load_state_dict()`` restores them, so a resumed run continues bit-identically.

Weight decay is classic L2 added to the gradient (PyTorch ``SGD``/``Adam``
convention) and therefore needs the current parameter values: pass ``params`` to
``step`` when ``weight_decay > 0`` (on the array, the loop's current weight
estimate). ``lr`` is a plain attribute: schedules may change it between steps.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = ["Optimizer", "SGD", "Adam", "make_optimizer", "scheduled_lr"]


def scheduled_lr(lr: float, schedule: str, step: int, total_steps: int) -> float:
    """The learning rate of step ``step`` (0-based) of ``total_steps``: ``constant``, or ``cosine`` annealing
    ``lr * (1 + cos(pi * step / total_steps)) / 2`` (``lr`` at the first step, towards 0 at the last).

    A function of the step alone, so a resumed run takes the same rates."""
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}: use 'constant' or 'cosine'")


class Optimizer:
    """Shared plumbing: validation, lazy state, step counter."""

    name = ""

    def __init__(self, lr: float, weight_decay: float = 0.0):
        if not (np.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be finite and > 0, got {lr!r}")
        if not (np.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.t = 0  # number of steps taken
        self._shapes: list[tuple[int, ...]] | None = None

    def _prepare(
        self, grads: Sequence[np.ndarray], params: Sequence[np.ndarray] | None
    ) -> list[np.ndarray]:
        g = [np.asarray(x, dtype=np.float64) for x in grads]
        for x in g:
            if not np.all(np.isfinite(x)):
                raise ValueError("gradient contains NaN or infinite values")
        shapes = [x.shape for x in g]
        if self._shapes is not None and shapes != self._shapes:
            raise ValueError(f"gradient shapes {shapes} differ from the state's {self._shapes}")
        if self.weight_decay > 0:
            if params is None:
                raise ValueError("weight_decay > 0 needs the current params: step(grads, params)")
            p = [np.asarray(x, dtype=np.float64) for x in params]
            if [x.shape for x in p] != shapes:
                raise ValueError("params and grads shapes differ")
            g = [gi + self.weight_decay * pi for gi, pi in zip(g, p)]
        if self._shapes is None:
            self._shapes = shapes
            self._init_state(shapes)
        self.t += 1
        return g

    def _init_state(self, shapes: list[tuple[int, ...]]) -> None:
        raise NotImplementedError

    def step(
        self, grads: Sequence[np.ndarray], params: Sequence[np.ndarray] | None = None
    ) -> list[np.ndarray]:
        """Return the desired change of each parameter (nothing is applied)."""
        raise NotImplementedError

    # -- checkpoints ------------------------------------------------------------
    def _arrays(self) -> dict[str, list[np.ndarray] | None]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "t": self.t, "lr": self.lr}
        for key, arrs in self._arrays().items():
            out[key] = None if arrs is None else [a.copy() for a in arrs]
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name", self.name) != self.name:
            raise ValueError(f"state is for optimizer {state['name']!r}, not {self.name!r}")
        self.t = int(state["t"])
        self.lr = float(state.get("lr", self.lr))
        shapes = None
        for key in self._arrays():
            arrs = state.get(key)
            arrs = None if arrs is None else [np.array(a, dtype=np.float64, copy=True) for a in arrs]
            setattr(self, key, arrs)
            if arrs is not None:
                shapes = [a.shape for a in arrs]
        self._shapes = shapes


class SGD(Optimizer):
    """SGD with optional (heavy-ball) momentum, PyTorch convention.

    ``v = μ·v + g`` (``v`` starts at 0, so ``v_1 = g_1``), ``Δ = −lr·v``;
    without momentum ``Δ = −lr·g``. ``g`` includes ``weight_decay·p``.
    """

    name = "sgd"

    def __init__(self, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        if not (0.0 <= momentum < 1.0):
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self.velocity: list[np.ndarray] | None = None

    def _init_state(self, shapes):
        self.velocity = [np.zeros(s) for s in shapes] if self.momentum > 0 else None

    def _arrays(self):
        return {"velocity": self.velocity}

    def step(self, grads, params=None):
        g = self._prepare(grads, params)
        if self.momentum == 0:
            return [-self.lr * gi for gi in g]
        assert self.velocity is not None
        self.velocity = [self.momentum * v + gi for v, gi in zip(self.velocity, g)]
        return [-self.lr * v for v in self.velocity]


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction, PyTorch convention.

    ``m = β1·m + (1−β1)·g``, ``v = β2·v + (1−β2)·g²``,
    ``Δ = −lr · (m / (1−β1^t)) / (sqrt(v / (1−β2^t)) + eps)``.
    """

    name = "adam"

    def __init__(
        self,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(lr, weight_decay)
        b1, b2 = betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas!r}")
        if not eps > 0:
            raise ValueError("eps must be > 0")
        self.betas = (float(b1), float(b2))
        self.eps = float(eps)
        self.m: list[np.ndarray] | None = None
        self.v: list[np.ndarray] | None = None

    def _init_state(self, shapes):
        self.m = [np.zeros(s) for s in shapes]
        self.v = [np.zeros(s) for s in shapes]

    def _arrays(self):
        return {"m": self.m, "v": self.v}

    def step(self, grads, params=None):
        g = self._prepare(grads, params)
        assert self.m is not None and self.v is not None
        b1, b2 = self.betas
        self.m = [b1 * m + (1 - b1) * gi for m, gi in zip(self.m, g)]
        self.v = [b2 * v + (1 - b2) * gi * gi for v, gi in zip(self.v, g)]
        c1 = 1 - b1**self.t
        c2 = 1 - b2**self.t
        return [-self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps) for m, v in zip(self.m, self.v)]


def make_optimizer(name: str, **kwargs: Any) -> Optimizer:
    """``make_optimizer("adam", lr=1e-3)``; valid names: ``sgd``, ``adam``."""
    table = {"sgd": SGD, "adam": Adam}
    key = str(name).strip().lower()
    if key not in table:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(sorted(table))}")
    return table[key](**kwargs)

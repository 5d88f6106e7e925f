"""Small training tasks that ship with scikit-learn (nothing is downloaded).

All three tasks come from ``sklearn.datasets.load_digits`` (1797 grey 8x8 images,
values 0..16, no duplicate images), scaled to ``[0, 1]``:

=============  ==================================================  ========  =====
name           input -> target                                      n_in      n_out
=============  ==================================================  ========  =====
``digits``     image -> class 0..9 (``kind='classification'``)      64        10
``denoise``    clip(image + N(0, σ²), 0, 1) -> clean image          64        64
``superres``   2x2 average-pooled 4x4 image -> 8x8 image            16        64
=============  ==================================================  ========  =====

The train/test split is stratified by digit class (default 80/20) and depends only
on ``seed``; the three tasks share the same split for the same seed. Randomness
uses two independent streams spawned from ``np.random.SeedSequence(seed)``: one
for the split, one for the ``denoise`` noise. The noise is drawn ONCE per image
(a fixed noisy training set and a fixed noisy test set); a loop that wants fresh
noise every epoch can redraw it from ``labels_train``/the clean targets itself.
Images are flattened row-major: ``x.reshape(-1, *image_shape)`` recovers them.

Metrics: :func:`accuracy` and :func:`ssim` (structural similarity, Wang et al. 2004).
"""

from __future__ import annotations

import gzip
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Task", "TASKS", "load_task", "accuracy", "ssim", "gaussian_window"]

TASKS = ("digits", "digits-small", "denoise", "superres")
METRIC_AXES = {"test_accuracy": ("test accuracy (%)", 100.0), "test_ssim": ("test SSIM", 1.0)}
"""The test metric of each task kind: its label (with unit) in tables and plots, and the scale to that unit."""


@dataclass(frozen=True)
class Task:
    """A dataset ready for the MLP: 2-D float64 inputs, targets per ``kind``.

    ``y_*`` are int64 class labels for ``kind='classification'`` and float64
    flattened images in ``[0, 1]`` for ``kind='image'``. ``labels_*`` always hold
    the digit classes; ``index_*`` the row numbers in ``load_digits()``;
    ``image_shape`` is the shape of an output/target image (8, 8).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    kind: str
    n_in: int
    n_out: int
    image_shape: tuple[int, int]
    labels_train: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]
    labels_test: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]
    index_train: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]
    index_test: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]
    info: dict[str, Any] = field(default_factory=dict)


def _stratified_split(
    labels: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Per class: shuffle, put ``round(test_fraction * n_c)`` (>= 1) rows in test."""
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = max(1, int(round(test_fraction * idx.size)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _pool2(images: np.ndarray) -> np.ndarray:
    """2x2 average pooling of (N, H, W) -> (N, H/2, W/2)."""
    n, h, w = images.shape
    return images.reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 8x8 digit images (grey levels 0-16) and their labels, as ``load_digits()`` gives them.

    Read straight from scikit-learn's packaged data file (the same file and parser ``load_digits``
    uses) when it is there: importing scikit-learn costs seconds of CPU in every process that trains,
    and every ``hil`` command that trains is one.  Through ``load_digits`` otherwise.
    """
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, mode="rt", encoding="utf-8") as f:
                data = np.loadtxt(f, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def load_task(
    name: str,
    seed: int = 0,
    *,
    test_fraction: float = 0.2,
    noise_sigma: float = 0.2,
) -> Task:
    """Load task ``name`` (``digits`` | ``digits-small`` | ``denoise`` | ``superres``) split with ``seed``.

    ``noise_sigma`` (on the [0, 1] scale) applies to ``denoise`` only.
    """
    key = str(name).strip().lower()
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid names: {', '.join(TASKS)}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError("test_fraction must be in (0, 1)")
    if not noise_sigma >= 0:
        raise ValueError("noise_sigma must be >= 0")

    raw_images, raw_labels = _digits()
    images = raw_images.astype(np.float64) / 16.0  # (1797, 8, 8) in [0, 1]
    labels = raw_labels.astype(np.int64)
    flat = images.reshape(len(images), -1)
    split_ss, noise_ss = np.random.SeedSequence(seed).spawn(2)
    tr, te = _stratified_split(labels, test_fraction, np.random.default_rng(split_ss))
    image_shape = (8, 8)
    info: dict[str, Any] = {"seed": seed, "test_fraction": test_fraction, "source": "sklearn load_digits"}

    if key == "digits-small":  # 4x4 pooled digits: a classifier that fits a small bench's switch matrix
        x, y_tr, y_te, kind, n_out = _pool2(images).reshape(len(images), -1), labels[tr], labels[te], "classification", 10
    elif key == "digits":
        x, y_tr, y_te, kind, n_out = flat, labels[tr], labels[te], "classification", 10
    elif key == "denoise":
        noise_rng = np.random.default_rng(noise_ss)
        x = np.clip(flat + noise_rng.normal(0.0, noise_sigma, flat.shape), 0.0, 1.0)
        y_tr, y_te, kind, n_out = flat[tr], flat[te], "image", 64
        info["noise_sigma"] = noise_sigma
    else:  # superres
        x = _pool2(images).reshape(len(images), -1)
        y_tr, y_te, kind, n_out = flat[tr], flat[te], "image", 64
        info["input_shape"] = (4, 4)

    return Task(
        name=key,
        x_train=x[tr].copy(),
        y_train=np.array(y_tr),
        x_test=x[te].copy(),
        y_test=np.array(y_te),
        kind=kind,
        n_in=x.shape[1],
        n_out=n_out,
        image_shape=image_shape,
        labels_train=labels[tr],
        labels_test=labels[te],
        index_train=tr,
        index_test=te,
        info=info,
    )


# --------------------------------------------------------------------------- metrics


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose arg-max matches ``labels`` (int classes or one-hot)."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if labels.ndim == logits.ndim:
        labels = labels.argmax(axis=-1)
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} do not match")
    if labels.size == 0:
        raise ValueError("empty batch")
    return float(np.mean(logits.argmax(axis=-1) == labels))


def gaussian_window(win_size: int = 7, sigma: float = 1.5) -> np.ndarray:
    """Normalised 2-D Gaussian window (win_size x win_size, odd)."""
    if win_size < 1 or win_size % 2 == 0:
        raise ValueError("win_size must be a positive odd integer")
    r = (win_size - 1) // 2
    g = np.exp(-(np.arange(-r, r + 1, dtype=np.float64) ** 2) / (2.0 * sigma**2))
    w = np.outer(g, g)
    return w / w.sum()


def _as_image_batches(
    a: np.ndarray, b: np.ndarray, image_shape: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` as float64 ``(..., H, W)`` batches (flat ``(N, D)`` input reshaped)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.ndim == 2:
        d = a.shape[1]
        if image_shape is None:
            side = int(round(np.sqrt(d)))
            if side * side != d:
                raise ValueError(
                    f"2-D input is read as flat images; {d} is not a square: pass image_shape "
                    "(or a single image as img[None])"
                )
            image_shape = (side, side)
        if int(np.prod(image_shape)) != d:
            raise ValueError(f"image_shape {image_shape} does not hold {d} pixels")
        a = a.reshape(a.shape[0], *image_shape)
        b = b.reshape(b.shape[0], *image_shape)
    elif a.ndim < 2:
        raise ValueError("need a batch of images: (N, H, W) or flat (N, D)")
    elif image_shape is not None and tuple(a.shape[-2:]) != tuple(image_shape):
        raise ValueError(f"image_shape {image_shape} does not match input {a.shape}")
    return a, b


def _local_mean_filter(
    ndim: int, hw: tuple[int, int], win_size: int, sigma: float, mode: str
) -> Callable[[np.ndarray], np.ndarray]:
    """The Gaussian-weighted local mean of SSIM for border ``mode`` (see :func:`ssim`)."""
    h, w = hw
    view = np.lib.stride_tricks.sliding_window_view
    if mode == "valid":
        win = gaussian_window(win_size, sigma)

        def filt(x: np.ndarray) -> np.ndarray:
            return np.einsum("...ij,ij->...", view(x, (win_size, win_size), axis=(-2, -1)), win)

        return filt
    if mode == "reflect":
        r = int(3.5 * sigma + 0.5)  # scipy.ndimage radius for skimage's truncate=3.5
        win = gaussian_window(2 * r + 1, sigma)
        crop = (win_size - 1) // 2
        pad = [(0, 0)] * (ndim - 2) + [(r, r), (r, r)]

        def filt(x: np.ndarray) -> np.ndarray:
            xp = np.pad(x, pad, mode="symmetric")  # == scipy.ndimage mode="reflect"
            y = np.einsum("...ij,ij->...", view(xp, (2 * r + 1, 2 * r + 1), axis=(-2, -1)), win)
            return y[..., crop : h - crop, crop : w - crop]

        return filt
    raise ValueError("mode must be 'valid' or 'reflect'")


def ssim(
    a: np.ndarray,
    b: np.ndarray,
    data_range: float = 1.0,
    *,
    image_shape: tuple[int, int] | None = None,
    win_size: int = 7,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    mode: str = "valid",
    reduce: bool = True,
) -> float | np.ndarray:
    """Mean structural similarity (Wang et al. 2004) of batches of small images.

    Input layout (``a`` and ``b`` of equal shape):

    * ``(..., H, W)`` with ``ndim >= 3``: a batch of images;
    * ``(N, D)``: ``N`` flattened images of ``image_shape`` (default: square,
      ``D`` must be a perfect square, e.g. 64 -> 8x8). A single ``H x W`` image
      must be passed as ``img[None]``: a 2-D array always means flat images.

    Local means, variances and covariance are Gaussian-weighted (``sigma`` 1.5)
    population moments (Wang et al. use no ``N/(N-1)`` correction);
    ``C1 = (k1·L)²``, ``C2 = (k2·L)²`` with ``L = data_range``. Two border modes:

    * ``mode="valid"`` (default): a ``win_size`` x ``win_size`` Gaussian window
      (7 taps by default, so it fits inside 8x8), normalised, evaluated only where
      it lies fully inside the image -- on 8x8 that is the 2x2 central positions.
      No padding: no invented pixels.
    * ``mode="reflect"``: what ``skimage.metrics.structural_similarity(im1, im2,
      gaussian_weights=True, sigma=1.5, win_size=7, use_sample_covariance=False,
      data_range=L)`` computes: skimage filters with scipy's 11-tap Gaussian
      (``truncate=3.5`` regardless of ``win_size``) over a half-sample-symmetric
      reflected border, then crops ``(win_size-1)//2`` pixels from each side
      before averaging. Use it to compare with skimage-based numbers.

    The two modes give close but not identical values; report which one is used.

    Returns the mean over positions and images (a float), or with
    ``reduce=False`` one SSIM per image (shape of the batch dimensions).
    """
    a, b = _as_image_batches(a, b, image_shape)
    h, w = a.shape[-2:]
    if win_size > min(h, w):
        raise ValueError(f"win_size {win_size} does not fit in {h}x{w} images")
    if not data_range > 0:
        raise ValueError("data_range must be > 0")
    filt = _local_mean_filter(a.ndim, (h, w), win_size, sigma, mode)

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a * mu_a
    var_b = filt(b * b) - mu_b * mu_b
    cov = filt(a * b) - mu_a * mu_b
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    )
    per_image = s.mean(axis=(-2, -1))
    return float(per_image.mean()) if reduce else per_image

"""Optimizers (hand-computed steps, exact resume), tasks, metrics and nn helpers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil import nn
from hil.optim import SGD, Adam, make_optimizer, scheduled_lr
from hil.tasks import TASKS, accuracy, load_task, ssim

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)


# ----------------------------------------------------------------- optimizers


def test_sgd_hand_computed():
    g = [np.array([1.0, -2.0]), np.array([[0.5]])]
    plain = SGD(lr=0.1)
    d = plain.step(g)
    assert np.allclose(d[0], [-0.1, 0.2]) and np.allclose(d[1], [[-0.05]])
    mom = SGD(lr=0.1, momentum=0.9)
    assert np.allclose(mom.step(g)[0], [-0.1, 0.2])  # v1 = g
    assert np.allclose(mom.step(g)[0], [-0.19, 0.38])  # v2 = 0.9 g + g
    assert np.allclose(mom.step([np.zeros(2), np.zeros((1, 1))])[0], [-0.171, 0.342])  # 0.9 v2
    wd = SGD(lr=0.1, weight_decay=0.5)
    assert np.allclose(wd.step(g, params=[np.array([2.0, 2.0]), np.array([[0.0]])])[0], [-0.2, 0.1])
    with pytest.raises(ValueError, match="params"):
        SGD(lr=0.1, weight_decay=0.5).step(g)


def test_adam_hand_computed():
    opt = Adam(lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    g1, g2 = np.array([0.5, -2.0]), np.array([1.0, 1.0])
    d1 = opt.step([g1])[0]
    # t=1: m̂ = g, v̂ = g², Δ = -lr g / (|g| + eps)
    assert np.allclose(d1, -0.01 * g1 / (np.abs(g1) + 1e-8), rtol=1e-12)
    d2 = opt.step([g2])[0]
    m = 0.9 * 0.1 * g1 + 0.1 * g2
    v = 0.999 * 0.001 * g1**2 + 0.001 * g2**2
    m_hat, v_hat = m / (1 - 0.9**2), v / (1 - 0.999**2)
    assert np.allclose(d2, -0.01 * m_hat / (np.sqrt(v_hat) + 1e-8), rtol=1e-12)
    # by hand, first coordinate: m = 0.09·0.5 + 0.1·1 = 0.145,
    # v = 0.999·0.001·0.25 + 0.001·1 = 0.00124975, m̂ = 0.145/0.19, v̂ = v/0.001999
    assert np.isclose(m[0], 0.145) and np.isclose(v[0], 0.00124975)
    assert d2[0] == pytest.approx(-0.0096518201361, abs=1e-12)
    assert opt.t == 2


@pytest.mark.parametrize(
    "factory",
    [
        lambda: SGD(lr=0.05, momentum=0.9, weight_decay=1e-3),
        lambda: SGD(lr=0.05),
        lambda: Adam(lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-3),
    ],
)
def test_state_dict_round_trip_gives_identical_continuation(factory):
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (4,)]
    grads = [[rng.normal(size=s) for s in shapes] for _ in range(8)]
    params = [[rng.normal(size=s) for s in shapes] for _ in range(8)]
    a = factory()
    for g, p in zip(grads[:4], params[:4]):
        a.step(g, p)
    state = a.state_dict()
    b = factory()
    b.load_state_dict(state)
    for arrs in (v for v in state.values() if isinstance(v, list)):
        for x in arrs:
            x[...] = 1e9  # mutating the saved dict must not touch either optimizer
    for g, p in zip(grads[4:], params[4:]):
        for da, db in zip(a.step(g, p), b.step(g, p)):
            assert np.array_equal(da, db)
    assert a.t == b.t == 8


def test_optimizer_validation_and_factory():
    with pytest.raises(ValueError):
        SGD(lr=0.0)
    with pytest.raises(ValueError):
        SGD(lr=0.1, momentum=1.0)
    with pytest.raises(ValueError):
        Adam(lr=0.1, betas=(0.9, 1.0))
    opt = Adam(lr=0.1)
    opt.step([np.zeros(3)])
    with pytest.raises(ValueError, match="shapes"):
        opt.step([np.zeros(4)])
    with pytest.raises(ValueError, match="NaN"):
        opt.step([np.array([np.nan, 0, 0])])
    assert opt.t == 1
    with pytest.raises(ValueError, match="state is for"):
        SGD(lr=0.1).load_state_dict(opt.state_dict())
    assert isinstance(make_optimizer("ADAM", lr=1e-3), Adam)
    with pytest.raises(ValueError, match="adam, sgd"):
        make_optimizer("rmsprop", lr=1)


@given(lr=st.floats(1e-4, 1.0), total=st.integers(1, 10_000), data=st.data())
def test_cosine_schedule_starts_at_lr_decreases_and_ends_near_zero(lr, total, data):
    step = data.draw(st.integers(0, total - 1))
    rates = [scheduled_lr(lr, "cosine", s, total) for s in (0, step, min(step + 1, total - 1), total - 1)]
    assert rates[0] == pytest.approx(lr)
    assert 0 < rates[3] <= rates[2] <= rates[1] <= lr
    assert rates[3] <= lr * (1 - np.cos(np.pi / total)) / 2 + 1e-15  # one step short of 0
    assert scheduled_lr(lr, "constant", step, total) == lr


def test_unknown_schedule_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="'constant' or 'cosine'"):
        scheduled_lr(0.1, "linear", 0, 10)


def test_step_does_not_modify_inputs():
    g = [np.array([1.0, 2.0])]
    p = [np.array([3.0, 4.0])]
    SGD(lr=0.1, momentum=0.5, weight_decay=0.1).step(g, p)
    assert np.array_equal(g[0], [1.0, 2.0]) and np.array_equal(p[0], [3.0, 4.0])


# ----------------------------------------------------------------- tasks


@pytest.fixture(scope="module")
def tasks():
    return {name: load_task(name, seed=3) for name in TASKS}


def test_task_shapes(tasks):
    d = tasks["digits"]
    assert d.kind == "classification" and (d.n_in, d.n_out) == (64, 10)
    assert d.x_train.shape == (len(d.y_train), 64) and d.x_test.shape == (len(d.y_test), 64)
    assert len(d.y_train) + len(d.y_test) == 1797
    assert abs(len(d.y_test) / 1797 - 0.2) < 0.01
    assert d.y_train.dtype == np.int64 and set(np.unique(d.y_test)) == set(range(10))
    assert d.x_train.min() >= 0 and d.x_train.max() <= 1
    # stratified: every class ~20 % in test
    counts = np.bincount(d.y_test, minlength=10) / np.bincount(np.r_[d.y_train, d.y_test])
    assert np.all(np.abs(counts - 0.2) < 0.01)

    dn = tasks["denoise"]
    assert dn.kind == "image" and (dn.n_in, dn.n_out) == (64, 64) and dn.image_shape == (8, 8)
    assert dn.y_train.shape == dn.x_train.shape
    assert dn.x_train.min() >= 0 and dn.x_train.max() <= 1
    resid = dn.x_train - dn.y_train
    assert 0.1 < resid.std() < 0.2  # σ=0.2 noise, reduced by the clip

    sr = tasks["superres"]
    assert (sr.n_in, sr.n_out) == (16, 64) and sr.info["input_shape"] == (4, 4)
    hr = sr.y_train.reshape(-1, 8, 8)
    assert np.allclose(sr.x_train.reshape(-1, 4, 4)[:, 1, 2], hr[:, 2:4, 4:6].mean(axis=(1, 2)))


def test_tasks_share_split_and_align_with_labels(tasks):
    d, dn, sr = tasks["digits"], tasks["denoise"], tasks["superres"]
    assert np.array_equal(d.index_test, dn.index_test) and np.array_equal(d.index_test, sr.index_test)
    assert np.array_equal(d.x_test, sr.y_test) and np.array_equal(d.x_train, dn.y_train)
    assert np.array_equal(dn.labels_test, d.y_test)


def test_tasks_deterministic_and_seed_dependent(tasks):
    for name in TASKS:
        again = load_task(name, seed=3)
        a = tasks[name]
        for field in ("x_train", "y_train", "x_test", "y_test"):
            assert np.array_equal(getattr(a, field), getattr(again, field))
    other = load_task("denoise", seed=4)
    assert not np.array_equal(other.index_test, tasks["denoise"].index_test)
    assert not np.array_equal(load_task("denoise", seed=3, noise_sigma=0.1).x_train, tasks["denoise"].x_train)


def test_no_overlap_between_train_and_test(tasks):
    for t in tasks.values():
        assert np.intersect1d(t.index_train, t.index_test).size == 0
        assert np.union1d(t.index_train, t.index_test).size == 1797
    d = tasks["digits"]
    train_rows = {row.tobytes() for row in d.x_train}
    assert not any(row.tobytes() in train_rows for row in d.x_test)  # load_digits has no duplicates


def test_load_task_errors():
    with pytest.raises(ValueError, match="digits, digits-small, denoise, superres"):
        load_task("mnist")
    with pytest.raises(ValueError):
        load_task("digits", test_fraction=1.5)


def test_accuracy():
    logits = np.array([[0.1, 2.0], [3.0, 0.0], [0.0, 1.0]])
    assert accuracy(logits, np.array([1, 0, 0])) == pytest.approx(2 / 3)
    assert accuracy(logits, np.eye(2)[[1, 0, 1]]) == 1.0
    with pytest.raises(ValueError):
        accuracy(logits, np.array([1, 0]))


# ----------------------------------------------------------------- ssim

images = st.integers(0, 2**32 - 1).map(lambda s: np.random.default_rng(s).random((4, 8, 8)))


@SETTINGS
@given(images, st.integers(0, 2**32 - 1), st.sampled_from(["valid", "reflect"]))
def test_ssim_properties(x, seed, mode):
    rng = np.random.default_rng(seed)
    assert ssim(x, x, mode=mode) == pytest.approx(1.0, abs=1e-12)
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    z = rng.random(x.shape)
    assert ssim(x, y, mode=mode) == pytest.approx(ssim(y, x, mode=mode), abs=1e-12)  # symmetric
    per = ssim(x, z, mode=mode, reduce=False)
    assert per.shape == (4,) and np.all(per >= -1) and np.all(per <= 1)
    assert np.all(ssim(x, 1 - x, mode=mode, reduce=False) <= 1)
    assert ssim(x, -x, data_range=2.0, mode=mode) >= -1


def test_ssim_decreases_with_noise():
    rng = np.random.default_rng(0)
    x = load_task("digits", seed=0).x_test[:200]
    scores = [ssim(x, np.clip(x + rng.normal(0, s, x.shape), 0, 1), image_shape=(8, 8)) for s in (0.02, 0.1, 0.3, 0.6)]
    assert all(a > b for a, b in zip(scores, scores[1:]))
    assert scores[0] > 0.9


def test_ssim_layouts_and_errors():
    rng = np.random.default_rng(1)
    a, b = rng.random((3, 8, 8)), rng.random((3, 8, 8))
    s = ssim(a, b)
    assert ssim(a.reshape(3, 64), b.reshape(3, 64)) == s  # flat, square inferred
    assert ssim(a.reshape(3, 64), b.reshape(3, 64), image_shape=(8, 8)) == s
    assert np.allclose(ssim(a, b, reduce=False).mean(), s)
    assert ssim(a[None], b[None]) == pytest.approx(s)  # extra batch dims
    with pytest.raises(ValueError, match="not a square"):
        ssim(a[0], b[0])  # a single 8x8 image must be img[None]
    with pytest.raises(ValueError, match="win_size"):
        ssim(a[:, :5, :5], b[:, :5, :5])
    with pytest.raises(ValueError):
        ssim(a, b[:2])
    with pytest.raises(ValueError, match="mode"):
        ssim(a, b, mode="same")


def _reference_ssim_scipy(x, y, win_size=7):
    """skimage's algorithm (gaussian_weights, population moments) with scipy.ndimage."""
    from scipy.ndimage import gaussian_filter

    f = lambda z: gaussian_filter(z, sigma=1.5, truncate=3.5, mode="reflect")  # noqa: E731
    ux, uy = f(x), f(y)
    vx, vy, vxy = f(x * x) - ux * ux, f(y * y) - uy * uy, f(x * y) - ux * uy
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (win_size - 1) // 2
    return s[pad:-pad, pad:-pad].mean()


def test_ssim_reflect_matches_scipy_reimplementation_of_skimage():
    pytest.importorskip("scipy")
    rng = np.random.default_rng(2)
    a = rng.random((6, 8, 8))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    ref = np.array([_reference_ssim_scipy(x, y) for x, y in zip(a, b)])
    assert np.allclose(ssim(a, b, mode="reflect", reduce=False), ref, rtol=0, atol=1e-12)
    assert abs(ssim(a, b, mode="valid") - ref.mean()) < 0.05  # close, not identical


def test_ssim_matches_skimage_if_installed():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(3)
    a = rng.random((5, 8, 8))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    ref = [
        metrics.structural_similarity(
            x, y, gaussian_weights=True, sigma=1.5, win_size=7, use_sample_covariance=False, data_range=1.0
        )
        for x, y in zip(a, b)
    ]
    assert np.allclose(ssim(a, b, mode="reflect", reduce=False), ref, rtol=0, atol=1e-10)


# ----------------------------------------------------------------- nn


def _numeric_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def test_losses_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(5, 4)), rng.integers(0, 4, 5)
    loss, d = nn.softmax_cross_entropy(logits, labels)
    assert np.allclose(d, _numeric_grad(lambda z: nn.softmax_cross_entropy(z, labels)[0], logits), atol=1e-7)
    assert loss == pytest.approx(-np.mean(np.log(nn.softmax(logits)[np.arange(5), labels])))
    big_loss, _ = nn.softmax_cross_entropy(np.array([[1000.0, -1000.0]]), np.array([1]))
    assert np.isfinite(big_loss) and big_loss == pytest.approx(2000.0)
    pred, target = rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
    loss, d = nn.mse(pred, target)
    assert loss == pytest.approx(np.mean((pred - target) ** 2))
    assert np.allclose(d, _numeric_grad(lambda p: nn.mse(p, target)[0], pred), atol=1e-7)


@pytest.mark.parametrize("name", list(nn.ACTIVATIONS))
def test_activation_derivatives(name):
    act = nn.get_activation(name)
    z = np.array([-3.0, -0.7, 0.4, 2.5, 800.0, -800.0])
    h = 1e-6
    num = (act.fn(z + h) - act.fn(z - h)) / (2 * h)
    assert np.allclose(act.grad(z), num, atol=1e-6)
    assert np.all(np.isfinite(act.fn(z)))


def test_init_weights():
    rng = np.random.default_rng(0)
    w = nn.init_weights((400, 300), rng, "he")
    assert w.shape == (400, 300) and abs(w.std() - np.sqrt(2 / 400)) < 0.01 * np.sqrt(2 / 400) * 5
    x = nn.init_weights((400, 300), rng, "xavier")
    lim = np.sqrt(6 / 700)
    assert np.abs(x).max() <= lim and abs(x.std() - lim / np.sqrt(3)) < 0.01
    assert np.array_equal(nn.init_weights((3, 2), np.random.default_rng(1), "he"),
                          nn.init_weights((3, 2), np.random.default_rng(1), "he"))
    with pytest.raises(ValueError, match="xavier"):
        nn.init_weights((3, 2), rng, "lecun")
    with pytest.raises(ValueError, match="relu"):
        nn.get_activation("gelu")


def test_digits_read_without_scikit_learn_equal_load_digits():
    """The lean reader of scikit-learn's data file gives exactly what ``load_digits()`` gives."""
    from sklearn.datasets import load_digits

    from hil.tasks import _digits

    images, labels = _digits()
    reference = load_digits()
    assert images.dtype == reference.images.dtype and labels.dtype == reference.target.dtype
    np.testing.assert_array_equal(images, reference.images)
    np.testing.assert_array_equal(labels, reference.target)

"""PNG plots of calibration and characterization data (matplotlib, Agg backend).

Every function takes the stage's result and raw arrays, writes one PNG and
returns its path.  Conductances are shown in microsiemens.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib


def use_file_backend() -> None:
    """Agg (PNG files, no display needed) unless the process or its environment chose a backend already:
    importing the stack's plots must not take a notebook's inline backend away (ipykernel sets MPLBACKEND)."""
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")


use_file_backend()
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from calibration.common import Raw  # noqa: E402

US = 1e6


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # fixed margins: tight_layout measures every text box and costs as much as the drawing itself
    fig.subplots_adjust(left=0.09, right=0.97, bottom=0.13, top=0.91, wspace=0.28)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pulse_response(result, raw: Raw, path: Path, fits: dict | None = None, n_traces: int = 12) -> Path:
    """Potentiation/depression curves (sample mean, a few devices, fitted model) and step versus G."""
    from calibration.pulse_response import model_step

    fits = fits or result.fits
    n = np.asarray(raw["pulses"], float)
    g_set, g_reset = np.asarray(raw["g_set"]), np.asarray(raw["g_reset"])
    ok = np.asarray(raw["fit_ok"], bool) if "fit_ok" in raw else np.ones(g_set.shape[1], bool)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    x_all = np.concatenate([n, n[-1] + n])
    traces = np.concatenate([g_set, g_reset])
    for i in np.flatnonzero(ok)[:n_traces]:
        ax1.plot(x_all, traces[:, i] * US, color="0.75", lw=0.6)
    ax1.plot(x_all, traces[:, ok].mean(axis=1) * US, color="k", lw=2, label="sample mean")
    # model: mean over devices of the per-device fitted curves is not needed; integrate the population law
    for pol, x0, gs, color in (("set", 0.0, g_set, "tab:red"), ("reset", n[-1], g_reset, "tab:blue")):
        f = fits[pol]
        g = float(gs[0, ok].mean())
        path_g = [g]
        w = f.g_max_s - f.g_min_s
        for _ in range(int(n[-1])):  # plain floats: thousands of pulses
            x = min(max((g - f.g_min_s) / w, 0.0), 1.0)
            g += f.alpha_s * (1 - x) ** f.gamma if pol == "set" else -f.alpha_s * x**f.gamma
            path_g.append(g)
        ax1.plot(x0 + np.arange(len(path_g)), np.array(path_g) * US, color=color, ls="--",
                 label=f"{pol} model: alpha={f.alpha_s * US:.3g} µS, gamma={f.gamma:.2f}")
    ax1.set_xlabel("pulses (SET, then RESET)")
    ax1.set_ylabel("G (µS)")
    ax1.set_title("pulse response")
    ax1.legend(fontsize=7)
    for pol, color in (("set", "tab:red"), ("reset", "tab:blue")):
        c = result.curves[pol]
        g = np.array(c.g_s) * US
        mean, sd = (np.array(v, dtype=float) * US for v in (c.step_mean_s, c.step_sd_s))  # None: NaN, a gap
        ax2.errorbar(g, mean, yerr=sd, fmt="o", ms=3, color=color, capsize=2, label=f"{pol}: mean +- sd over devices")
        gg = np.linspace(fits[pol].g_min_s, fits[pol].g_max_s, 200)
        ax2.plot(gg * US, model_step(fits[pol], pol, gg) * US, color=color, lw=1.5)
    ax2.set_xlabel("G (µS)")
    ax2.set_ylabel("|step| per pulse (µS)")
    ax2.set_title("mean step versus conductance, soft-bounds fit")
    ax2.legend(fontsize=7)
    return _save(fig, path)


def centred_changes(raw: Raw, n: int, pol: int) -> np.ndarray:
    """Changes of the events with n pulses and polarity pol, minus each device's mean (siemens)."""
    y = np.asarray(raw["g"])
    en, ep = np.asarray(raw["event_pulses"]), np.asarray(raw["event_polarity"])
    t = np.flatnonzero((en == n) & (ep == pol))
    t = t[t >= 1]
    d = pol * (y[t + 1] - y[t])
    return (d - d.mean(axis=0)).ravel()


def plot_write_noise(result, raw: Raw, path: Path) -> Path:
    """Variance of the change versus n with the fits, and histograms of the centred changes."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    s2 = result.write_noise_sigma_s**2
    r2 = result.relax_sigma0_s**2
    for pol, color in (("set", "tab:red"), ("reset", "tab:blue")):
        cells = [c for c in result.cells if c.polarity == pol]
        ns = np.array([c.n for c in cells], float)
        v = np.array([c.var_s2 for c in cells])
        q = np.array([c.q_s2 for c in cells])
        ax1.plot(ns, v * US**2, "o", color=color, label=f"{pol}: measured (read noise, state removed)")
        ax1.plot(ns, (s2 + 2 * r2 + result.c2c_sigma_rel**2 * q) * US**2, "-", color=color,
                 label=f"{pol}: sigma_w^2 + 2 sigma_r0^2 + sigma_rel^2 Q")
        bp = result.by_polarity.get(pol)
        if bp:
            nn = np.linspace(0, ns.max(), 50)
            ax1.plot(nn, (bp["offset_var_s2"] + bp["slope_s2"] * nn) * US**2, ":", color=color,
                     label=f"{pol}: straight line in n")
    ax1.set_xlabel("pulses per write event n")
    ax1.set_ylabel("variance of the change (µS²)")
    ax1.set_title(f"write noise: sigma_w = {result.write_noise_sigma_s * US:.3g} µS, "
                  f"sigma_r0 = {result.relax_sigma0_s * US:.3g} µS, "
                  f"sigma_rel = {result.c2c_sigma_rel:.3g}")
    ax1.legend(fontsize=7)
    en = np.asarray(raw["event_pulses"])
    for n, color in zip(sorted(set(en.tolist()))[::2], plt.cm.viridis(np.linspace(0, 0.9, 4))):
        d = centred_changes(raw, n, +1) * US
        ax2.hist(d, bins=80, histtype="step", density=True, color=color, label=f"SET n={n}")
    ax2.set_xlabel("change minus device mean (µS)")
    ax2.set_ylabel("density")
    ax2.set_title("distribution of the achieved change")
    ax2.legend(fontsize=7)
    return _save(fig, path)


def plot_drift(result, raw: Raw, path: Path) -> Path:
    """Mean shift and spread versus time after the write, per level, with the log fits."""
    t = np.asarray(raw["times"], float)
    g = np.asarray(raw["g"])
    lv = np.asarray(raw["level_index"])
    ok = np.asarray(raw["converged"], bool)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    tt = np.maximum(t, 1e-3)
    lt = np.log1p(t / result.t0_sec)
    for k, level in enumerate(result.per_level):
        sel = ok & (lv == k)
        if not sel.any():
            continue
        ch = (g[:, sel] - g[0, sel]).mean(axis=1) * US
        line = ax1.semilogx(tt, ch, "o", ms=4, label=f"level {level.level:g}: mu={level.mu_s * US:.3g} µS")[0]
        ax1.semilogx(tt, -level.mu_s * (lt - lt[0]) * US, "-", color=line.get_color())
    ax1.set_xlabel("time after the write (s, board clock)")
    ax1.set_ylabel("mean change from t~0 (µS)")
    ax1.set_title(f"drift: mu = {result.mu_s * US:.3g} µS per ln(1+t/t0)")
    ax1.legend(fontsize=7)
    ax2.plot(lt, np.array(result.spread_s) * US, "o", label="spread of the change (read noise removed)")
    ax2.plot(lt, result.sigma1_s * (lt - lt[0]) * US, "-", label=f"sigma1 = {result.sigma1_s * US:.3g} µS")
    ax2.set_xlabel("ln(1 + t/t0)")
    ax2.set_ylabel("spread (µS)")
    ax2.legend(fontsize=7)
    return _save(fig, path)


def robust_limits(values: np.ndarray, percent: float = 1.0) -> tuple[float, float]:
    """Colour limits from the ``percent`` and ``100 - percent`` percentiles of the finite values, so a few
    stuck or broken devices do not wash out the rest."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(v, [percent, 100.0 - percent])
    return (float(lo), float(hi)) if hi > lo else (float(lo) - 0.5, float(hi) + 0.5)


def conductance_image(fig, ax, g_s: np.ndarray, title: str, label: str = "G (µS)"):
    """A conductance map in µS with robust colour limits; devices beyond them (stuck high or low) are drawn
    in red (above) and black (below), and the colour bar says so with its arrows."""
    g_us = np.asarray(g_s, float) * US
    lo, hi = robust_limits(g_us)
    cmap = plt.get_cmap("viridis").with_extremes(over="red", under="black")
    im = ax.imshow(g_us, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest", aspect="auto")
    n_out = int(np.sum((g_us > hi) | (g_us < lo)))
    fig.colorbar(im, ax=ax, extend="both", label=label)
    ax.set_title(f"{title}\n{n_out} beyond the 1-99 % range: red high, black low" if n_out else title, fontsize=10)
    return im


def difference_image(fig, ax, d_s: np.ndarray, title: str, label: str = "ΔG (µS)"):
    """A signed map in µS on a diverging colour map centred on zero, limits symmetric at the 99th percentile of |d|."""
    d_us = np.asarray(d_s, float) * US
    finite = np.abs(d_us[np.isfinite(d_us)])
    lim = float(np.percentile(finite, 99)) if finite.size else 1.0
    lim = lim if lim > 0 else 1.0
    im = ax.imshow(d_us, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest", aspect="auto")
    fig.colorbar(im, ax=ax, extend="both", label=label)
    ax.set_title(title)
    return im


def plot_conductance_map(g_map: np.ndarray, path: Path, stuck: np.ndarray | None = None,
                         title: str = "conductance map") -> Path:
    """The array's conductance (and the stuck map, when given)."""
    g_map = np.asarray(g_map)
    panels = 2 if stuck is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.6), squeeze=False)
    conductance_image(fig, axes[0, 0], g_map, title)
    axes[0, 0].set_xlabel("column")
    axes[0, 0].set_ylabel("row")
    if stuck is not None:
        s = np.asarray(stuck).reshape(g_map.shape)
        axes[0, 1].imshow(s, cmap="gray_r", interpolation="nearest")
        axes[0, 1].set_title(f"stuck devices: {int(s.sum())} of {s.size} ({100 * s.mean():.2f} %)")
        axes[0, 1].set_xlabel("column")
        axes[0, 1].set_ylabel("row")
    return _save(fig, path)


def plot_read_noise(result, raw: Raw, path: Path) -> Path:
    reads = np.asarray(raw["reads"])
    mean = reads.mean(axis=0)
    rel = reads.std(axis=0, ddof=1) / np.where(mean > 0, mean, np.nan)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.hist(rel[np.isfinite(rel)] * 100, bins=60)
    ax.axvline(result.read_noise_rel * 100, color="k", ls="--", label=f"pooled {100 * result.read_noise_rel:.3g} %")
    ax.set_xlabel("relative sd of repeated reads (%)")
    ax.set_ylabel("devices")
    ax.legend()
    return _save(fig, path)


def plot_xy(x, ys: dict[str, np.ndarray], path: Path, xlabel: str, ylabel: str, title: str,
            logx: bool = False) -> Path:
    """A generic line plot (characterization routines)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, y in ys.items():
        (ax.semilogx if logx else ax.plot)(x, y, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(ys) > 1:
        ax.legend(fontsize=7)
    return _save(fig, path)

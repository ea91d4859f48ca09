"""The one picture each example draws of its planted outcome (PNG, matplotlib's non-interactive backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    _pyplot().close(fig)
    return path


def drift_histograms(
    path: Path, reference: Mapping[str, np.ndarray], current: Mapping[str, np.ndarray], columns: Sequence[str]
) -> Path:
    """Reference vs current histograms of ``columns``, one panel each."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 2.8), squeeze=False)
    for ax, col in zip(axes[0], columns, strict=True):
        ref, cur = np.asarray(reference[col], float), np.asarray(current[col], float)
        bins = np.histogram_bin_edges(np.concatenate([ref, cur]), 30)
        ax.hist(ref, bins, density=True, alpha=0.6, label="training")
        ax.hist(cur, bins, density=True, alpha=0.6, label="served")
        ax.set_title(col)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("planted drift: training vs served traffic", fontsize=10)
    return _save(fig, path)


def ab_and_canary(
    path: Path, accuracy: Mapping[str, float], canary_pct: Sequence[float], actions: Sequence[str]
) -> Path:
    """Per-variant accuracy of the A/B test beside the canary's share at each check (rollback marked)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    names = list(accuracy)
    left.bar(names, [accuracy[n] for n in names], color=["#8da0cb", "#66c2a5"][: len(names)])
    left.set_ylim(0, 1)
    left.set_title("A/B 90/10: click accuracy per variant")
    steps = np.arange(1, len(canary_pct) + 1)
    shares = [0.0 if a == "rollback" else p for p, a in zip(canary_pct, actions, strict=True)]
    right.step(steps, shares, where="post", color="#fc8d62")
    for x, a in zip(steps, actions, strict=True):
        if a in ("breach", "rollback"):
            right.annotate(a, (x, 2), ha="center", fontsize=8, color="#a4161a")
    right.set_xlabel("canary check")
    right.set_ylabel("candidate share (%)")
    right.set_title("canary of 1.0.2")
    return _save(fig, path)


def explanation(path: Path, names: Sequence[str], values: np.ndarray, title: str) -> Path:
    """One prediction's SHAP values as horizontal bars, largest magnitude on top."""
    plt = _pyplot()
    order = np.argsort(np.abs(values))
    fig, ax = plt.subplots(figsize=(5, 2.8))
    colors = ["#d73027" if v > 0 else "#4575b4" for v in values[order]]
    ax.barh([names[i] for i in order], values[order], color=colors)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("SHAP value (log-odds)")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def live_drift(path: Path, shares: Sequence[float], threshold: float, fired_window: int | None) -> Path:
    """Drift share per live window with the alert threshold and the window the alert fired on."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 2.8))
    windows = np.arange(1, len(shares) + 1)
    ax.plot(windows, shares, marker="o")
    ax.axhline(threshold, color="#a4161a", linestyle="--", label=f"alert at drift share >= {threshold}")
    if fired_window is not None:
        ax.axvline(fired_window, color="#fc8d62", label=f"alert fired (window {fired_window})")
    ax.set_xlabel("live window")
    ax.set_ylabel("share of features drifted")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    return _save(fig, path)

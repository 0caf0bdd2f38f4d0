"""Figures laid out like the paper's, drawn with matplotlib's Agg backend into the run dir.

- ``curves``: training cost against iterations over the entire dataset (epochs), one line per
  optimizer (its best grid point), one panel per variant; log scale for the neural networks.
- ``bias_correction`` (Figure 4): loss against log10(alpha), one panel per (b1, b2), bias
  correction (green) vs none (red), one figure per reported epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_report", "plot_curves", "plot_bias_correction"]

_COLORS = {
    "adam": "tab:red",
    "adagrad": "tab:blue",
    "rmsprop": "tab:green",
    "sgd_nesterov": "tab:purple",
    "sgd_momentum": "tab:orange",
    "adadelta": "tab:brown",
    "adamax": "tab:pink",
    "sgd": "tab:gray",
}
_TITLES = {
    "logreg": "{} logistic regression",
    "mlp": "{} multilayer neural network",
    "cnn": "{} convolutional network",
    "vae": "{} variational auto-encoder",
}


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < window:
        return y
    kernel = np.ones(window) / window
    return np.convolve(y, kernel, mode="valid")


def plot_curves(report: dict[str, Any], out: Path) -> Path:
    """Training cost vs iterations over the entire dataset, one panel per variant."""
    cfg = report["config"]
    variants = report["variants"]
    fig, axes = plt.subplots(1, len(variants), figsize=(5.2 * len(variants), 4), squeeze=False)
    for ax, (variant, per_opt) in zip(axes[0], variants.items(), strict=True):
        for opt, entry in per_opt.items():
            best = entry["best"]
            if best is None:
                continue
            per_epoch = entry["iterations_per_epoch"]
            y = np.array([np.nan if v is None else v for v in best["iter_train_loss"]], float)
            window = max(1, per_epoch // 4)
            ys = _smooth(y, window)
            x = (np.arange(len(ys)) + window) / per_epoch
            hp = ", ".join(
                f"{k}={best['hparams'][k]:.3g}"
                for k in entry["swept"]
                if not isinstance(best["hparams"][k], bool)
            )
            ax.plot(
                x,
                ys,
                color=_COLORS.get(opt),
                lw=1.4,
                label=f"{entry['label']}" + (f" ({hp})" if hp else ""),
            )
        log = cfg["model"] != "logreg"
        if log:
            ax.set_yscale("log")
        names = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}
        dataset = names.get(cfg["dataset"], cfg["dataset"])
        title = _TITLES.get(cfg["model"], "{} " + cfg["model"]).format(dataset)
        ax.set_title(title + ("" if variant == "main" else f" ({variant})"), fontsize=10)
        ax.set_xlabel("iterations over entire dataset")
        ax.set_ylabel("training cost")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"{report['experiment']}: {cfg['dataset']}, {cfg['epochs']} epochs", fontsize=9)
    fig.tight_layout()
    path = out / f"{report['experiment']}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_bias_correction(report: dict[str, Any], out: Path) -> list[Path]:
    """Figure 4: loss after each reported epoch vs log10(alpha), panels per (b1, b2)."""
    cfg = report["config"]
    entry = next(iter(report["variants"].values()))["adam"]
    points = entry["grid"]
    b1s = sorted({p["hparams"]["b1"] for p in points})
    b2s = sorted({p["hparams"]["b2"] for p in points})
    finite = [
        v
        for p in points
        for k, v in p.items()
        if k.startswith("train_loss_epoch_") and v is not None and not p["diverged"]
    ]
    ceiling = float(np.nanpercentile(finite, 95)) * 1.5 if finite else 1.0
    paths = []
    for e in cfg["report_epochs"]:
        key = f"train_loss_epoch_{e}"
        if e > cfg["epochs"]:
            continue
        fig, axes = plt.subplots(
            len(b1s), len(b2s), figsize=(3.3 * len(b2s), 2.8 * len(b1s)), squeeze=False, sharey=True
        )
        for r, b1 in enumerate(b1s):
            for c, b2 in enumerate(b2s):
                ax = axes[r][c]
                for bc, color, label in (
                    (True, "tab:green", "bias correction"),
                    (False, "tab:red", "no bias correction"),
                ):
                    sel = sorted(
                        (
                            p
                            for p in points
                            if p["hparams"]["b1"] == b1
                            and p["hparams"]["b2"] == b2
                            and p["hparams"]["bias_correction"] == bc
                        ),
                        key=lambda p: p["hparams"]["learning_rate"],
                    )
                    x = np.log10([p["hparams"]["learning_rate"] for p in sel])
                    y = np.array(
                        [
                            ceiling
                            if (p["diverged"] or p[key] is None or p[key] > ceiling)
                            else p[key]
                            for p in sel
                        ]
                    )
                    bad = np.array(
                        [p["diverged"] or p[key] is None or p[key] > ceiling for p in sel]
                    )
                    ax.plot(x, y, "o-", color=color, ms=4, label=label)
                    if bad.any():
                        ax.plot(x[bad], y[bad], "x", color="black", ms=8)
                ax.set_title(f"b1={b1:g}, b2={b2:g}", fontsize=9)
                ax.set_ylim(top=ceiling * 1.05)
                ax.grid(alpha=0.3)
                if r == len(b1s) - 1:
                    ax.set_xlabel("log10(alpha)")
                if c == 0:
                    ax.set_ylabel(f"loss after {e} epochs")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(
            f"VAE on {cfg['dataset']}: training loss after {e} epochs (x: diverged / off scale)",
            fontsize=9,
        )
        fig.tight_layout()
        path = out / f"{report['experiment']}_epoch{e}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_report(report: dict[str, Any], out: Path) -> list[Path]:
    """Draw the figure(s) the config asks for; returns the PNG paths."""
    out = Path(out)
    if report["config"]["plot"] == "bias_correction":
        return plot_bias_correction(report, out)
    return [plot_curves(report, out)]

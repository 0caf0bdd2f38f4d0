"""Figures laid out like the paper's, drawn with matplotlib's Agg backend into the run dir.

Kingma & Ba (2015), Sec. 6:

- ``curves`` (Figures 1-3): training cost against "iterations over entire dataset" (epochs),
  one line per optimizer (its best grid point; mean and +-1 standard deviation band over
  seeds when the run used ``--seeds``), one panel per variant. Linear cost axis for logistic
  regression (Fig. 1), log axis for the neural networks (Fig. 2); the CNN (Fig. 3) gets the
  paper's two panels, the first 3 epochs on a linear axis and all epochs on a log axis.
  Legends name the methods as the paper does (``AdaGrad``, ``SGDNesterov``, ``Adam``, ...,
  with ``+dropout`` where the run used dropout).
- ``bias_correction`` (Figure 4): loss against log10(alpha), one panel per (b1, b2) with b1
  in rows and b2 in columns; bias correction in red, none in green (the paper's colours); one
  figure per reported epoch (the paper's panels (a) and (b)).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_report", "plot_curves", "plot_bias_correction", "PAPER_NAMES", "paper_label"]

# The method names of the paper's legends.
PAPER_NAMES = {
    "adam": "Adam",
    "adagrad": "AdaGrad",
    "rmsprop": "RMSProp",
    "sgd_nesterov": "SGDNesterov",
    "sgd_momentum": "SGDMomentum",
    "adadelta": "AdaDelta",
    "adamax": "AdaMax",
    "sgd": "SGD",
}
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
_DATASETS = {
    "mnist": "MNIST",
    "fashion_mnist": "Fashion-MNIST",
    "cifar10": "CIFAR10",
    "imdb": "IMDB",
}
_TITLES = {
    "logreg": "{} Logistic Regression",
    "bow_logreg": "{} BoW feature Logistic Regression",
    "mlp": "{} Multilayer Neural Network",
    "cnn": "{} ConvNet",
    "vae": "{} Variational Auto-Encoder",
}
# The number of passes the paper plots, per model: the x-axis of its figure.
PAPER_EPOCHS = {"logreg": 45, "bow_logreg": 160, "mlp": 200, "cnn": 45, "vae": 100}


def paper_label(optimizer: str, dropout: bool = False) -> str:
    """The paper's legend name of ``optimizer`` (``+dropout`` appended when ``dropout``)."""
    return PAPER_NAMES.get(optimizer, optimizer) + ("+dropout" if dropout else "")


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < window:
        return y
    kernel = np.ones(window) / window
    return np.convolve(y, kernel, mode="valid")


def _array(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], float)


def _uses_dropout(cfg: dict[str, Any]) -> bool:
    return bool(cfg.get("dropout") or cfg.get("input_dropout"))


def _title(cfg: dict[str, Any], variant: str) -> str:
    dataset = _DATASETS.get(cfg["dataset"], cfg["dataset"])
    title = _TITLES.get(cfg["model"], "{} " + cfg["model"]).format(dataset)
    if variant == "dropout":
        return title + " + dropout"
    if variant == "deterministic":
        return title + " (deterministic, L2)"
    return title if variant == "main" else f"{title} ({variant})"


def _draw_panel(
    ax, per_opt, cfg, variant, *, max_epoch=None, log=False, label_dropout=False, style="-"
):
    for opt, entry in per_opt.items():
        best = entry["best"]
        if best is None:
            continue
        per_epoch = entry["iterations_per_epoch"]
        y = _array(best["iter_train_loss"])
        std = _array(best["iter_train_loss_std"]) if "iter_train_loss_std" in best else None
        if max_epoch is not None:
            y = y[: int(max_epoch * per_epoch)]
            std = None if std is None else std[: len(y)]
        window = max(1, per_epoch // 4) if max_epoch is None or max_epoch > 5 else 1
        ys = _smooth(y, window)
        x = (np.arange(len(ys)) + window) / per_epoch
        hp = ", ".join(
            f"{'α' if k == 'learning_rate' else k}={best['hparams'][k]:.3g}"
            for k in entry["swept"]
            if not isinstance(best["hparams"][k], bool)
        )
        seeds = entry.get("seeds", 1)
        label = paper_label(opt, label_dropout) + (f" ({hp})" if hp else "")
        color = _COLORS.get(opt)
        ax.plot(x, ys, style, color=color, lw=1.4, label=label)
        if std is not None and seeds > 1:
            s = _smooth(std, window)
            ax.fill_between(x, ys - s, ys + s, color=color, alpha=0.2, lw=0)
    if log:
        ax.set_yscale("log")
    epochs = cfg["epochs"] if max_epoch is None else min(max_epoch, cfg["epochs"])
    ax.set_xlim(0, epochs)
    ax.set_xlabel("iterations over entire dataset")
    ax.set_ylabel("training cost")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)


def plot_curves(report: dict[str, Any], out: Path) -> Path:
    """Training cost vs iterations over the entire dataset, one panel per variant.

    The CNN (Figure 3) gets the paper's two panels, the first 3 epochs (linear cost axis)
    and all epochs (log axis), each holding every variant's lines (dropout ones dashed).
    """
    cfg = report["config"]
    variants = report["variants"]
    vcfgs = {v: {**cfg, **cfg.get("variants", {}).get(v, {})} for v in variants}
    if cfg["model"] == "cnn":
        # the paper's Figure 3: every variant's lines in both panels ("+dropout" dashed)
        title = _title(cfg, "main")
        fig, axes = plt.subplots(1, 2, figsize=(10.4, 4), squeeze=False)
        for ax, max_epoch, log, name in (
            (axes[0][0], 3, False, f"{title} First 3 Epochs"),
            (axes[0][1], None, True, title),
        ):
            for variant, per_opt in variants.items():
                drop = _uses_dropout(vcfgs[variant])
                _draw_panel(
                    ax, per_opt, vcfgs[variant], variant, max_epoch=max_epoch, log=log,
                    label_dropout=drop, style="--" if drop and len(variants) > 1 else "-",
                )  # fmt: skip
            ax.set_title(name, fontsize=10)
    else:
        log = cfg["model"] not in ("logreg", "bow_logreg")
        fig, axes = plt.subplots(1, len(variants), figsize=(5.2 * len(variants), 4), squeeze=False)
        for ax, (variant, per_opt) in zip(axes[0], variants.items(), strict=True):
            vcfg = vcfgs[variant]
            drop = _uses_dropout(vcfg) and variant != "dropout"  # else "+ dropout" in the title
            _draw_panel(ax, per_opt, vcfg, variant, log=log, label_dropout=drop)
            ax.set_title(_title(vcfg, variant), fontsize=10)
    seeds = next(iter(next(iter(variants.values())).values())).get("seeds", 1)
    paper = PAPER_EPOCHS.get(cfg["model"])
    fig.suptitle(
        f"{report['experiment']}: {cfg['epochs']} epoch{'s' if cfg['epochs'] > 1 else ''}"
        + (f" on {cfg['train_subset']:,} training images" if cfg.get("train_subset") else "")
        + (f" (the paper plots {paper})" if paper and paper != cfg["epochs"] else "")
        + (f", mean and ±1 s.d. over {seeds} seeds" if seeds > 1 else ""),
        fontsize=9,
    )
    fig.tight_layout()
    path = out / f"{report['experiment']}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def panel_points(
    points: list[dict[str, Any]], key: str, ceiling: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(log10 alpha, loss, bad)`` of one Figure-4 curve at the epoch named by ``key``.

    A point that diverged, or whose loss is above ``ceiling``, is drawn at the ceiling and
    marked ``bad``. A point without a loss at that epoch that did not diverge was not
    trained that far (the staged search stopped it after its selection epochs): it is left
    out, not drawn as diverged.
    """
    shown = [p for p in points if p["diverged"] or p.get(key) is not None]
    x = np.log10([p["hparams"]["learning_rate"] for p in shown])
    bad = np.array([p["diverged"] or p[key] > ceiling for p in shown], dtype=bool)
    y = np.array([ceiling if b else p[key] for p, b in zip(shown, bad, strict=True)])
    return x, y, bad


def plot_bias_correction(report: dict[str, Any], out: Path) -> list[Path]:
    """Figure 4: loss after each reported epoch vs log10(alpha), b1 in rows, b2 in columns.

    Bias correction is red and no bias correction green, as in the paper. Diverged or
    off-scale points are drawn at the top of the panel with a black cross; points the staged
    search did not train to an epoch are left out of that epoch's panel (see
    :func:`panel_points`).
    """
    cfg = report["config"]
    entry = next(iter(report["variants"].values()))["adam"]
    points = entry["grid"]
    b1s = sorted({p["hparams"]["b1"] for p in points})
    b2s = sorted({p["hparams"]["b2"] for p in points})
    alphas = np.log10([p["hparams"]["learning_rate"] for p in points])
    lo, hi = float(alphas.min()), float(alphas.max())
    paths = []
    epochs = [e for e in cfg["report_epochs"] if e <= cfg["epochs"]]
    for i, e in enumerate(epochs):
        key = f"train_loss_epoch_{e}"
        finite = [p[key] for p in points if p.get(key) is not None and not p["diverged"]]
        ceiling = float(np.nanpercentile(finite, 90)) * 1.3 if finite else 1.0
        floor = float(np.min(finite)) * 0.97 if finite else 0.0
        fig, axes = plt.subplots(
            len(b1s), len(b2s), figsize=(3.0 * len(b2s), 2.6 * len(b1s)), squeeze=False, sharey=True
        )
        for r, b1 in enumerate(b1s):
            for c, b2 in enumerate(b2s):
                ax = axes[r][c]
                for bc, color, label in (
                    (True, "tab:red", "bias correction"),
                    (False, "tab:green", "no bias correction"),
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
                    x, y, bad = panel_points(sel, key, ceiling)
                    ax.plot(x, y, "o-", color=color, ms=4, label=label)
                    if bad.any():
                        ax.plot(x[bad], y[bad], "x", color="black", ms=8)
                ax.set_ylim(floor, ceiling * 1.02)
                ax.set_xlim(lo - 0.2, hi + 0.2)  # the whole grid, though a panel shows less
                ax.grid(alpha=0.3)
                if r == 0:
                    ax.set_title(f"β2={b2:g}", fontsize=9)
                if c == 0:
                    ax.set_ylabel(f"β1={b1:g}\nloss")
                if r == len(b1s) - 1:
                    ax.set_xlabel("log10(α)")
        axes[0][0].legend(fontsize=7)
        part = "(a)" if i == 0 else "(b)" if i == 1 else f"({chr(97 + i)})"
        fig.suptitle(
            f"{part} after {e} epoch{'s' if e > 1 else ''}: VAE on "
            f"{_DATASETS.get(cfg['dataset'], cfg['dataset'])} (x: diverged / off scale)"
            + (
                f"; each curve's best step size after {cfg['select_epochs']} epochs continued"
                if cfg.get("select_epochs") and e > cfg["select_epochs"]
                else ""
            ),
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

"""Command line: ``python -m experiments <name> [--quick] [--out DIR] [--dataset D] [--resume]``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

__all__ = ["main"]


_TIMING = "16-point grid, vmapped vs one by one (python -m experiments.grid_timing --help)"


def _parser() -> argparse.ArgumentParser:
    from experiments import parallel
    from experiments.config import available

    listing = "\n".join(f"  {name:22s} {desc}" for name, desc in available().items())
    p = argparse.ArgumentParser(
        prog="python -m experiments",
        description="Reproduce the MNIST experiments of Kingma & Ba (2015), 'Adam'.",
        epilog=f"experiments:\n{listing}\n  {'grid_timing':22s} {_TIMING}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", help="experiment name (see below) or a path to a .toml config")
    p.add_argument(
        "--quick",
        action="store_true",
        help="minutes on a CPU: less data, fewer epochs, a smaller grid",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="run directory (default: runs/<name>[-quick])"
    )
    p.add_argument(
        "--dataset",
        choices=("mnist", "fashion_mnist", "cifar10"),
        default=None,
        help="override the config's dataset (cifar10: fig3_cnn only; the files are not "
        "downloaded, see experiments/data.py)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder holding mnist/, fashion_mnist/, cifar10/",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=None,
        metavar="NAME",
        help="train only this variant of the config (repeatable), e.g. one panel of fig2_mlp: "
        "dropout or deterministic",
    )
    p.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    p.add_argument(
        "--train-subset",
        type=int,
        default=None,
        metavar="N",
        help="train on the first N training images (0: all)",
    )
    p.add_argument(
        "--test-subset",
        type=int,
        default=None,
        metavar="N",
        help="evaluate on the first N test images (0: all)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help="train every grid point with N seeds (parameter init, data order, dropout), "
        "vmapped with the grid; results and figures show the mean and the spread",
    )
    p.add_argument(
        "--from-results",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="train nothing: re-check the claims and grid edges of the results.json in RUN_DIR "
        "(name is then ignored), rewrite it with them and redraw the figure(s)",
    )
    parallel.add_device_arguments(p)
    return p


def _report_epochs(cfg) -> tuple[int, ...]:
    """The config's report epochs that a shortened run reaches, plus its last epoch."""
    if not cfg.report_epochs:
        return ()
    kept = [e for e in cfg.report_epochs if e <= cfg.epochs]
    return tuple(kept if cfg.epochs in kept else [*kept, cfg.epochs])


def _reannotate(run_dir: Path) -> int:
    import json

    from experiments import plots, results

    path = run_dir / "results.json" if run_dir.is_dir() else run_dir
    if not path.is_file():
        print(f"error: no results.json at {path}; pass a run directory", file=sys.stderr)
        return 2
    report = results.annotate(json.loads(path.read_text()))
    results.write(path.parent, report)
    for png in plots.plot_report(report, path.parent):
        print(f"wrote {png}")
    results.print_verdicts(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    if args.from_results is not None:
        return _reannotate(args.from_results)
    from experiments.config import ConfigError, load_config, only_variants, with_dataset
    from experiments.data import DataError
    from experiments.runner import run_experiment

    try:
        cfg = load_config(args.name, quick=args.quick)
        if args.dataset:
            cfg = with_dataset(cfg, args.dataset)
        if args.variant:
            cfg = only_variants(cfg, args.variant)
        if args.epochs:
            cfg = dataclasses.replace(cfg, epochs=args.epochs)
            cfg = dataclasses.replace(cfg, report_epochs=_report_epochs(cfg))
        for key in ("train_subset", "test_subset"):
            value = getattr(args, key)
            if value is not None:
                if value < 0:
                    raise ConfigError(f"--{key.replace('_', '-')} {value}: must be >= 0")
                cfg = dataclasses.replace(cfg, **{key: value})
        if args.seeds is not None:
            if args.seeds < 1:
                raise ConfigError(f"--seeds {args.seeds}: must be >= 1")
            cfg = dataclasses.replace(cfg, seeds=args.seeds)
        out = args.out or Path("runs") / (cfg.name + ("-quick" if args.quick else ""))
        t0 = time.perf_counter()
        run_experiment(cfg, out, resume=args.resume, data_dir=args.data_dir, devices=args.devices)
    except (ConfigError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done in {time.perf_counter() - t0:.1f}s; results in {out}/results.json")
    return 0

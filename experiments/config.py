"""Experiment configs: TOML files in ``configs/``, validated with messages that name the key.

A config holds the training settings, an ``[optimizers.<name>]`` table per optimizer (a list
value is a grid axis, a scalar is fixed), optional ``[variants.<name>]`` tables overriding
training settings (Figure 2's panels (a) and (b)), and a ``[quick]`` table of overrides for
``--quick``, itself allowed to hold ``optimizers`` and ``variants`` tables.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.optimizers import OPTIMIZERS, SCHEDULES
from experiments.tasks import MODELS

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "CONFIG_DIR",
    "available",
    "load_config",
    "with_dataset",
]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DATASETS = ("mnist", "fashion_mnist", "cifar10", "imdb")
# dataset -> the only models that take its inputs (CIFAR-10: 32x32x3 images; IMDB: 10,000-word
# bag-of-words vectors), and model -> the only datasets it takes
COLOR_DATASETS = {"cifar10": ("cnn",)}
MODEL_DATASETS = {"bow_logreg": ("imdb",)}
PLOTS = ("curves", "bias_correction")


class ConfigError(ValueError):
    """A config file is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class ExperimentConfig:
    """The validated settings of one experiment (one variant of it)."""

    name: str
    description: str = ""
    model: str = "logreg"
    dataset: str = "mnist"
    epochs: int = 1
    batch_size: int = 128
    schedule: str = "constant"
    weight_decay: float = 0.0
    dropout: float = 0.0
    input_dropout: float = 0.0
    whiten: str = "none"
    zca_epsilon: float = 0.01
    seed: int = 0
    seeds: int = 1
    train_subset: int = 0
    test_subset: int = 0
    eval_batch_size: int = 1000
    checkpoint_every: int = 1
    memory_budget_mb: int = 4096
    report_epochs: tuple[int, ...] = ()
    plot: str = "curves"
    select_epochs: int = 0
    keep_neighbours: bool = False
    grid_extensions: int = 0
    optimizers: dict[str, dict[str, Any]] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)

    def variant_configs(self) -> list[tuple[str, ExperimentConfig]]:
        """``[(variant name, config with its overrides)]``; one ``('main', self)`` if none."""
        if not self.variants:
            return [("main", self)]
        return [
            (name, dataclasses.replace(self, variants={}, **overrides))
            for name, overrides in self.variants.items()
        ]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict of every setting."""
        d = dataclasses.asdict(self)
        d["report_epochs"] = list(self.report_epochs)
        return d


# key -> (type, check(value) -> error message or None)
def _ge(lo):
    return lambda v: None if v >= lo else f"must be >= {lo}"


def _in(options):
    return lambda v: None if v in options else f"must be one of {', '.join(options)}"


def _unit(v):
    return None if 0 <= v < 1 else "must be in [0, 1)"


_FIELDS: dict[str, tuple[type, Any]] = {
    "description": (str, None),
    "model": (str, _in(MODELS)),
    "dataset": (str, _in(DATASETS)),
    "epochs": (int, _ge(1)),
    "batch_size": (int, _ge(1)),
    "schedule": (str, _in(SCHEDULES)),
    "weight_decay": (float, _ge(0)),
    "dropout": (float, _unit),
    "input_dropout": (float, _unit),
    "whiten": (str, _in(("none", "zca"))),
    "zca_epsilon": (float, lambda v: None if v > 0 else "must be > 0"),
    "seed": (int, _ge(0)),
    "seeds": (int, _ge(1)),
    "train_subset": (int, _ge(0)),
    "test_subset": (int, _ge(0)),
    "eval_batch_size": (int, _ge(1)),
    "checkpoint_every": (int, _ge(1)),
    "memory_budget_mb": (int, _ge(1)),
    "report_epochs": (
        list,
        lambda v: (
            None
            if all(isinstance(e, int) and e >= 1 for e in v)
            else "must be a list of epochs >= 1"
        ),
    ),
    "plot": (str, _in(PLOTS)),
    # the step-size search (experiments.search): staged selection and self-bracketing grids
    "select_epochs": (int, _ge(0)),
    "keep_neighbours": (bool, None),
    "grid_extensions": (int, _ge(0)),
}
_TABLES = ("optimizers", "variants", "quick")


def _check_value(where: str, key: str, value: Any) -> Any:
    kind, check = _FIELDS[key]
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(f"{where}: key {key!r} must be of type {kind.__name__}, got {value!r}")
    message = check(value) if check else None
    if message:
        raise ConfigError(f"{where}: key {key!r} = {value!r} {message}")
    return tuple(value) if kind is list else value


def _check_settings(where: str, table: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for key, value in table.items():
        if key not in _FIELDS or key not in allowed:
            known = ", ".join(k for k in allowed if k in _FIELDS)
            raise ConfigError(f"{where}: unknown key {key!r} (known keys: {known})")
        out[key] = _check_value(where, key, value)
    return out


def _check_optimizers(where: str, table: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: 'optimizers' must be a table of optimizer tables")
    out = {}
    for name, hps in table.items():
        if name not in OPTIMIZERS:
            raise ConfigError(
                f"{where}: unknown optimizer {name!r} (known: {', '.join(OPTIMIZERS)})"
            )
        if not isinstance(hps, dict):
            raise ConfigError(f"{where}: optimizers.{name} must be a table")
        spec = OPTIMIZERS[name].hparams
        for key, value in hps.items():
            if key not in spec:
                raise ConfigError(
                    f"{where}: unknown key 'optimizers.{name}.{key}' (known: {', '.join(spec)})"
                )
            values = value if isinstance(value, list) else [value]
            if not values:
                raise ConfigError(f"{where}: optimizers.{name}.{key} is an empty list")
            for v in values:
                try:
                    spec[key].check(f"optimizers.{name}.{key}", v)
                except ValueError as e:
                    raise ConfigError(f"{where}: {e}") from None
        out[name] = dict(hps)
    return out


def _merge(base: dict[str, Any], quick: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in quick.items():
        if key in ("optimizers", "variants") and isinstance(value, dict):
            table = merged.setdefault(key, {})
            for sub, sub_value in value.items():
                if sub in table and isinstance(sub_value, dict):
                    table[sub] = {**table[sub], **sub_value}
                else:
                    table[sub] = sub_value
        else:
            merged[key] = value
    return merged


def from_dict(
    name: str, raw: dict[str, Any], *, quick: bool = False, where: str = ""
) -> ExperimentConfig:
    """Validate ``raw`` (a parsed TOML document) into an :class:`ExperimentConfig`."""
    where = where or f"config {name!r}"
    all_keys = tuple(_FIELDS)
    top = {k: v for k, v in raw.items() if k not in _TABLES}
    _check_settings(where, top, all_keys)
    quick_table = raw.get("quick", {})
    if not isinstance(quick_table, dict):
        raise ConfigError(f"{where}: 'quick' must be a table")
    _check_settings(
        f"{where} [quick]", {k: v for k, v in quick_table.items() if k not in _TABLES}, all_keys
    )
    if "quick" in quick_table:
        raise ConfigError(f"{where} [quick]: unknown key 'quick'")
    doc = (
        _merge({k: v for k, v in raw.items() if k != "quick"}, quick_table) if quick else dict(raw)
    )
    doc.pop("quick", None)
    settings = _check_settings(where, {k: v for k, v in doc.items() if k not in _TABLES}, all_keys)
    optimizers = _check_optimizers(where, doc.get("optimizers", {}))
    _check_optimizers(f"{where} [quick]", quick_table.get("optimizers", {}))
    if not optimizers:
        raise ConfigError(f"{where}: no [optimizers.<name>] table")
    variants = {}
    for vname, overrides in doc.get("variants", {}).items():
        if not isinstance(overrides, dict):
            raise ConfigError(f"{where}: variants.{vname} must be a table")
        allowed = tuple(k for k in _FIELDS if k not in ("description", "plot"))
        vwhere = f"{where} [variants.{vname}]"
        settings_v = {k: v for k, v in overrides.items() if k != "optimizers"}
        variants[vname] = _check_settings(vwhere, settings_v, allowed)
        if "optimizers" in overrides:  # per-variant grid values, merged into the shared ones
            own = _check_optimizers(vwhere, overrides["optimizers"])
            unknown = set(own) - set(optimizers)
            if unknown:
                raise ConfigError(
                    f"{vwhere}: optimizer(s) {sorted(unknown)} not in [optimizers]; a variant "
                    "can only change the grid of an optimizer the experiment runs"
                )
            variants[vname]["optimizers"] = {
                name: {**hps, **own.get(name, {})} for name, hps in optimizers.items()
            }
    cfg = ExperimentConfig(name=name, optimizers=optimizers, variants=variants, **settings)
    for _, vcfg in cfg.variant_configs():
        _check_dataset(vcfg, where)
        if vcfg.seeds > 1 and (vcfg.select_epochs or vcfg.grid_extensions):
            raise ConfigError(
                f"{where}: select_epochs and grid_extensions search one seed per grid point, "
                f"but seeds = {vcfg.seeds}; set seeds = 1 or drop the search keys"
            )
    return cfg


def _check_dataset(cfg: ExperimentConfig, where: str) -> None:
    datasets = MODEL_DATASETS.get(cfg.model)
    if datasets is not None and cfg.dataset not in datasets:
        raise ConfigError(
            f"{where}: experiment {cfg.name!r} (model {cfg.model!r}) runs on "
            f"{', '.join(datasets)} only, not on {cfg.dataset!r}"
        )
    if cfg.dataset == "imdb" and cfg.model != "bow_logreg":
        raise ConfigError(
            f"{where}: experiment {cfg.name!r} cannot run on dataset 'imdb': only the "
            "bag-of-words logistic regression (fig1b_imdb) takes its word vectors"
        )
    models = COLOR_DATASETS.get(cfg.dataset)
    if models is not None and cfg.model not in models:
        raise ConfigError(
            f"{where}: experiment {cfg.name!r} cannot run on dataset {cfg.dataset!r}: its model "
            f"{cfg.model!r} takes 28x28 grayscale images; only the CNN (fig3_cnn) runs on "
            f"{cfg.dataset}"
        )


def with_dataset(cfg: ExperimentConfig, dataset: str) -> ExperimentConfig:
    """``cfg`` (and its variants) on ``dataset``, checked like a config's own ``dataset`` key."""
    where = f"--dataset {dataset}"
    _check_value(where, "dataset", dataset)
    variants = {
        name: ({**overrides, "dataset": dataset} if "dataset" in overrides else overrides)
        for name, overrides in cfg.variants.items()
    }
    cfg = dataclasses.replace(cfg, dataset=dataset, variants=variants)
    for _, vcfg in cfg.variant_configs():
        _check_dataset(vcfg, where)
    return cfg


def only_variants(cfg: ExperimentConfig, names: list[str]) -> ExperimentConfig:
    """``cfg`` with only the variants ``names`` (in the config's order), e.g. one panel of a figure.

    A figure whose variants are separate panels (Figure 2's dropout and deterministic costs)
    can then be trained one panel per run, each its own run directory and ``results.json``.
    """
    if not cfg.variants:
        raise ConfigError(
            f"--variant {names[0]}: experiment {cfg.name!r} has no variants; leave --variant out"
        )
    unknown = [n for n in names if n not in cfg.variants]
    if unknown:
        raise ConfigError(
            f"--variant {unknown[0]}: experiment {cfg.name!r} has no such variant; "
            f"its variants are {', '.join(cfg.variants)}"
        )
    kept = {n: o for n, o in cfg.variants.items() if n in names}
    return dataclasses.replace(cfg, variants=kept)


def available(config_dir: Path = CONFIG_DIR) -> dict[str, str]:
    """``{experiment name: one-line description}`` of the configs in ``config_dir``."""
    out = {}
    for path in sorted(config_dir.glob("*.toml")):
        with open(path, "rb") as f:
            out[path.stem] = str(tomllib.load(f).get("description", "")).split("\n")[0]
    return out


def load_config(
    name_or_path: str, *, quick: bool = False, config_dir: Path = CONFIG_DIR
) -> ExperimentConfig:
    """Load and validate the config of experiment ``name_or_path`` (a name or a .toml path)."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = config_dir / f"{name_or_path}.toml"
    if not path.is_file():
        known = ", ".join(available(config_dir))
        raise ConfigError(f"no config {path}; known experiments: {known}")
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    return from_dict(path.stem, raw, quick=quick, where=str(path))

"""One command, one process: ``python -m benchmarks [--quick] [--json PATH]``.

Prints a table of ratios (each row says what it measured) and writes the same as JSON.
Every time is the median of repeated runs after warm-up, with the cases of a row group
run in turn (interleaved), so that the noise of a shared machine hits them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import optax

import adamjax
from benchmarks import device, experiment_step, kernels, paths, train, trees

BPP = kernels.BYTES_PER_PARAM


def _ms(s):
    return f"{1e3 * s:9.2f} ms"


def machine_info():
    info = {
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
    }
    if not device.on_cpu():
        info |= device.accelerator_info()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_device"] = device.torch_device()
    except ImportError:
        info["torch"] = None
    try:
        from adamjax import native

        info["native"] = native.native_info()
    except Exception as e:  # noqa: BLE001
        info["native"] = {"available": False, "reason": repr(e)}
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and leaves (~2 min)")
    ap.add_argument("--json", default="benchmarks/results.json", help="where to write JSON")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    ap.add_argument(
        "--only",
        choices=["user-paths", "adamw"],
        help="run one section: user-paths = the calls users make, at 1M, 10M and 50M params; "
        "adamw = AdamW's user paths at 50M only",
    )
    args = ap.parse_args(argv)
    quick = args.quick
    with_torch = kernels.torch_available() and not args.no_torch
    t_start = time.time()
    rows: list[tuple[str, str, str, str]] = []
    results: dict = {"machine": machine_info(), "quick": quick}

    def row(group, case, value, ratio, what=""):
        rows.append((group, case, value, ratio, what))
        print(f"  {group:<22} {case:<30} {value:>14}  {ratio:<40} {what}", flush=True)

    print(f"machine: {results['machine']}", flush=True)

    # 0. The calls users make, side by side --------------------------------------------
    user_sizes = [1_000_000, 10_000_000, 50_000_000]
    if not device.on_cpu():
        user_sizes = [50_000_000, 200_000_000]
    only = "adamw" if args.only == "adamw" else None
    if only:
        user_sizes = user_sizes[-1:]
    user_runs = kernels.run_user_paths(user_sizes, repeats=7 if quick else 21, only=only)
    results["user_paths"] = user_runs
    for entry in user_runs:
        n, t = entry["n"], entry["seconds"]
        for name, s in t.items():
            ref = kernels.optax_reference(name)
            ratio = f"{t[ref] / s:5.2f}x {ref.split()[0]}'s speed" if ref in t else ""
            row(
                f"user path {n // 1_000_000}M f32",
                name,
                _ms(s),
                ratio,
                f"{BPP * n / s / 1e9:5.1f} GB/s at 28 B/param",
            )
    # The chain adamjax.adam builds against optax.adam, as compiled (not timed).
    n = user_sizes[-1]
    ours, theirs = (kernels.compiled_program(o, n) for o in (adamjax.adam(1e-3), optax.adam(1e-3)))
    results["user_path_program"] = {"n": n, "adamjax.adam": ours, "optax.adam": theirs}
    row(
        f"user path {n // 1_000_000}M program",
        "adamjax.adam vs optax.adam",
        "same HLO ops" if ours == theirs else "ops DIFFER",
        f"{ours['fusions']} vs {theirs['fusions']} fusions",
        f"{ours['bytes'] / n:.0f} vs {theirs['bytes'] / n:.0f} B/param (XLA's cost model)",
    )
    if args.only in ("user-paths", "adamw"):
        return _finish(args, results, rows, t_start)

    # 1. Single tensors ---------------------------------------------------------------
    # On an accelerator 1M parameters is launch overhead, not memory traffic: go larger.
    sizes = [1_000_000, 10_000_000, 50_000_000]
    if not device.on_cpu():
        sizes = [10_000_000, 50_000_000, 200_000_000]
    single = kernels.run_single_tensors(
        sizes, repeats=7 if quick else 21, with_torch=with_torch, bf16_at=sizes[-1]
    )
    results["single_tensor"] = single
    for entry in single:
        n, t = entry["n"], entry["seconds"]
        g = f"adam step {n // 1_000_000}M f32"
        for name, s in t.items():
            gbs = BPP * n / s / 1e9
            ratio = f"{t['xla_roofline'] / s:5.2f} of XLA roof"
            if "native_roofline" in t:
                ratio += f", {t['native_roofline'] / s:5.2f} of native roof"
            what = f"{gbs:5.1f} GB/s at 28 B/param"
            low = name.endswith(("_bf16", "_int8"))
            if name.startswith("adamjax") and "optax" in t and not low:
                what += f"; {t['optax'] / s:4.2f}x Optax's speed"
            if name.endswith("_bf16") and name[: -len("_bf16")] in t:
                base = t[name[: -len("_bf16")]]
                what = f"bf16 m,v: {s / base:4.2f}x the f32-state step ({gbs:5.1f} GB/s at 28 B)"
            if name.endswith("_int8"):
                base = t.get("adamjax_native", t["adamjax_jax"])
                what = f"8-bit m,v: {s / base:4.2f}x the default f32-state step"
            row(g, name, _ms(s), ratio, what)
        row(g, "(native roofline is)", "", entry["native_roofline"], "")

    # 2. Many leaves --------------------------------------------------------------------
    num_leaves = 250 if quick else 1000
    for label, params, include_flat_layout in [
        (f"{num_leaves} leaves 64x64", trees.leaves_tree(num_leaves), not quick),
        ("transformer tree", trees.transformer_tree(), True),
    ]:
        r = trees.run_tree(
            params, repeats=7 if quick else 21, include_flat_layout=include_flat_layout
        )
        results.setdefault("trees", {})[label] = r
        g = f"{label} ({r['leaves']} leaves, {r['params'] / 1e6:.1f}M)"
        st, ct = r["step_seconds"], r["compile_seconds"]
        for name in st:
            row(
                g,
                name,
                _ms(st[name]),
                f"step {st[name] / st['optax']:4.2f}x Optax's, "
                f"compile {ct[name] / ct['optax']:4.2f}x",
                f"update+apply donated; compile {ct[name]:6.2f} s",
            )

    # 3. MNIST MLP train step -------------------------------------------------------------
    mlp = train.run_mlp(repeats=9 if quick else 31, with_torch=with_torch)
    results["mnist_mlp"] = mlp
    t = mlp["seconds"]
    for name, s in t.items():
        ratio = f"{s / t['optax']:4.2f}x Flax+Optax"
        if "torch_eager" in t:
            ratio += f", {s / t['torch_eager']:4.2f}x PyTorch eager"
        row(
            "MNIST MLP train step", name, _ms(s), ratio, "784-1000-1000-10, batch 128, fwd+bwd+Adam"
        )

    # 3b. The step through Flax's train states and adamjax.flax's (benchmarks/paths.py)
    results["flax_paths"] = paths.run(sizes[1:], repeats=7 if quick else 21)
    for group, case, s, ratio, what in paths.rows(results["flax_paths"]):
        row(group, case, _ms(s), ratio, what)

    # 3c. The experiments' training step against the bare network (benchmarks/experiment_step.py)
    results["experiment_step"] = experiment_step.run(repeats=3 if quick else 7)
    for group, case, s, ratio, what in experiment_step.rows(results["experiment_step"]):
        row(group, case, _ms(s), ratio, what)

    # 4. Learning-rate grid -----------------------------------------------------------------
    grid = train.run_grid(points=16, steps=100 if quick else 200, repeats=3 if quick else 7)
    results["lr_grid"] = grid
    t = grid["seconds"]
    row(
        "16-point lr grid",
        "vmapped vs sequential",
        _ms(t["vmapped"]),
        f"{t['sequential'] / t['vmapped']:4.2f}x faster than sequential "
        f"({1e3 * t['sequential']:.1f} ms)",
        f"logistic regression, {grid['steps']} Adam steps per point under scan, a fresh "
        f"minibatch of 128 each step; "
        f"results agree: {grid['results_agree']}",
    )

    # 5. State bytes --------------------------------------------------------------------------
    sb = train.state_bytes(trees.transformer_tree())
    results["state_bytes"] = sb
    for name, b in sb["bytes_per_param"].items():
        row("optimizer state", name, f"{b:6.3f} B/param", "", "bytes of init's state / parameters")

    return _finish(args, results, rows, t_start)


def _finish(args, results, rows, t_start) -> int:
    results["rows"] = [
        dict(zip(("group", "case", "value", "ratio", "what"), r, strict=True)) for r in rows
    ]
    results["wall_seconds"] = time.time() - t_start
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1, default=str)
    print(f"\nwall time {results['wall_seconds']:.0f} s; JSON written to {args.json}")
    print("\n" + markdown_table(rows))
    return 0


def markdown_table(rows) -> str:
    lines = ["| what | case | median | ratios | measured |", "|---|---|---|---|---|"]
    for group, case, value, ratio, what in rows:
        lines.append(f"| {group} | {case} | {value.strip()} | {ratio} | {what} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

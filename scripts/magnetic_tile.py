"""Magnetic-tile benchmark: RIAD against the same network trained as a plain auto-encoder.

Trains RIAD on the good magnetic-tile images (../shared/data/magnetic_tile) at the
CPU-sized configuration of `configs/magnetic_tile.yaml`, trains the same U-Net with
the same loss, scoring, epochs and learning rate but without masking (the
auto-encoder baseline, `inpainting: false`), evaluates both on the same test split
and prints image AUROC, pixel AUROC, AUPRO and F1-max, overall and per defect type.
The tables are also written to `OUT/results.md` (and `OUT/results.json`).

The library does the work: `riad_tf.jobs.train_on_images` trains and calibrates,
`riad_tf.jobs.evaluate_images` evaluates. Re-running the same command resumes an
interrupted training from its last checkpoint; finished runs and their metrics are
reused, not recomputed.

Layout of OUT:

    riad/           the RIAD run (config, model, checkpoints, thresholds, eval/)
    autoencoder/    the auto-encoder run, same layout
    results.md      the tables below, with the configuration and the command
    results.json    the same figures, machine-readable

Example:

    python3 -m scripts.magnetic_tile                             # both models, ~40 min on 2 cores
    python3 -m scripts.magnetic_tile --epochs 1 --no-baseline --out runs/mt-smoke
    riad-tf evaluate runs/magnetic_tile/riad                     # the same evaluation, via the CLI
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

from riad_tf.identity import describe_config
from riad_tf.markdown import markdown_table

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "magnetic_tile"
DEFAULT_CONFIG = REPO / "configs" / "magnetic_tile.yaml"
DEFAULT_OUT = Path("runs") / "magnetic_tile"

# (label in the tables, run folder, value of RiadConfig.inpainting)
RIAD = ("RIAD", "riad", True)
AUTOENCODER = ("auto-encoder", "autoencoder", False)

# Keys of the config that may differ between a stored run and this invocation:
# more epochs continue a finished run from its checkpoint.
RESUMABLE_KEYS = frozenset({"epochs", "lr_decay_epoch"})

METRIC_COLUMNS = (
    ("image AUROC", "image_auroc"),
    ("pixel AUROC", "pixel_auroc"),
    ("AUPRO", "aupro"),
    ("F1-max", "f1_max"),
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train and evaluate RIAD and an equal-budget auto-encoder on the magnetic-tile data set.",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="magnetic-tile root holding MT_Free/, MT_Blowhole/, ... (default: %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output folder; re-run to resume (default: %(default)s)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help="RIAD config; the baseline uses it with inpainting off (default: %(default)s)",
    )
    parser.add_argument("--epochs", type=int, help="override the config's epochs (both models)")
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train the auto-encoder baseline (default: on)",
    )
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="per-step progress bars (default: on)"
    )
    return parser.parse_args(argv)


def fail(message: str, code: int = 1):
    """Exits with a one-line error on stderr."""
    print(f"magnetic_tile.py: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def load_config(args):
    """The RIAD config from `--config`, with `--epochs` applied."""
    from riad_tf.config import RiadConfig

    if not args.config.is_file():
        fail(f"{args.config}: config file not found")
    try:
        config = RiadConfig.load(args.config)
        if args.epochs is not None:
            if args.epochs < 1:
                fail(f"--epochs must be at least 1, got {args.epochs}")
            config = config.with_overrides({"epochs": args.epochs})
    except ValueError as err:
        fail(str(err).splitlines()[0])
    return config.with_overrides({"inpainting": True})


def load_split(data_dir: Path):
    """Lists and checks the data set, or exits with a clear message.

    Returns:
        The validated `DataSplit` (seeded 80/20 split of the good images).
    """
    from riad_tf.data import DataError, load_magnetic_tile
    from riad_tf.image_files import validate

    if not (data_dir / "MT_Free").is_dir():
        fail(
            f"{data_dir}: magnetic-tile data not found (expected MT_Free/, MT_Blowhole/, ... from "
            "abin24/Magnetic-tile-defect-datasets.); pass --data PATH",
            code=2,
        )
    try:
        split, skipped = validate(load_magnetic_tile(data_dir))
    except DataError as err:
        fail(str(err))
    if skipped:
        fail(f"{skipped[0][0]}: {skipped[0][1]}")
    return split


# ----------------------------------------------------------------------------
# One model


def _stored_config(run_dir: Path):
    from riad_tf.run import CONFIG_FILE, load_config

    return load_config(run_dir) if (run_dir / CONFIG_FILE).is_file() else None


def _check_compatible(run_dir: Path, config) -> None:
    """Stops when `run_dir` holds a run of another configuration (resuming it would mix the two)."""
    stored = _stored_config(run_dir)
    if stored is None:
        return
    old, new = stored.to_dict(), config.to_dict()
    changed = sorted(k for k in new if k not in RESUMABLE_KEYS and old.get(k) != new[k])
    if changed:
        detail = ", ".join(f"{k}: {old.get(k)} -> {new[k]}" for k in changed)
        fail(f"{run_dir} holds a run with another configuration ({detail}); use another --out or delete it")


def _history(run_dir: Path) -> list[dict]:
    from riad_tf.run import HISTORY_FILE

    path = run_dir / HISTORY_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def _is_trained(run_dir: Path, config) -> bool:
    """True when `run_dir` holds a finished, calibrated run of exactly `config`."""
    from riad_tf.run import MODEL_FILE, THRESHOLDS_FILE

    return (
        (run_dir / MODEL_FILE).is_file()
        and (run_dir / THRESHOLDS_FILE).is_file()
        and len(_history(run_dir)) >= config.epochs
        and _stored_config(run_dir) == config
    )


def _stored_metrics(run_dir: Path) -> dict | None:
    """The metrics of the current model, if an earlier evaluation of it is on disk."""
    from riad_tf.run import MODEL_FILE, eval_dir

    metrics, model = eval_dir(run_dir) / "metrics.json", run_dir / MODEL_FILE
    if metrics.is_file() and model.is_file() and metrics.stat().st_mtime >= model.stat().st_mtime:
        return json.loads(metrics.read_text())
    return None


def _record_data(run_dir: Path, data_dir: Path) -> None:
    """Writes the data spec the CLI stores, so `riad-tf evaluate RUN` finds the data."""
    from riad_tf.data import data_spec
    from riad_tf.run import save_data_spec

    save_data_spec(run_dir, data_spec(data_dir, "magnetic_tile"))


def run_model(label: str, run_dir: Path, config, split, data_dir: Path, progress: bool) -> dict:
    """Trains (or resumes, or reuses) one model and evaluates it on `split.test`.

    Returns:
        A result row: the label, the metrics summary of `evaluate_images`, training
        seconds (summed over the epochs in `history.json`, so resumed runs count
        every epoch once), evaluation seconds (None when an earlier evaluation
        was reused), epochs trained, and `reused` (nothing was computed).
    """
    from riad_tf.jobs import evaluate_images, train_on_images
    from riad_tf.run import eval_dir

    _check_compatible(run_dir, config)
    trained = _is_trained(run_dir, config)
    if trained:
        print(f"== {label}: {run_dir} is trained ({config.epochs} epochs); reusing it", flush=True)
    else:
        print(f"== {label}: training in {run_dir} ({config.epochs} epochs)", flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        _record_data(run_dir, data_dir)
        train_on_images(config, split, run_dir, progress=progress)
    summary = _stored_metrics(run_dir) if trained else None
    eval_seconds = None
    if summary is None:
        print(f"== {label}: evaluating on {len(split.test)} test images", flush=True)
        started = time.time()
        summary = evaluate_images(run_dir, split.test, eval_dir(run_dir))
        eval_seconds = time.time() - started
        print(f"== {label}: evaluated in {eval_seconds:.0f} s", flush=True)
    history = _history(run_dir)
    return {
        "model": label,
        "run": str(run_dir),
        "train_seconds": sum(r["seconds"] for r in history),
        "eval_seconds": eval_seconds,
        "epochs": len(history),
        "reused": summary is not None and eval_seconds is None,
        "metrics": summary,
    }


# ----------------------------------------------------------------------------
# Tables


def _cell(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def overall_rows(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["model"] + [name for name, _ in METRIC_COLUMNS] + ["train time", "epochs"]
    rows = [
        [r["model"]]
        + [_cell(r["metrics"][key]) for _, key in METRIC_COLUMNS]
        + [_minutes(r["train_seconds"]), str(r["epochs"])]
        for r in results
    ]
    return header, rows


def defect_rows(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Per defect type (its images plus all good test images): image AUROC / pixel AUROC / AUPRO per model."""
    header = ["defect type", "images"] + [f"{r['model']} img / px / PRO" for r in results]
    types = sorted(results[0]["metrics"]["per_defect_type"])
    rows = []
    for name in types:
        blocks = [r["metrics"]["per_defect_type"][name] for r in results]
        cells = [" / ".join(_cell(b[k]) for k in ("image_auroc", "pixel_auroc", "aupro")) for b in blocks]
        rows.append([name, str(blocks[0]["num_anomalous"])] + cells)
    return header, rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in [header] + rows) for i in range(len(header))]
    lines = [header, ["-" * w for w in widths]] + rows
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def _timing(results: list[dict], wall_seconds: float) -> str:
    evals = ", ".join(
        f"{r['model']} {_minutes(r['eval_seconds'])}" for r in results if r.get("eval_seconds") is not None
    )
    return (
        f"Wall time of the whole command: {_minutes(wall_seconds)} (data checks, training, calibration, "
        f"evaluation and reports)" + (f"; evaluation alone: {evals}." if evals else ".")
    )


def results_markdown(results: list[dict], config, split, command: str, wall_seconds: float | None) -> str:
    from riad_tf.data import split_good

    good_test = sum(1 for s in split.test if s.label == 0)
    share = 1 - good_test / len(split.test)
    trivial_f1 = 2 * share / (1 + share)  # F1 of calling every test image anomalous
    _, validation, calibration = split_good(split.train, config.val_fraction, config.calibration_fraction, config.seed)
    lines = [
        "# Magnetic tile: RIAD against a plain auto-encoder at equal budget",
        "",
        f"Command: `{command}`",
        "",
        f"Configuration: {describe_config(config)}. The auto-encoder is the same network, loss, "
        "scoring, epochs and learning rate without masking (`inpainting: false`).",
        "",
        f"Data: {len(split.train)} good images for training ({len(validation)} of them held out for the "
        f"validation loss, {len(calibration)} for threshold calibration); test: {good_test} good and "
        f"{len(split.test) - good_test} defective images. Images are resized to the model's size, "
        "and anomaly maps are compared with the masks at that resolution. AUPRO integrates to FPR 0.3. "
        f"F1-max is tuned on the test data itself; calling every test image anomalous gives {trivial_f1:.3f}. Training time: wall time of the training epochs "
        "on this machine (shared CPU cores).",
        "",
        markdown_table(*overall_rows(results)),
        "",
        _timing(results, wall_seconds),
        "",
        "Per defect type (its images plus all good test images): image AUROC / pixel AUROC / AUPRO.",
        "",
        markdown_table(*defect_rows(results)),
        "",
    ]
    return "\n".join(lines)


def carry_over(out_dir: Path, results: list[dict], command: str, wall_seconds: float) -> tuple[str, float]:
    """Keeps what an earlier invocation measured when this one only reused its runs.

    Fills each reused row's evaluation seconds from `OUT/results.json`; when every
    row was reused, the earlier command and wall time stand.

    Returns:
        (command, wall seconds) to report.
    """
    path = out_dir / "results.json"
    if not path.is_file():
        return command, wall_seconds
    previous = json.loads(path.read_text())
    earlier = {row["model"]: row for row in previous.get("results", [])}
    for row in results:
        if row["reused"] and row["model"] in earlier:
            row["eval_seconds"] = earlier[row["model"]].get("eval_seconds")
    if all(row["reused"] for row in results) and previous.get("wall_seconds") is not None:
        return previous["command"], previous["wall_seconds"]
    return command, wall_seconds


def write_results(out_dir: Path, results: list[dict], config, split, command: str, wall_seconds: float) -> None:
    from edge.files import atomic_write_text

    atomic_write_text(out_dir / "results.md", results_markdown(results, config, split, command, wall_seconds))
    atomic_write_text(
        out_dir / "results.json",
        json.dumps(
            {"command": command, "wall_seconds": wall_seconds, "config": config.to_dict(), "results": results}, indent=2
        )
        + "\n",
    )


# ----------------------------------------------------------------------------


def main(argv=None) -> int:
    started = time.time()
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the library's progress lines
    command = "python3 -m scripts.magnetic_tile " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    config = load_config(args)
    split = load_split(args.data)
    print(f"data: {split.describe()}", flush=True)
    print(f"config: {describe_config(config)}", flush=True)

    results = [run_model(RIAD[0], args.out / RIAD[1], config, split, args.data, args.progress)]
    baseline = config.with_overrides({"inpainting": AUTOENCODER[2]})
    baseline_dir = args.out / AUTOENCODER[1]
    if args.baseline or _is_trained(baseline_dir, baseline):  # keep an earlier baseline's figures
        results.append(run_model(AUTOENCODER[0], baseline_dir, baseline, split, args.data, args.progress))

    command, wall = carry_over(args.out, results, command.strip(), time.time() - started)
    write_results(args.out, results, config, split, command, wall)
    print()
    print(f"Magnetic tile, {describe_config(config)}")
    print(text_table(*overall_rows(results)))
    print()
    print("Per defect type: image AUROC / pixel AUROC / AUPRO")
    print(text_table(*defect_rows(results)))
    print(f"\n{_timing(results, wall)}\ntables in {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

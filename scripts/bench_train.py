#!/usr/bin/env python3
"""Training throughput of riad-tf: replicas, mixed precision and XLA, on this machine.

For every case (image size and U-Net widths) and every combination of replica
count, precision and XLA, the script builds the training state exactly as
`riad_tf.train.train_unet` does and runs the shared training step for `--warmup`
steps (tracing, compiling). Then it times `--steps` more of each, round-robin
over the configurations so that a shared machine's changing load hits all of
them alike, and reports the median. It also times the input pipeline
alone (shuffle, gather, mask drawing, prefetch) to show whether it could hold
the step back.

Without GPUs, "2 replicas" means MirroredStrategy over 2 logical CPU devices
that share the same cores: it checks the distributed path, not a speed-up.
Numbers on a shared machine are noisy.

Usage:

    python3 -m scripts.bench_train                            # 128 px full widths, 256 px reduced
    python3 -m scripts.bench_train --cases 64:reduced --steps 2 --warmup 1 --replicas 1
    python3 -m scripts.bench_train --precisions off mixed_float16 --json bench.json   # on GPUs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import riad_tf  # noqa: F401  (before TensorFlow: it sets TensorFlow's CPU defaults)

WIDTHS = {"default": (64, 128, 256, 512, 512), "half": (32, 64, 128, 256, 256), "reduced": (16, 32, 64, 64, 64)}


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases", nargs="+", default=["128:default", "256:reduced"], help="SIZE:WIDTHS, WIDTHS one of default, reduced"
    )
    parser.add_argument("--replicas", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--precisions", nargs="+", default=["off", "mixed_bfloat16"])
    parser.add_argument("--xla", nargs="+", choices=["off", "on"], default=["off", "on"])
    parser.add_argument("--batch-size", type=int, default=2, help="images per replica per step")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    return parser.parse_args(argv)


def _devices(max_replicas: int) -> list[str]:
    """GPUs when there are any; otherwise the CPU split into logical devices (before TF initialises)."""
    import tensorflow as tf

    from riad_tf.distribute import split_cpu

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return [d.name for d in tf.config.list_logical_devices("GPU")]
    return split_cpu(max_replicas)


def _strategy(devices: list[str], replicas: int):
    import tensorflow as tf

    if replicas == 1:
        return tf.distribute.OneDeviceStrategy(devices[0])
    return tf.distribute.MirroredStrategy(devices[:replicas])


def _random_images(count: int, size: int):
    import numpy as np

    return np.random.default_rng(0).random((count, size, size, 3), dtype=np.float32)


class StepBench:
    """One configuration's training step (the one `train` uses), built and warmed up."""

    def __init__(self, config, strategy, warmup: int):
        from riad_tf.train import build_training_state
        from riad_tf.training_step import make_train_step, training_batches

        self.global_batch = config.batch_size * strategy.num_replicas_in_sync
        unet, optimizer, _ = build_training_state(config, strategy)
        self.params = unet.count_params()
        self.step = make_train_step(unet, optimizer, config, strategy)
        images = _random_images(4 * self.global_batch, config.image_size[0])
        endless = config.with_overrides({"epochs": 1_000_000})
        dataset = training_batches(images, endless, self.global_batch, drop_remainder=True)
        self.batches = iter(strategy.experimental_distribute_dataset(dataset))
        started = time.perf_counter()
        for _ in range(warmup):
            self.timed_step()
        self.warmup_s = time.perf_counter() - started

    def timed_step(self) -> float:
        """Seconds for one step, waiting for its result."""
        started = time.perf_counter()
        float(self.step(next(self.batches))[0])
        return time.perf_counter() - started


def bench_pipeline(config, global_batch: int, batches: int = 20) -> float:
    """Images/s the input pipeline alone delivers (host side, masks included)."""
    from riad_tf.training_step import training_batches

    images = _random_images(4 * global_batch, config.image_size[0])
    iterator = iter(
        training_batches(images, config.with_overrides({"epochs": 1_000_000}), global_batch, drop_remainder=True)
    )
    next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return round(batches * global_batch / (time.perf_counter() - started), 1)


def _prepared(base, args, devices, widths: str, pipeline: float) -> tuple[list[dict], list]:
    """One row and one built `StepBench` (None where it failed) per replica count, precision and XLA setting."""
    rows, benches = [], []
    for replicas in args.replicas:
        for precision in args.precisions:
            for xla in args.xla:
                config = base.with_overrides({"mixed_precision": precision, "xla": xla == "on"})
                row = dict(size=base.image_size[0], widths=widths, replicas=replicas, precision=precision, xla=xla)
                row["pipeline_images_per_s"] = pipeline
                try:
                    bench = StepBench(config, _strategy(devices, replicas), args.warmup)
                    row.update(global_batch=bench.global_batch, params=bench.params, warmup_s=round(bench.warmup_s, 1))
                except Exception as err:  # report and go on with the other configurations
                    bench = None
                    row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
                rows.append(row)
                benches.append(bench)
    return rows, benches


def _timed(rows: list[dict], benches: list, steps: int) -> None:
    """Adds `step_s` and `images_per_s` to the rows whose bench was built.

    Timed steps go round-robin over the configurations, so a shared machine's changing
    load hits all of them alike; each gets the median of its steps.
    """
    times = [[] for _ in benches]
    for _ in range(steps):
        for bench, spent in zip(benches, times):
            if bench is not None:
                spent.append(bench.timed_step())
    for row, bench, spent in zip(rows, benches, times):
        if bench is not None:
            step_s = statistics.median(spent)
            row.update(step_s=round(step_s, 3), images_per_s=round(bench.global_batch / step_s, 2))


def _table_row(row: dict) -> str:
    keys = ("size", "widths", "params", "replicas", "precision", "xla", "global_batch", "step_s")
    cells = [row.get(k, "-") for k in keys]
    cells += [row.get("images_per_s", row.get("error")), row.get("warmup_s", "-"), row["pipeline_images_per_s"]]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def main(argv=None) -> int:
    args = _parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    devices = _devices(max(args.replicas))
    import keras
    import tensorflow as tf

    from riad_tf.config import RiadConfig

    print(
        f"# riad-tf training throughput: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"devices {devices}, TensorFlow {tf.__version__}, Keras {keras.__version__}"
    )
    print(f"# command: {' '.join([os.path.basename(sys.argv[0])] + (argv if argv is not None else sys.argv[1:]))}")
    print(
        f"# {args.batch_size} image(s) per replica per step, {args.warmup} warm-up + {args.steps} timed steps "
        "(round-robin, median); "
        "K = {2, 4, 8, 16}, n = 3 (each image is 3 U-Net inputs)"
    )
    print()
    print(
        "| size | widths | params | replicas | precision | xla | global batch | step s | images/s | warm-up s | pipeline images/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for case in args.cases:
        size, widths = case.split(":")
        base = RiadConfig(image_size=(int(size), int(size)), widths=WIDTHS[widths], batch_size=args.batch_size)
        pipeline = bench_pipeline(base, args.batch_size * max(args.replicas))
        rows, benches = _prepared(base, args, devices, widths, pipeline)
        _timed(rows, benches, args.steps)
        for row in rows:
            print(_table_row(row), flush=True)
        results.extend(rows)
        del benches
        keras.backend.clear_session()
    if args.json:
        from edge.files import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

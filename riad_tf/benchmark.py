"""How fast RIAD runs, and how close it comes to the machine's peak (`riad-tf benchmark`).

RIAD costs n x |K| U-Net passes per image at inference (12 with the paper's
K = {2, 4, 8, 16}, n = 3, Algorithm 3) and n per image in training
(Algorithm 2). This module measures, for one config:

- the model's FLOPs and the machine's peak (`riad_tf.flops`);
- inference images/s and latency of the whole n x |K|-pass detector on each
  path (`PATHS`): Keras under `tf.function`, the same with XLA, ONNX Runtime
  fp32/int8 and LiteRT fp32/fp16/int8 through `edge.runner.Runner`; the achieved
  GFLOP/s (FLOPs per image x images/s) and its share of the float32 peak;
- the batched detector against the paper's sequential loop (one k and one mask
  at a time, as the public re-implementations do): the same maps, the speed-up;
- scaling over batch size and image size (cost per pixel should stay flat);
- training images/s (one `riad_tf.training_step.make_train_step` step) in float32 and
  mixed bfloat16.

Timings are wall-clock medians of a few calls after warm-up; the peak RSS is
the process's high-water mark so far (`ru_maxrss`), so it only grows over a run.

Example:

>>> from riad_tf.config import RiadConfig
>>> cfg = RiadConfig(image_size=(32, 32), widths=(4, 8, 8, 16, 16), ks=(2, 4), smoothing=5)
>>> report = benchmark_report(cfg, paths=("keras",), batches=(1,), iters=1, warmup=1)  # doctest: +SKIP
>>> print(format_report(report))                                                    # doctest: +SKIP
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import tempfile
import time
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from edge.bench import timed_calls as timings
from riad_tf.config import RiadConfig
from riad_tf.detector import Detector
from riad_tf.distribute import cpu_bf16_support
from riad_tf.flops import machine_peak, riad_flops
from riad_tf.inpaint import assemble, mask_images
from riad_tf.model import build_unet

TRAINING_PRECISIONS = ("float32", "mixed_bfloat16")  # the training table
PATHS = ("keras", "xla", "onnx", "onnx-int8", "tflite-fp32", "tflite-fp16", "tflite-int8")
# path -> (export format, precision, key of the written model)
EXPORTED_PATHS = {
    "onnx": ("onnx", "fp32", "onnx"),
    "onnx-int8": ("onnx", "int8", "onnx_int8"),
    "tflite-fp32": ("tflite", "fp32", "tflite"),
    "tflite-fp16": ("tflite", "fp16", "tflite"),
    "tflite-int8": ("tflite", "int8", "tflite"),
}


# ----------------------------------------------------------------------------
# Memory


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def _record(name: str, batch: int, seconds: list[float], flops_per_image: int, peak: float | None, **extra) -> dict:
    median = float(np.median(seconds))
    images_per_s = batch / median
    gflops = flops_per_image * images_per_s / 1e9
    return {
        "path": name,
        "batch": int(batch),
        "iters": len(seconds),
        "latency_ms": round(median * 1e3, 2),
        "images_per_s": round(images_per_s, 3),
        "gflops": round(gflops, 1),
        "peak_share": round(gflops / peak, 3) if peak else None,
        "peak_rss_mb": peak_rss_mb(),
        **extra,
    }


def _images(config: RiadConfig, batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, *config.input_shape), dtype=np.float32)


# ----------------------------------------------------------------------------
# Inference paths


def sequential_maps(detector: Detector, images):
    """The paper's loop: one k and one mask at a time through the U-Net, then the same scoring.

    This is what the public re-implementations do; `Detector` batches all
    n x |K| copies instead. Same masks, so the maps agree to float rounding.

    Returns:
        `(maps (B, H, W), scores (B,))` tensors.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    recs = []
    for masks in detector.masks:  # one k: (n, H, W, 1)
        outputs = [
            tf.cast(detector.unet(mask_images(images, mask[None]), training=False), tf.float32) for mask in masks
        ]
        recs.append(sum(assemble(out, mask[None]) for out, mask in zip(outputs, masks)))  # Eq. 2
    return detector._score(images, tf.stack(recs))


def keras_runner(detector: Detector, xla: bool = False) -> Callable[[np.ndarray], tuple]:
    """The detector under `tf.function` (with XLA when asked), numpy in and out."""
    spec = tf.TensorSpec([None, *detector.config.input_shape], tf.float32)
    step = tf.function(detector.call, input_signature=[spec], jit_compile=xla, reduce_retracing=True)
    return lambda images: tuple(t.numpy() for t in step(tf.constant(images)))


def exported_runner(detector: Detector, path_name: str, out_dir, threads: int | None, max_batch: int):
    """Exports the detector for one path (`EXPORTED_PATHS`) and opens it with `edge.runner.Runner`."""
    from edge.runner import Runner
    from riad_tf.export import export_detector

    kind, precision, key = EXPORTED_PATHS[path_name]
    representative = _images(detector.config, 8, seed=1) if precision == "int8" else None
    written = export_detector(
        detector,
        out_dir,
        formats=(kind,),
        precision=precision,
        batch=None,
        representative_images=representative,
        name=f"riad_{path_name.replace('-', '_')}",
        verify=False,
    )
    return Runner.open(written[key], threads=threads, max_batch=max_batch)


def _open_path(detector, path_name: str, out_dir, threads, max_batch):
    if path_name == "keras":
        return keras_runner(detector)
    if path_name == "xla":
        return keras_runner(detector, xla=True)
    if path_name in EXPORTED_PATHS:
        return exported_runner(detector, path_name, out_dir, threads, max_batch)
    raise ValueError(f"unknown path {path_name!r}; choose from {', '.join(PATHS)}")


def bench_inference(detector, paths, batches, flops_per_image, peak, iters, warmup, threads=None) -> list[dict]:
    """One record per (path, batch): latency, images/s, GFLOP/s, share of peak and peak RSS.

    Each record also has the largest score difference from the Keras detector (`max_score_diff`).
    """
    records = []
    reference = {b: detector.score(_images(detector.config, b), batch_size=b)[1] for b in batches}
    with tempfile.TemporaryDirectory(prefix="riad-bench-") as tmp:
        for name in paths:
            started = time.perf_counter()
            run = _open_path(detector, name, os.path.join(tmp, name), threads, max(batches))
            prepare_s = round(time.perf_counter() - started, 1)
            for batch in batches:
                images = _images(detector.config, batch)
                _, scores = run(images)
                seconds = timings(lambda run=run, images=images: run(images), max(0, warmup - 1), iters)
                diff = float(np.max(np.abs(np.asarray(scores) - reference[batch])))
                delegate = getattr(
                    getattr(run, "session", None), "delegate", "tensorflow"
                )  # after the calls: LiteRT may fall back
                records.append(
                    _record(
                        name,
                        batch,
                        seconds,
                        flops_per_image,
                        peak,
                        prepare_s=prepare_s,
                        max_score_diff=diff,
                        delegate=delegate,
                    )
                )
    return records


def bench_sequential(detector, batch, flops_per_image, peak, iters, warmup) -> dict:
    """The batched detector against `sequential_maps` on the same images: agreement and speed-up."""
    images = tf.constant(_images(detector.config, batch))
    batched = tf.function(detector.call, reduce_retracing=True)
    sequential = tf.function(lambda x: sequential_maps(detector, x), reduce_retracing=True)
    maps_b, scores_b = batched(images)
    maps_s, scores_s = sequential(images)
    fast = _record(
        "batched",
        batch,
        timings(lambda: [t.numpy() for t in batched(images)], max(0, warmup - 1), iters),
        flops_per_image,
        peak,
    )
    slow = _record(
        "sequential",
        batch,
        timings(lambda: [t.numpy() for t in sequential(images)], max(0, warmup - 1), iters),
        flops_per_image,
        peak,
    )
    return {
        "batch": int(batch),
        "batched": fast,
        "sequential": slow,
        "speedup": round(fast["images_per_s"] / slow["images_per_s"], 2),
        "max_map_diff": float(tf.reduce_max(tf.abs(maps_b - maps_s))),
        "max_score_diff": float(tf.reduce_max(tf.abs(scores_b - scores_s))),
    }


def bench_scaling(config: RiadConfig, batches, sizes, peak, iters, warmup) -> dict:
    """Keras-path images/s over batch sizes (at the config's size) and over image sizes (batch 1).

    Each record adds `us_per_pixel`: microseconds per image pixel, flat when the
    cost is linear in the pixel count.
    """
    out = {"batch": [], "image_size": []}
    for key, points in (
        ("batch", [(config, b) for b in batches]),
        ("image_size", [(_resized(config, s), 1) for s in sizes]),
    ):
        for cfg, batch in points:
            unet = build_unet(cfg.input_shape, cfg.unet_widths, cfg.skip_connections)
            flops = riad_flops(cfg, unet)["per_image"]
            run = keras_runner(Detector(unet, cfg))
            images = _images(cfg, batch)
            record = _record(
                "keras",
                batch,
                timings(lambda run=run, images=images: run(images), warmup, iters),
                flops,
                peak,
                image_size=cfg.image_size[0],
            )
            record["us_per_pixel"] = round(
                record["latency_ms"] * 1e3 / (batch * cfg.image_size[0] * cfg.image_size[1]), 3
            )
            out[key].append(record)
    return out


def _resized(config: RiadConfig, size: int) -> RiadConfig:
    ks = tuple(k for k in config.ks if size % k == 0) or (2,)
    return config.with_overrides(
        {"image_size": (size, size), "ks": ks, "smoothing": min(config.smoothing, size // 4 * 2 + 1)}
    )


# ----------------------------------------------------------------------------
# Training


def bench_training(config: RiadConfig, batch: int, precisions, peak, iters, warmup) -> list[dict]:
    """Images/s of `riad_tf.training_step.make_train_step` (Algorithm 2 step: forward, backward, Adam) per precision.

    Args:
        precisions: Keras dtype policies, e.g. ("float32", "mixed_bfloat16").
    """
    from riad_tf.distribute import precision_policy
    from riad_tf.masks import random_grid_masks
    from riad_tf.training_step import make_train_step

    config = config.with_overrides({"batch_size": batch})
    flops = riad_flops(config)["train_per_image"]
    images = tf.constant(_images(config, batch))
    height, width = config.image_size
    masks = tf.cast(random_grid_masks(batch, height, width, config.ks, config.n, seed=0), tf.uint8)
    strategy = tf.distribute.get_strategy()
    records = []
    for policy in precisions:
        with precision_policy(policy):
            unet = build_unet(config.input_shape, config.unet_widths, config.skip_connections)
        optimizer = keras.optimizers.Adam(config.learning_rate)
        optimizer.build(unet.trainable_variables)
        step = make_train_step(unet, optimizer, config, strategy)
        seconds = timings(lambda step=step: step((images, masks))[0].numpy(), warmup, iters)
        records.append(_record(f"train-{policy}", batch, seconds, flops, peak, xla=bool(config.xla)))
    return records


# ----------------------------------------------------------------------------
# The whole benchmark


def untrained_detector(config: RiadConfig, seed: int = 0) -> Detector:
    """A detector with random weights (seeded), for speed measurements: they do not depend on training."""
    keras.utils.set_random_seed(seed)
    return Detector(build_unet(config.input_shape, config.unet_widths), config)


def machine_info(threads: int | None) -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "bf16_native": bool(cpu_bf16_support()),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "TensorFlow's default"),  # riad_tf sets 1 on x86-64
    }


def benchmark_report(
    config: RiadConfig,
    *,
    paths: Sequence[str] = ("keras", "xla", "onnx"),
    batches: Sequence[int] = (1, 4),
    iters: int = 3,
    warmup: int = 1,
    threads: int | None = None,
    sequential: bool = True,
    scaling_batches: Sequence[int] = (),
    scaling_sizes: Sequence[int] = (),
    training: bool = False,
    train_batch: int = 8,
    peak_size: int = 2048,
) -> dict:
    """Runs every requested part and returns one JSON-ready dict (see `format_report`).

    Args:
        config: model and RIAD settings (image size, widths, K, n); the U-Net has random weights.
        paths: inference paths from `PATHS`.
        batches: images per call for the inference table.
        iters, warmup: timed calls and untimed warm-up calls per measurement.
        threads: CPU threads for ONNX Runtime and LiteRT (TensorFlow's are set before it starts: `riad-tf benchmark --threads`).
        sequential: compare with the sequential per-k, per-mask loop (at the smallest batch).
        scaling_batches, scaling_sizes: the scaling tables (empty: skipped).
        training: measure training steps, float32 and mixed bfloat16.
        train_batch: images per training step.
        peak_size: matrix size of the peak measurement.

    Returns:
        `{"machine", "config", "flops", "peak", "inference", "sequential", "scaling", "training"}`.
    """
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise ValueError(f"unknown path(s) {', '.join(unknown)}; choose from {', '.join(PATHS)}")
    keras.utils.set_random_seed(config.seed)
    peak = machine_peak(peak_size, threads)
    unet = build_unet(config.input_shape, config.unet_widths, config.skip_connections)
    flops = riad_flops(config, unet, profile=True)
    detector = Detector(unet, config)
    per_image, fp32_peak = flops["per_image"], peak["float32"]
    settings = dict(image_size=list(config.image_size), widths=list(config.unet_widths), ks=list(config.ks))
    settings.update(n=config.n, iters=iters, warmup=warmup)
    report = {"machine": machine_info(threads), "config": settings, "flops": flops, "peak": peak}
    report["inference"] = bench_inference(detector, paths, batches, per_image, fp32_peak, iters, warmup, threads)
    report["sequential"] = (
        bench_sequential(detector, min(batches), per_image, fp32_peak, iters, warmup) if sequential else None
    )
    report["scaling"] = None
    if scaling_batches or scaling_sizes:
        report["scaling"] = bench_scaling(config, scaling_batches, scaling_sizes, fp32_peak, iters, warmup)
    report["training"] = None
    if training:
        report["training"] = bench_training(config, train_batch, TRAINING_PRECISIONS, fp32_peak, iters, warmup)
    return report


# ----------------------------------------------------------------------------
# Tables


def _table(records: list[dict], columns: Sequence[str]) -> str:
    rows = [[str(r.get(c)) for c in columns] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]

    def line(cells):
        return "| " + " | ".join(cell.rjust(w) for cell, w in zip(cells, widths)) + " |"

    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def format_report(report: dict) -> str:
    """The report as Markdown tables."""
    flops, peak, machine = report["flops"], report["peak"], report["machine"]
    parts = [
        f"machine: {machine['processor']}, {machine['cpus']} CPUs, threads {machine['threads']}, "
        f"native bf16: {machine['bf16_native']}, TF {machine['tensorflow']} (oneDNN: {machine['onednn']})",
        f"config: image {report['config']['image_size']}, widths {report['config']['widths']}, K {report['config']['ks']}, n {report['config']['n']}",
        f"FLOPs: {flops['per_pass'] / 1e9:.3f} GFLOP per U-Net pass, {flops['passes_per_image']} passes, "
        f"{flops['per_image'] / 1e9:.2f} GFLOP per image ({flops['method']}); "
        f"TF profiler on the frozen graph: {flops.get('graph_per_pass', 0) / 1e9:.3f} GFLOP per pass (all ops)",
        f"peak (dense {peak['size']}^2 matmul): float32 {peak['float32']} GFLOP/s (tf.matmul {peak.get('tf_float32')}, "
        f"numpy BLAS {peak.get('blas_float32')}), bfloat16 tf.matmul {peak['bfloat16']} GFLOP/s",
        "",
        "inference (whole detector):",
        _table(
            report["inference"],
            (
                "path",
                "batch",
                "latency_ms",
                "images_per_s",
                "gflops",
                "peak_share",
                "max_score_diff",
                "delegate",
                "prepare_s",
                "peak_rss_mb",
            ),
        ),
    ]
    seq = report.get("sequential")
    if seq:
        parts += [
            "",
            f"batched vs sequential loop (batch {seq['batch']}): speed-up {seq['speedup']}x, "
            f"max map diff {seq['max_map_diff']:.2e}, max score diff {seq['max_score_diff']:.2e}",
            _table(
                [seq["batched"], seq["sequential"]],
                ("path", "batch", "latency_ms", "images_per_s", "gflops", "peak_share"),
            ),
        ]
    scaling = report.get("scaling")
    if scaling:
        columns = ("image_size", "batch", "latency_ms", "images_per_s", "us_per_pixel", "gflops", "peak_share")
        for key in ("batch", "image_size"):
            if scaling[key]:
                parts += ["", f"scaling over {key.replace('_', ' ')} (keras path):", _table(scaling[key], columns)]
    if report.get("training"):
        parts += [
            "",
            "training (one step, forward + backward + Adam; FLOPs = 3 x n forward passes):",
            _table(
                report["training"],
                ("path", "batch", "latency_ms", "images_per_s", "gflops", "peak_share", "peak_rss_mb"),
            ),
        ]
    return "\n".join(parts)

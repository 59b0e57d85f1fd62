"""Sustained line rate of `riad-edge stream`: lines/s for a W-pixel line, per model, runtime and tile stride.

Not a test: it prints one JSON line per (model, runtime, stride) with the
lines/s the whole pipeline sustains (capture, resampling to the model's scale,
tiling, inference, stitching, regions, records; the camera is a replayed
synthetic strip that never waits), the end-to-end latency p50/p99, and the
ratio to the first line's rate (all measured in this one run, on this machine).

Runtimes: every `.onnx` runs on ONNX Runtime and, when OpenVINO is installed,
on OpenVINO in f32 and (where the CPU has AMX or AVX512-BF16) bf16; `.tflite`
files on LiteRT; `.engine` files on TensorRT. Strides: `model` (the model's
`tile_stride`, the default of `riad-edge stream`) and any shares of a tile
(1.0: no overlap); frames always continue one grid of tiles.

    python3 -m scripts.bench_stream runs/x/export/riad.onnx runs/x/export/riad_int8.onnx --width 4096
    python3 -m scripts.bench_stream --tiny-export /tmp/bench_models --width 1024    # exports a tiny model first

`--tiny-export DIR` exports an untrained (8, 16, 16, 32, 32) detector at
32x32 to ONNX and TFLite with riad_tf (TensorFlow needed for that step only);
speed does not depend on training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from edge.runner import Runner
from edge.stream import ImageLineScan, StreamPipeline, StreamSettings


class _Discard:
    def write(self, record):
        pass


def woven_strip(lines: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r = np.arange(lines, dtype=np.float32)[:, None]
    c = np.arange(width, dtype=np.float32)[None, :]
    grey = (
        0.5 + 0.15 * np.sin(np.pi * c / 2) + 0.15 * np.sin(np.pi * r / 2) + 0.02 * rng.standard_normal((lines, width))
    )
    return np.round(np.clip(grey, 0, 1) * 255).astype(np.uint8)


def tiny_export(out_dir: Path, size: int = 32) -> list[Path]:
    from riad_tf.benchmark import untrained_detector
    from riad_tf.config import RiadConfig
    from riad_tf.export import export_detector

    cfg = RiadConfig(image_size=(size, size), channels=1, widths=(8, 16, 16, 32, 32), ks=(2, 4, 8), smoothing=5)
    detector = untrained_detector(cfg)
    written = export_detector(
        detector, out_dir, formats=("onnx", "tflite"), batch=None, thresholds={"image": 1.0, "region": 1.0}
    )
    return [written["onnx"], written["tflite"]]


def runtimes(model: Path) -> list[tuple[str, dict]]:
    """(label, `Runner.open` options) of every runtime this machine has for `model`."""
    if model.suffix != ".onnx":
        return [("default", {})]
    found = [("onnxruntime", {})]
    try:
        import openvino  # noqa: F401
    except ImportError:
        return found
    from edge.bench import cpu_flags
    from edge.openvino import OpenVinoSettings

    found.append(("openvino-f32", {"openvino": OpenVinoSettings(precision="f32")}))
    if cpu_flags() & {"amx_bf16", "avx512_bf16"}:
        found.append(("openvino-bf16", {"openvino": OpenVinoSettings(precision="bf16")}))
    return found


def bench(model: Path, runtime: tuple[str, dict], width: int, lines: int, stride: str, args) -> dict:
    from edge.tiling import tile_stride

    label, options = runtime
    runner = Runner.open(model, threads=args.threads, **options)
    share = None if stride == "model" else float(stride)
    tiles = tile_stride(runner.image_size, share) if share else None
    settings = StreamSettings(stride=tiles, batch_frames=args.batch_frames, pixel_threshold=1e9)
    strip = woven_strip(lines, width)
    pipeline = StreamPipeline(runner, settings)
    pipeline.run(ImageLineScan(strip[: pipeline.frame_height * 2], lines_per_block=64), _Discard())  # warm-up
    pipeline = StreamPipeline(runner, settings)
    summary = pipeline.run(ImageLineScan(strip, lines_per_block=64), _Discard())
    return {
        "model": model.name,
        "runtime": label,
        "precision": runner.metadata.precision,
        "width": width,
        "lines": summary["lines"],
        "tile": list(runner.image_size),
        "scale": summary["scale"],
        "stride": summary["stride"],
        "frame_height": summary["frame_height"],
        "overlap": summary["overlap"],
        "lines_per_s": summary["lines_per_s"],
        "latency_ms": summary["latency"],
        "seconds": summary["seconds"],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument(
        "--tiny-export", type=Path, default=None, help="Export a tiny untrained model here and bench it."
    )
    parser.add_argument("--width", type=int, default=4096, help="pixels per camera line (default: %(default)s)")
    parser.add_argument("--lines", type=int, default=1024, help="camera lines replayed (default: %(default)s)")
    parser.add_argument(
        "--strides", default="model,1.0", help="tile strides: 'model' and/or shares of a tile (default: %(default)s)"
    )
    parser.add_argument("--batch-frames", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    models = list(args.models) + (tiny_export(args.tiny_export) if args.tiny_export else [])
    if not models:
        parser.error("give model files, or --tiny-export DIR")
    first = None
    for model in models:
        for runtime in runtimes(model):
            for stride in args.strides.split(","):
                result = bench(model, runtime, args.width, args.lines, stride.strip(), args)
                first = first or result["lines_per_s"]
                result["ratio_to_first"] = round(result["lines_per_s"] / first, 3)
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

"""Sustained line rate of `riad-edge stream` for a line width W and model, for each backend.

Not a test: it prints one JSON line per model with the lines/s the whole
pipeline sustains (capture, tiling, inference, stitching, regions, records;
the camera is a replayed synthetic strip that never waits), the end-to-end
latency p50/p99 and the tiles/s.

    python3 -m scripts.bench_stream runs/x/export/riad.onnx runs/x/export/riad_fp32.tflite --width 2048
    python3 -m scripts.bench_stream --tiny-export /tmp/bench_models --width 1024    # exports a tiny model first

`--tiny-export DIR` exports an untrained (8, 16, 16, 32, 32) detector at
32x32 to ONNX and TFLite with riad_tf (TensorFlow needed for that step only);
speed does not depend on training. TensorRT engines are given as `.engine`
files built on the device (`riad-edge build-engine`).
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


def bench(model: Path, width: int, lines: int, settings: StreamSettings, threads: int | None) -> dict:
    runner = Runner.open(model, threads=threads)
    strip = woven_strip(lines, width)
    pipeline = StreamPipeline(runner, settings)
    pipeline.run(ImageLineScan(strip[: settings.frame_height * 2], lines_per_block=64), _Discard())  # warm-up
    summary = StreamPipeline(runner, settings).run(ImageLineScan(strip, lines_per_block=64), _Discard())
    tile_h, tile_w = runner.image_size
    return {
        "model": model.name,
        "backend": summary["backend"],
        "width": width,
        "lines": summary["lines"],
        "tile": [tile_h, tile_w],
        "widths": runner.metadata.config.get("widths"),
        "stride": list(pipeline.scorer.stride),
        "frame_height": settings.frame_height,
        "overlap": settings.overlap,
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
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--lines", type=int, default=1024)
    parser.add_argument("--frame-height", type=int, default=128)
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--stride", type=int, default=None, help="Tile stride (default: half a tile).")
    parser.add_argument("--batch-frames", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    models = list(args.models) + (tiny_export(args.tiny_export) if args.tiny_export else [])
    if not models:
        parser.error("give model files, or --tiny-export DIR")
    stride = (args.stride, args.stride) if args.stride else None
    settings = StreamSettings(
        frame_height=args.frame_height,
        overlap=args.overlap,
        stride=stride,
        batch_frames=args.batch_frames,
        pixel_threshold=1e9,
    )
    for model in models:
        print(json.dumps(bench(model, args.width, args.lines, settings, args.threads)), flush=True)


if __name__ == "__main__":
    main()

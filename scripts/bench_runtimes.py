#!/usr/bin/env python3
"""OpenVINO against ONNX Runtime on this CPU, in one run: images/s and agreement, fp32, int8 and bf16.

Not a test. Exports one RIAD detector (default U-Net widths at `--image-size`,
or a product's with `--config`; random weights: speed does not depend on
training) to ONNX in float32 and with the U-Net quantized to int8 (`riad-tf
export --onnx --precision int8`), then times every runtime configuration the
CPU supports on the same inputs:

    onnxruntime fp32      riad.onnx on ONNX Runtime's CPU provider
    onnxruntime int8      riad_int8.onnx on ONNX Runtime
    openvino f32          riad.onnx on OpenVINO, inference precision f32
    openvino bf16         riad.onnx on OpenVINO, bf16 (only where the CPU has AVX512-BF16 or AMX)
    openvino int8         riad_int8.onnx on OpenVINO (its quantized layers in int8)

The configurations take turns (`--rounds`), so that a slower phase of a shared
machine falls on all of them alike. Printed: images/s and per-call latency
at each batch size, the ratio to ONNX Runtime fp32, and the largest score and
map difference to ONNX Runtime fp32 on the same images.

    python3 -m scripts.bench_runtimes                                  # about 6 min on 2 cores
    python3 -m scripts.bench_runtimes --model-dir export/ --batch-sizes 1,8 --json-file runtimes.json
    python3 -m scripts.bench_runtimes --config configs/magnetic_tile.yaml   # that product's size, channels, widths
    python3 -m scripts.bench_runtimes --model-dir E/onnx --also nncf=E/onnx-nncf/riad_int8.onnx   # more models

Needs riad-tf's [tf] extra to export (skipped with --model-dir) and OpenVINO
(`pip install 'riad-tf[openvino]'`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import numpy as np

from edge.bench import cpu_facts, timed_calls
from edge.runner import Runner


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="an export with riad.onnx (and riad_int8.onnx); default: export")
    parser.add_argument(
        "--out", type=Path, help="where to export (default: runs/bench-runtimes/CONFIG or default-SIZE)"
    )
    parser.add_argument("--image-size", type=int, help="square input size (default: the config's, or 128)")
    parser.add_argument("--config", type=Path, help="a riad-tf YAML config: its size, channels and widths are timed")
    parser.add_argument("--batch-sizes", default="1,8", help="images per call (default: %(default)s)")
    parser.add_argument("--iters", type=int, default=5, help="timed calls per batch size and round")
    parser.add_argument("--rounds", type=int, default=3, help="turns every configuration takes")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="runtime threads (default: all cores)")
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=MODEL",
        help="another ONNX detector of the same input to time on ONNX Runtime and OpenVINO in the same turns "
        "(e.g. nncf=export-nncf/riad_int8.onnx; repeatable)",
    )
    parser.add_argument("--json-file", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.also):
        parser.error("--also takes NAME=MODEL")
    names = [item.split("=", 1)[0] for item in args.also]
    if len(set(names)) < len(names) or set(names) & {"fp32", "int8", "f32", "bf16"}:
        parser.error("--also needs names of its own (not fp32, int8, f32 or bf16, and each once)")
    return args


def sample_images(count: int, size: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """Woven textures `(count, size, size, channels)` in [0, 1], the synthetic data set's (grey: their mean)."""
    from riad_tf.synthetic import woven_texture

    rng = np.random.default_rng(seed)
    images = np.stack([woven_texture(size, rng) for _ in range(count)]).astype(np.float32)
    return images if channels == 3 else images.mean(axis=-1, keepdims=True)


def timed_config(args):
    """The `RiadConfig` whose U-Net is timed: `--config`'s or the defaults, at `--image-size` when given."""
    import dataclasses

    from riad_tf.config import RiadConfig

    config = RiadConfig.load(args.config) if args.config else RiadConfig(image_size=(128, 128))
    return dataclasses.replace(config, image_size=(args.image_size,) * 2) if args.image_size else config


def export_models(out: Path, config) -> Path:
    """riad.onnx and riad_int8.onnx of an untrained detector of `config` (reused when `out` has them)."""
    if (out / "riad.onnx").is_file() and (out / "riad_int8.onnx").is_file():
        return out
    from riad_tf.benchmark import untrained_detector
    from riad_tf.export import export_detector

    export_detector(
        untrained_detector(config),
        out,
        formats=("onnx",),
        precision="int8",
        batch=None,
        representative_images=sample_images(32, config.image_size[0], seed=1, channels=config.channels),
        verify=False,
    )
    return out


def configurations(model_dir: Path, bf16: bool, also: list[str] = ()) -> list[tuple[str, Path, object]]:
    """(name, model, OpenVINO settings or None for ONNX Runtime) of every timed configuration, ORT fp32 first.

    `also`: NAME=MODEL items, each timed on ONNX Runtime and on OpenVINO.
    """
    from edge.openvino import OpenVinoSettings

    fp32, int8 = model_dir / "riad.onnx", model_dir / "riad_int8.onnx"
    models = ([("int8", int8)] if int8.is_file() else []) + [tuple(item.split("=", 1)) for item in also]
    found = [("onnxruntime fp32", fp32, None)] + [(f"onnxruntime {name}", Path(path), None) for name, path in models]
    found.append(("openvino f32", fp32, OpenVinoSettings("CPU", "f32")))
    if bf16:
        found.append(("openvino bf16", fp32, OpenVinoSettings("CPU", "bf16")))
    return found + [(f"openvino {name}", Path(path), OpenVinoSettings("CPU", "f32")) for name, path in models]


def measure(args, model_dir: Path) -> dict:
    facts = cpu_facts()
    batches = [int(b) for b in args.batch_sizes.split(",")]
    runners = {}
    for name, path, openvino in configurations(model_dir, bool(facts["bf16"]), args.also):
        runners[name] = Runner.open(path, threads=args.threads, openvino=openvino, max_batch=max(batches))
    metadata = runners["onnxruntime fp32"].metadata
    size, channels = metadata.image_size[0], metadata.channels
    images = sample_images(max(batches), size, seed=2, channels=channels)
    probe = sample_images(4, size, seed=3, channels=channels)
    reference_maps, reference_scores = runners["onnxruntime fp32"](probe)
    seconds = {(name, b): [] for name in runners for b in batches}
    for _ in range(args.rounds):
        for name, runner in runners.items():
            for b in batches:
                seconds[(name, b)] += timed_calls(
                    lambda runner=runner, b=b: runner(images[:b]), warmup=1, iters=args.iters
                )
    rows = []
    for name, runner in runners.items():
        maps, scores = runner(probe)
        row = {
            "runtime": name,
            "score_diff": float(np.abs(scores - reference_scores).max()),
            "map_diff": float(np.abs(maps - reference_maps).max()),
        }
        for b in batches:
            median = statistics.median(seconds[(name, b)])
            row[f"b{b}_ms"] = 1e3 * median
            row[f"b{b}_images_per_s"] = b / median
        rows.append(row)
    return {
        **facts,
        "threads": args.threads,
        "image_size": size,
        "channels": channels,
        "widths": list(metadata.config.get("widths", [])),
        "batch_sizes": batches,
        "rows": rows,
    }


def table(results: dict) -> str:
    batches = results["batch_sizes"]
    reference = results["rows"][0]
    head = ["runtime"] + [f"batch {b}: ms / call, images/s, x ORT fp32" for b in batches]
    head += ["max score diff", "max map diff"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in results["rows"]:
        cells = [row["runtime"]]
        for b in batches:
            ratio = row[f"b{b}_images_per_s"] / reference[f"b{b}_images_per_s"]
            cells.append(f"{row[f'b{b}_ms']:.1f}, {row[f'b{b}_images_per_s']:.2f}, {ratio:.2f}x")
        cells += [f"{row['score_diff']:.1e}", f"{row['map_diff']:.1e}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.model_dir:
        model_dir = args.model_dir
    else:
        config = timed_config(args)
        name = args.config.stem if args.config else "default"
        model_dir = export_models(
            args.out or Path("runs") / "bench-runtimes" / f"{name}-{config.image_size[0]}", config
        )
    results = measure(args, model_dir)
    print(
        f"{results['cpu']}, {results['cores']} cores, bfloat16: {', '.join(results['bf16']) or 'none'}; "
        f"{results['threads']} threads; {results['image_size']} px, {results['channels']} channel(s), "
        f"widths {results['widths']}, " + (f"the models in {model_dir}" if args.model_dir else "random weights")
    )
    print(table(results))
    if args.json_file:
        args.json_file.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

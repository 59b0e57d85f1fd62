"""Speed/accuracy operating points on the magnetic-tile data: pick a model for a line rate.

Each point is an input size and a `width_multiplier` (config values) applied to
`configs/magnetic_tile.yaml`. For every point the script trains RIAD on the good
magnetic-tile images (or resumes, or reuses a finished run), evaluates it on the
test split, exports it and times the whole n x |K|-pass detector on the edge
runtimes, then prints one table:

    size, widths, GFLOP per image, image AUROC, pixel AUROC, AUPRO,
    images/s on the fastest edge path, and lines/s for a line-scan camera of
    `--line-width` pixels.

Lines/s assume square tiles of the model's size laid side by side without
overlap: a band of S lines needs ceil(W / S) tiles, so
lines/s = images/s x S / ceil(W / S). Overlapping tiles (`riad-edge stream
--overlap`) cost proportionally more.

Training and evaluation are `scripts/magnetic_tile.py`'s (`run_model`), so a
re-run resumes an interrupted point and reuses finished ones. The table is also
written to OUT/operating_points.md and .json.

Example:

    python3 -m scripts.operating_points                                   # 3 points, about 1 h on 2 cores
    python3 -m scripts.operating_points --points 64x0.5 --epochs 1 --out runs/op-smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path

from riad_tf.markdown import markdown_table
from scripts import magnetic_tile as mt  # the training and evaluation of one run

DEFAULT_OUT = Path("runs") / "operating_points"
EDGE_PATHS = ("onnx", "tflite-fp32")


def parse_point(text: str) -> tuple[int, float]:
    """Parses "SIZExMULTIPLIER" (e.g. "128x0.5") into (128, 0.5)."""
    try:
        size, multiplier = text.lower().split("x")
        return int(size), float(multiplier)
    except ValueError:
        raise argparse.ArgumentTypeError(f"operating point {text!r} is not SIZExMULTIPLIER, e.g. 64x0.5") from None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=mt.DEFAULT_DATA, help="magnetic-tile root (default: %(default)s)")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="one run folder per point; re-run to resume (default: %(default)s)",
    )
    parser.add_argument("--config", type=Path, default=mt.DEFAULT_CONFIG, help="base config (default: %(default)s)")
    parser.add_argument(
        "--points",
        type=parse_point,
        nargs="+",
        default=[(64, 1.0), (64, 0.5), (128, 0.5)],
        help="SIZExWIDTH_MULTIPLIER, relative to the config's widths (default: 64x1.0 64x0.5 128x0.5)",
    )
    parser.add_argument("--epochs", type=int, help="override the config's epochs")
    parser.add_argument(
        "--line-width", type=int, default=4096, help="line-scan camera width in pixels (default: %(default)s)"
    )
    parser.add_argument("--batch", type=int, default=8, help="images per edge call when timing (default: %(default)s)")
    parser.add_argument("--iters", type=int, default=3, help="timed calls per path (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="edge runtime threads (default: all cores)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return parser.parse_args(argv)


def point_config(base, size: int, multiplier: float):
    """The base config at one operating point: square `size` and `width_multiplier`.

    The mean filter s_f (Eq. 8) is scaled with the image, as the base config did
    from the paper's 21 at 256 px (odd, at least 3).
    """
    scale = size / base.image_size[0]
    smoothing = max(3, int(round(base.smoothing * scale)) // 2 * 2 + 1)
    return base.with_overrides({"image_size": (size, size), "width_multiplier": multiplier, "smoothing": smoothing})


def lines_per_second(images_per_s: float, tile: int, line_width: int) -> float:
    """Camera lines per second when square tiles of `tile` px cover a `line_width` px line without overlap."""
    return images_per_s * tile / math.ceil(line_width / tile)


def edge_speed(run_dir: Path, batch: int, iters: int, threads) -> dict:
    """Images/s of the trained detector on each `EDGE_PATHS` runtime (export + `edge.runner.Runner`)."""
    from riad_tf.benchmark import bench_inference
    from riad_tf.flops import riad_flops
    from riad_tf.run import load_detector

    detector = load_detector(run_dir)
    flops = riad_flops(detector.config, detector.unet)["per_image"]
    records = bench_inference(detector, EDGE_PATHS, (batch,), flops, None, iters, 1, threads)
    best = max(records, key=lambda r: r["images_per_s"])
    return {
        "gflop_per_image": flops / 1e9,
        "paths": records,
        "best_path": best["path"],
        "images_per_s": best["images_per_s"],
    }


def measure_point(args, base, split, size: int, multiplier: float) -> dict:
    config = point_config(base, size, multiplier)
    name = f"{size}px_x{multiplier:g}"
    run_dir = args.out / name
    row = mt.run_model(name, run_dir, config, split, args.data, args.progress)
    speed_file = run_dir / "edge_speed.json"
    settings = {"batch": args.batch, "iters": args.iters, "threads": args.threads}
    speed = json.loads(speed_file.read_text()) if speed_file.is_file() else {}
    if speed.get("settings") != settings or speed_file.stat().st_mtime < (run_dir / "model.keras").stat().st_mtime:
        print(f"== {name}: timing {', '.join(EDGE_PATHS)} at batch {args.batch}", flush=True)
        speed = {**edge_speed(run_dir, args.batch, args.iters, args.threads), "settings": settings}
        from edge.files import atomic_write_text

        atomic_write_text(speed_file, json.dumps(speed, indent=2) + "\n")
    return {
        **row,
        "size": size,
        "width_multiplier": multiplier,
        "widths": list(config.unet_widths),
        **speed,
        "lines_per_s": lines_per_second(speed["images_per_s"], size, args.line_width),
    }


def table(rows: list[dict], line_width: int) -> tuple[list[str], list[list[str]]]:
    header = [
        "size",
        "widths",
        "GFLOP/image",
        "image AUROC",
        "pixel AUROC",
        "AUPRO",
        "images/s (path)",
        f"lines/s at {line_width} px",
        "train time",
    ]
    body = [
        [
            f"{r['size']} px",
            "-".join(map(str, r["widths"])),
            f"{r['gflop_per_image']:.2f}",
            *(mt._cell(r["metrics"][key]) for key in ("image_auroc", "pixel_auroc", "aupro")),
            f"{r['images_per_s']:.1f} ({r['best_path']})",
            f"{r['lines_per_s']:.0f}",
            mt._minutes(r["train_seconds"]),
        ]
        for r in rows
    ]
    return header, body


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the library's progress lines
    args = parse_args(argv)
    if args.line_width < 1 or args.batch < 1:
        mt.fail("--line-width and --batch must be positive")
    started = time.time()
    base = mt.load_config(args)
    split = mt.load_split(args.data)
    rows = [measure_point(args, base, split, size, multiplier) for size, multiplier in args.points]
    header, body = table(rows, args.line_width)
    print(mt.text_table(header, body))
    command = "python3 " + " ".join(
        shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]
    )
    text = "\n".join(
        [
            "# Operating points on magnetic tile",
            "",
            f"Command: `{command}`",
            "",
            f"Base configuration: {mt.describe_config(base)}; each row sets the image size and width multiplier. "
            f"images/s: the whole {base.n} x {len(base.ks)}-pass detector, batch {args.batch}, fastest of {', '.join(EDGE_PATHS)}. "
            "lines/s: square tiles side by side, no overlap.",
            "",
            markdown_table(header, body),
            "",
            f"Wall time: {mt._minutes(time.time() - started)}.",
            "",
        ]
    )
    from edge.files import atomic_write_text

    atomic_write_text(args.out / "operating_points.md", text)
    atomic_write_text(
        args.out / "operating_points.json", json.dumps({"command": command, "rows": rows}, indent=2, default=str) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

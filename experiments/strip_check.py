#!/usr/bin/env python3
r"""Magnetic-tile strips through `riad-edge stream` and `riad-edge infer`, with a model trained at a scale.

A line camera's strip is simulated from held-out images: good magnetic-tile
test images that neither training, calibration nor `experiments.scale_check`'s
evaluation used, each cut to the strip's width around its centre, stacked top
to bottom, with a defective image (cut around its defect) after every
`--every` good ones. The strips are written as PNGs and run through the CLI:

- `riad-edge stream MODEL --source STRIP.png` (the default frames, stride and
  thresholds from the model), and
- `riad-edge infer MODEL STRIP.png` (tiled at the model's scale: the whole
  strip as one image).

Printed and written to OUT/strips.md (and strips.json): false alarms (stream
regions on good lines only) per 1000 good lines against the calibrated
promise, defective pieces found (a region overlapping the defect's mask
box), and how many regions `stream` and `infer` report in common (equal
boxes) and alone.

Example:

    python3 -m experiments.strip_check --run runs/scale/scaled-0 --out runs/strips
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def parse_args(argv=None) -> argparse.Namespace:
    from experiments.compare_reference import DEFAULT_DATA

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a run trained at a scale (experiments.scale_check)")
    parser.add_argument("--model", type=Path, default=None, help="its ONNX export (default: exported to OUT)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--runs", type=Path, default=Path("runs/partitions"), help="compare_reference's OUT")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=256, help="strip width in camera pixels")
    parser.add_argument("--strips", type=int, default=3)
    parser.add_argument("--good-per-strip", type=int, default=20)
    parser.add_argument("--every", type=int, default=5, help="a defective piece after every N good ones")
    parser.add_argument("--out", type=Path, default=Path("runs/strips"))
    parser.add_argument(
        "--runtime", choices=("onnxruntime", "openvino"), default="onnxruntime", help="of both stream and infer"
    )
    return parser.parse_args(argv)


def pieces(args):
    """(good, defective) samples for the strips: test images scale_check did not evaluate, wide enough."""
    from experiments import compare_reference, partition_check
    from riad_tf.data import load_magnetic_tile
    from riad_tf.image_files import image_size_of

    compare = partition_check.compare_args(args.runs, args.seed, Path("configs/default.yaml"))
    compare.data = args.data
    _, evaluated = compare_reference.seeded_samples(compare)
    used = {s.path for s in evaluated}
    split = load_magnetic_tile(args.data, seed=args.seed)
    wide = [s for s in split.test if s.path not in used and image_size_of(s.path)[1] >= args.width]
    good = [s for s in wide if s.label == 0]
    defective = [s for s in wide if s.label == 1 and s.mask_path is not None]
    rng = np.random.default_rng(args.seed)
    return [good[i] for i in rng.permutation(len(good))], [defective[i] for i in rng.permutation(len(defective))]


def _cut(image: np.ndarray, centre: int, width: int) -> np.ndarray:
    left = int(np.clip(centre - width // 2, 0, image.shape[1] - width))
    return image[:, left : left + width]


def build_strip(good, defective, args) -> tuple[np.ndarray, list[dict]]:
    """The strip (uint8 grey) and its pieces: {"lines": [first, last], "label", "box" (defect, strip coords)}."""
    from riad_tf.image_files import read_mask

    rows, parts, line = [], [], 0
    defects = iter(defective)
    for i, sample in enumerate(good):
        order = [sample] + ([next(defects)] if (i + 1) % args.every == 0 else [])
        for piece in order:
            image = np.asarray(Image.open(piece.path).convert("L"))
            box = None
            if piece.label:
                mask = read_mask(piece.mask_path, None)
                ys, xs = np.nonzero(mask)
                if not len(ys):  # an empty mask (four MT_Uneven ones): nothing to find
                    continue
                image, mask = _cut(image, int(xs.mean()), args.width), _cut(mask, int(xs.mean()), args.width)
                ys, xs = np.nonzero(mask)
                box = [line + int(ys.min()), int(xs.min()), line + int(ys.max()), int(xs.max())] if len(ys) else None
            else:
                image = _cut(image, image.shape[1] // 2, args.width)
            rows.append(image)
            parts.append({"lines": [line, line + len(image) - 1], "label": piece.label, "box": box})
            line += len(image)
    return np.concatenate(rows), parts


def run(command: list[str]) -> list[dict]:
    done = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def stream_regions(model: Path, strip: Path, out: Path, runtime: str) -> tuple[list[tuple], dict]:
    run(["edge.cli", "stream", str(model), "--source", str(strip), "--output", str(out), "--runtime", runtime])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    boxes = [
        (g["lines"][0], g["columns"][0], g["lines"][1], g["columns"][1])
        for r in records
        if r["type"] in ("frame", "regions")
        for g in r["regions"]
    ]
    return sorted(boxes), records[-1]


def infer_regions(model: Path, strip: Path, runtime: str) -> list[tuple]:
    (record,) = run(["edge.cli", "infer", str(model), str(strip), "--runtime", runtime])
    return sorted((g["rows"][0], g["columns"][0], g["rows"][1], g["columns"][1]) for g in record.get("regions", []))


def overlaps(box, other) -> bool:
    return box[0] <= other[2] and other[0] <= box[2] and box[1] <= other[3] and other[1] <= box[3]


SEAM_LINES = 16  # a region this close to where two stacked pieces meet may be the seam, not the part


def tally(boxes, parts) -> dict:
    """False alarms on good lines (and how many touch a seam between stacked pieces), and defective pieces found.

    The strips are photographs stacked top to bottom; where two meet, the
    texture and brightness jump, which a real line camera's strip never does.
    """
    good_lines = sum(p["lines"][1] - p["lines"][0] + 1 for p in parts if not p["label"])
    defect_lines = [p["lines"] for p in parts if p["label"]]
    false = [b for b in boxes if not any(b[0] <= last and first <= b[2] for first, last in defect_lines)]
    seams = [p["lines"][0] for p in parts[1:]]
    at_seams = [b for b in false if any(b[0] - SEAM_LINES <= seam <= b[2] + SEAM_LINES for seam in seams)]
    defects = [p["box"] for p in parts if p["label"] and p["box"]]
    found = sum(any(overlaps(b, d) for b in boxes) for d in defects)
    return {
        "good_lines": good_lines,
        "false_alarms": len(false),
        "false_alarms_at_seams": len(at_seams),
        "defects": len(defects),
        "found": found,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        model = args.out / "export" / "riad.onnx"
        if not model.is_file():
            run(["riad_tf.cli", "export", str(args.run), "--onnx", "--fixed-batch", "0", "--out", str(model.parent)])
    thresholds = json.loads((args.run / "thresholds.json").read_text())
    good, defective = pieces(args)
    per = args.good_per_strip
    if len(good) < args.strips * per:
        raise SystemExit(f"strip_check: {len(good)} good pieces at least {args.width} px wide; ask for fewer")
    rows, results = [], []
    for k in range(args.strips):
        strip, parts = build_strip(good[k * per : (k + 1) * per], defective[k * per // args.every :], args)
        path = args.out / f"strip_{k}.png"
        Image.fromarray(strip).save(path)
        streamed, summary = stream_regions(model, path, args.out / f"strip_{k}.jsonl", args.runtime)
        inferred = infer_regions(model, path, args.runtime)
        result = {
            "strip": path.name,
            "lines": len(strip),
            **tally(streamed, parts),
            "infer": tally(inferred, parts),
            "common": len(set(streamed) & set(inferred)),
            "stream_only": len(set(streamed) - set(inferred)),
            "infer_only": len(set(inferred) - set(streamed)),
            "lines_per_s": summary["lines_per_s"],
        }
        results.append(result)
        rate = 1000 * result["false_alarms"] / result["good_lines"]
        rows.append(
            [
                path.name,
                str(len(strip)),
                f"{result['false_alarms']} ({rate:.2f}), {result['false_alarms_at_seams']} at seams",
                f"{result['found']} of {result['defects']}",
            ]
            + [f"{result['infer']['found']} of {result['infer']['defects']}"]
            + [str(result[k]) for k in ("common", "stream_only", "infer_only")]
        )
    from riad_tf.markdown import markdown_table

    good_lines = sum(r["good_lines"] for r in results)
    false = sum(r["false_alarms"] for r in results)
    away = false - sum(r["false_alarms_at_seams"] for r in results)
    promise = thresholds.get("false_alarms_per_1000_lines")
    text = "\n".join(
        [
            f"# Magnetic-tile strips through riad-edge stream and infer (`{args.run}`)",
            "",
            f"Command: `python3 -m experiments.strip_check {' '.join(sys.argv[1:] if argv is None else argv)}`",
            "",
            f"Strips {args.width} px wide; {per} good held-out pieces each, a defective piece after every "
            f"{args.every}. Model: `{model}`.",
            "",
            markdown_table(
                [
                    "strip",
                    "lines",
                    f"stream false alarms (per 1000 good lines), within {SEAM_LINES} lines of a seam",
                    "stream: defects found",
                    "infer: defects found",
                    "regions in both",
                    "stream only",
                    "infer only",
                ],
                rows,
            ),
            "",
            f"All strips: {false} false alarms on {good_lines} good lines = {1000 * false / good_lines:.3f} per 1000 "
            f"lines; calibrated promise: at most about {promise:.3f} per 1000 lines "
            f"(supported image rate {thresholds['supported_fpr']:.3g} over {thresholds['lines_per_image']:.0f}-line "
            f"calibration images). Away from the seams between stacked pieces: {away} "
            f"({1000 * away / good_lines:.3f} per 1000 lines).",
            "",
        ]
    )
    (args.out / "strips.md").write_text(text)
    (args.out / "strips.json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

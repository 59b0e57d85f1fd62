#!/usr/bin/env python3
"""Where an exported ONNX detector spends its time in ONNX Runtime: per operator type, U-Net and the rest.

Not a test. Runs each model `--iters` times on random images of its input
size with ONNX Runtime's profiler on (`SessionOptions.enable_profiling`), and
prints, per model, the kernel time per call of every operator type and how much
of it lies in the U-Net (nodes under its name scope) against the masking,
assembly and scoring around it. The layout reorders ONNX Runtime inserts around
its blocked convolutions (`ReorderInput`, `ReorderOutput`) have no scope; they
are counted apart. That share bounds what quantizing the U-Net
can gain: with a share s of the time in the U-Net, int8 that makes the U-Net r
times faster makes the model at most 1 / (1 - s + s / r) times faster. Read the
share on the float32 model: in a quantized one, ONNX Runtime's fused int8
kernels (`QLinearConv`) take new names without the scope, so its U-Net share
counts only the U-Net's unfused nodes.

    python3 -m scripts.profile_onnx runs/mt64/riad/export/riad.onnx runs/mt64/riad/export/riad_int8.onnx
    python3 -m scripts.profile_onnx export/riad.onnx --batch 8 --threads 2 --json-file profile.json
    python3 -m scripts.profile_onnx export/riad.onnx export/riad_int8.onnx --nodes 20   # and where, node by node

Times come from one process and one run; compare models only within it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

import numpy as np

UNET_NAME = "riad_unet"  # the Keras name of the U-Net (riad_tf.model)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="ONNX models with one image input")
    parser.add_argument("--batch", type=int, default=1, help="images per call (default: %(default)s)")
    parser.add_argument("--iters", type=int, default=20, help="profiled calls after one warm-up (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads (default: all cores)")
    parser.add_argument("--nodes", type=int, default=0, help="also list each model's N slowest nodes")
    parser.add_argument("--json-file", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def random_input(session, batch: int) -> dict[str, np.ndarray]:
    """`{input name: random images}` for the session's one image input (float32 in [0, 1], or uint8)."""
    (spec,) = session.get_inputs()
    shape = [batch, *(d if isinstance(d, int) else 1 for d in spec.shape[1:])]
    rng = np.random.default_rng(0)
    if spec.type == "tensor(uint8)":
        return {spec.name: rng.integers(0, 256, shape, dtype=np.uint8)}
    return {spec.name: rng.random(shape, dtype=np.float32)}


def kernel_events(trace: list[dict]) -> list[tuple[str, str, float]]:
    """`(node name, operator type, microseconds)` of every kernel run in an ONNX Runtime profile."""
    events = []
    for event in trace:
        args = event.get("args", {})
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time") and "op_name" in args:
            events.append((event["name"][: -len("_kernel_time")], args["op_name"], float(event["dur"])))
    return events


def profile(path: Path, batch: int, iters: int, threads: int) -> dict:
    """Kernel milliseconds per call of `path`: in all, per operator type, and in the U-Net's nodes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"riad-profile-{os.getpid()}-{path.stem}")
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    feed = random_input(session, batch)
    for _ in range(iters + 1):
        session.run(None, feed)
    trace_path = Path(session.end_profiling())
    events = kernel_events(json.loads(trace_path.read_text()))
    trace_path.unlink()
    runs = iters + 1
    first_run = len(events) // runs  # the warm-up's events come first
    events = events[first_run:]
    per_op, per_node, node_ops = collections.Counter(), collections.Counter(), {}
    unet = reorders = 0.0
    for name, op, micros in events:
        per_op[op] += micros
        per_node[name] += micros
        node_ops[name] = op
        unet += micros if UNET_NAME in name else 0.0
        reorders += micros if op.startswith("Reorder") else 0.0
    total = sum(per_op.values())
    per_call = 1e-3 / iters
    return {
        "model": str(path),
        "batch": batch,
        "ms_per_call": total * per_call,
        "unet_ms_per_call": unet * per_call,
        "reorder_ms_per_call": reorders * per_call,
        "ops_ms_per_call": {op: micros * per_call for op, micros in per_op.most_common()},
        "nodes_ms_per_call": [(name, node_ops[name], micros * per_call) for name, micros in per_node.most_common()],
    }


def table(results: list[dict]) -> str:
    ops = sorted(
        {op for r in results for op in r["ops_ms_per_call"]}, key=lambda op: -results[0]["ops_ms_per_call"].get(op, 0)
    )
    head = ["operator"] + [Path(r["model"]).name + ", ms" for r in results]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "--:|" * len(results)]
    for op in ops:
        lines.append("| " + " | ".join([op] + [f"{r['ops_ms_per_call'].get(op, 0.0):.2f}" for r in results]) + " |")
    lines.append("| **kernels in all** | " + " | ".join(f"{r['ms_per_call']:.2f}" for r in results) + " |")
    for label, key in (
        ("of which in the U-Net", "unet_ms_per_call"),
        ("of which layout reorders", "reorder_ms_per_call"),
    ):
        shares = (f"{r[key]:.2f} ({100 * r[key] / r['ms_per_call']:.0f} %)" for r in results)
        lines.append(f"| {label} | " + " | ".join(shares) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    for path in args.models:
        if not path.is_file():
            raise SystemExit(f"{path}: no such model file")
    results = [profile(path, args.batch, args.iters, args.threads) for path in args.models]
    print(f"batch {args.batch}, {args.threads} threads, {args.iters} profiled calls each; kernel time per call")
    print(table(results))
    if args.nodes:
        for result in results:
            print(f"\n{result['model']}: the {args.nodes} slowest nodes, ms per call")
            for name, op, ms in result["nodes_ms_per_call"][: args.nodes]:
                print(f"{ms:9.2f}  {op:<16} {name}")
    if args.json_file:
        args.json_file.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

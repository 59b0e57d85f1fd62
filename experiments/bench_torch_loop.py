"""riad-tf's detector against a PyTorch per-k loop, on the same CPU and configuration.

The public PyTorch re-implementations of RIAD score an image with two nested
Python loops: for each region size k, for each of the n masks, one U-Net call on
the masked batch, then the masked parts are pasted together (Eq. 2). This script
builds the same U-Net (Fig. 4: the widths, kernel sizes and strides of
`riad_tf.model.build_unet`) in PyTorch (`reference_torch.UNet`), runs that loop, and times it against
riad-tf's batched detector (all n x |K| masked copies in one call, scoring
included) on the paths given. Both get the same threads. The PyTorch side is
timed WITHOUT the MSGMS scoring, which favours it.

Needs PyTorch: `pip install -e .[reference]` (measured with torch 2.13.0)
(on this kind of machine that takes a CPU build from the local disk).

Example:

    python3 -m experiments.bench_torch_loop --image-size 128 --batch 1 --iters 3
    python3 -m experiments.bench_torch_loop --image-size 256 --paths xla,onnx,tflite-fp32 --json torch256.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--width-multiplier", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=1, help="images per call (default: %(default)s)")
    parser.add_argument("--iters", type=int, default=3, help="timed calls after one warm-up (median)")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="threads for both frameworks (default: all cores)"
    )
    parser.add_argument(
        "--paths", default="keras,xla,onnx,tflite-fp32", help="riad-tf paths to time (riad_tf.benchmark.PATHS)"
    )
    parser.add_argument("--json", type=str, help="also write the records here")
    return parser.parse_args(argv)


def per_k_loop(torch, unet, images, masks_per_k):
    """The re-implementations' inference: for each k, for each mask, one U-Net call (Eq. 2 assembly)."""
    reconstructions = []
    with torch.inference_mode():
        for masks in masks_per_k:  # one k: n masks (1, 1, H, W), 1 = region kept
            reconstruction = torch.zeros_like(images)
            for mask in masks:
                reconstruction += unet(images * mask) * (1 - mask)
            reconstructions.append(reconstruction)
    return reconstructions


def torch_baseline(torch, unet, config, flops: float, args) -> dict:
    """The record of the PyTorch per-k, per-mask loop over the same U-Net (no scoring): the baseline."""
    from experiments.reference_torch import UNet  # the same network as riad_tf.model.build_unet, in PyTorch
    from riad_tf.benchmark import timings
    from riad_tf.masks import inference_masks

    net = UNet(config.unet_widths, config.channels).eval()
    torch_count = sum(t.numel() for name, t in net.state_dict().items() if not name.endswith("num_batches_tracked"))
    if torch_count != unet.count_params():  # the same layers, so the same FLOPs
        raise SystemExit(
            f"bench_torch_loop: PyTorch U-Net has {torch_count} values, the Keras one {unet.count_params()}"
        )
    images = torch.rand(args.batch, config.channels, *config.image_size)
    masks = inference_masks(*config.image_size, config.ks, config.n, config.seed)  # (|K|, n, H, W, 1)
    masks_per_k = [
        [torch.from_numpy(np.ascontiguousarray(mask.transpose(2, 0, 1)))[None] for mask in per_k] for per_k in masks
    ]
    seconds = float(np.median(timings(lambda: per_k_loop(torch, net, images, masks_per_k), 1, args.iters)))
    baseline = {
        "path": f"torch-{torch.__version__}-per-k-loop (no scoring)",
        "batch": args.batch,
        "latency_ms": round(seconds * 1e3, 2),
        "images_per_s": round(args.batch / seconds, 3),
        "gflops": round(flops * args.batch / seconds / 1e9, 1),
    }

    return baseline


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        print(
            "bench_torch_loop: PyTorch is not installed; `pip install -e .[reference]` and re-run",
            file=sys.stderr,
        )
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    import riad_tf  # noqa: F401  (before TensorFlow: it sets TensorFlow's CPU defaults)

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    torch.set_num_threads(args.threads)

    from riad_tf.benchmark import bench_inference
    from riad_tf.config import RiadConfig
    from riad_tf.detector import Detector
    from riad_tf.flops import riad_flops
    from riad_tf.model import build_unet

    config = RiadConfig(image_size=(args.image_size, args.image_size), width_multiplier=args.width_multiplier)
    unet = build_unet(config.input_shape, config.unet_widths, config.skip_connections)
    flops = riad_flops(config, unet)["per_image"]

    baseline = torch_baseline(torch, unet, config, flops, args)

    paths = tuple(p.strip() for p in args.paths.split(",") if p.strip())
    records = bench_inference(Detector(unet, config), paths, (args.batch,), flops, None, args.iters, 1, args.threads)
    print(
        f"{config.image_size[0]} px, widths {list(config.unet_widths)}, K = {list(config.ks)}, n = {config.n}, "
        f"batch {args.batch}, {args.threads} threads, {flops / 1e9:.1f} GFLOP per image"
    )
    print("| path | latency_ms | images/s | GFLOP/s | x the PyTorch loop |")
    print("|---|---|---|---|---|")
    for record in [baseline, *records]:
        ratio = record["images_per_s"] / baseline["images_per_s"]
        print(
            f"| {record['path']} | {record['latency_ms']} | {record['images_per_s']} | {record['gflops']} | {ratio:.2f} |"
        )
    if args.json:
        from edge.files import atomic_write_text

        atomic_write_text(
            args.json,
            json.dumps({"config": config.to_dict(), "baseline": baseline, "records": records}, indent=2) + "\n",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

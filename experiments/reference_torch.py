#!/usr/bin/env python3
"""The common public PyTorch RIAD recipe, written anew as riad-tf's reference.

What the public PyTorch re-implementations of RIAD do, with PyTorch's layer
defaults and nothing of riad-tf's:

- the U-Net of `riad_tf.model.build_unet` (Fig. 4: same widths, kernels and
  strides) with PyTorch's initialisation and batch norm (momentum 0.1, i.e.
  Keras's 0.9, epsilon 1e-5);
- Adam, learning rate 1e-4, weight decay 1e-5 (added to the gradient, as
  `torch.optim.Adam` does), constant rate, batch 8;
- one k per batch drawn from K and one random partition into n = 3 cell sets
  shared by the batch (Algorithm 1);
- loss MSGMS + SSIM + MSE with equal weights (Eq. 7);
- the paper's inference (Algorithm 3, Eq. 8-10): one fixed partition per k,
  MSGMS maps upsampled bilinearly, 1 - mean filter (padding not counted),
  averaged over K; score = the map's maximum.

It reads the arrays that `experiments/compare_reference.py` writes (`data.npz`:
float32 NHWC images in [0, 1]), so both sides see the same pixels, and after
each epoch listed in `--eval-epochs` it writes the test maps and scores
(`eval/epoch_NNN.npz`). Per-epoch training seconds, losses and validation
losses go to `history.json`. The metrics themselves are computed by
`compare_reference.py` with riad-tf's metric code, for both sides alike.

`--mask-draw image`, `--precision bfloat16` (and `--learning-rate`,
`--weight-decay`) train with riad-tf's choices instead, one at a time, so
`experiments/sweep_reference.py` can measure which of them changes the accuracy;
`--device cuda` trains on a GPU. The defaults are the public recipe.

PyTorch comes with the `[reference]` extra: `pip install -e .[reference]` (measured with
torch 2.13.0).

Example:

    python3 -m experiments.reference_torch --data runs/compare/data.npz --out runs/compare/torch --epochs 40 --eval-epochs 13,40
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("reference_torch.py needs PyTorch: pip install -e .[reference]")


# ----------------------------------------------------------------------------
# Network (Fig. 4)


def conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    padding = (kernel - stride + 1) // 2  # "same" for 3x3 stride 1 and 4x4 stride 2
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class UNet(nn.Module):
    """Encoder of 5 blocks (the first at full resolution), mirrored decoder with skips, sigmoid output."""

    def __init__(self, widths=(64, 128, 256, 512, 512), channels: int = 3):
        super().__init__()
        self.encoder = nn.ModuleList()
        c_in = channels
        for level, width in enumerate(widths):
            first = conv_bn_relu(c_in, width, 4, 2) if level else conv_bn_relu(c_in, width, 3, 1)
            self.encoder.append(nn.Sequential(first, conv_bn_relu(width, width, 3, 1)))
            c_in = width
        self.up, self.decoder = nn.ModuleList(), nn.ModuleList()
        for level in range(len(widths) - 2, -1, -1):
            width = widths[level]
            self.up.append(nn.ConvTranspose2d(c_in, width, 4, 2, 1))
            self.decoder.append(nn.Sequential(conv_bn_relu(2 * width, width, 3, 1), conv_bn_relu(width, width, 3, 1)))
            c_in = width
        self.out = nn.Conv2d(c_in, channels, 3, 1, 1)

    def forward(self, x):
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        for up, block, skip in zip(self.up, self.decoder, reversed(skips[:-1])):
            x = block(torch.cat([up(x), skip], dim=1))
        with torch.autocast(x.device.type, enabled=False):  # the output layer in float32, as riad-tf's
            return torch.sigmoid(self.out(x.float()))


# ----------------------------------------------------------------------------
# Masks (Sec. 3.1, Eq. 1)


def grid_masks(height: int, width: int, k: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """N keep-masks `(n, H, W)`: the k x k cells randomly split into n disjoint sets, 0 inside a set."""
    rows, cols = height // k, width // k
    order = rng.permutation(rows * cols)
    owner = np.empty(rows * cols, np.int64)
    for i, cells in enumerate(np.array_split(order, n)):
        owner[cells] = i
    cell_owner = owner.reshape(rows, cols).repeat(k, 0).repeat(k, 1)
    return np.stack([(cell_owner != i) for i in range(n)]).astype(np.float32)


def inpaint(net, images, masks):
    """Eq. 2: the sum over i of (1 - M_i) * f(M_i * I); masks `(n, 1, H, W)` broadcast over the batch."""
    out = torch.zeros_like(images)
    for mask in masks:
        out = out + (1 - mask) * net(images * mask)
    return out


def inpaint_per_image(net, images, masks):
    """Eq. 2 with a partition per image `(B, n, 1, H, W)`, all B * n masked copies in one U-Net call (riad-tf's way)."""
    batch, n = masks.shape[:2]
    masked = (images[:, None] * masks).flatten(0, 1)
    restored = net(masked).unflatten(0, (batch, n))
    return ((1 - masks) * restored).sum(1)


def training_masks(batch: int, height: int, width: int, ks, n: int, per_image: bool, rng: np.random.Generator):
    """Algorithm 1's masks for one batch: `(n, 1, H, W)` shared by the batch, or `(B, n, 1, H, W)` per image."""
    if not per_image:
        return torch.from_numpy(grid_masks(height, width, ks[rng.integers(len(ks))], n, rng))[:, None]
    draws = [grid_masks(height, width, ks[rng.integers(len(ks))], n, rng) for _ in range(batch)]
    return torch.from_numpy(np.stack(draws))[:, :, None]


# ----------------------------------------------------------------------------
# Losses and maps (Eq. 3-7)


def _prewitt(device):
    h_x = torch.tensor([[1.0, 0.0, -1.0]] * 3, device=device) / 3.0
    return torch.stack([h_x, h_x.t()])[:, None]  # (2, 1, 3, 3), cross-correlation like conv2d


def gms_map(x, y, c: float = 0.0026):
    kernels = _prewitt(x.device)

    def magnitude(image):
        grads = F.conv2d(image.mean(1, keepdim=True), kernels, padding=1)
        return torch.sqrt(torch.clamp((grads**2).sum(1, keepdim=True), min=1e-20))

    gx, gy = magnitude(x), magnitude(y)
    return (2 * gx * gy + c) / (gx**2 + gy**2 + c)


def gms_pyramid(x, y, scales: int = 4):
    maps = []
    for level in range(scales):
        if level:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        maps.append(gms_map(x, y))
    return maps


def msgms_loss(x, y):
    return torch.stack([(1 - m).mean() for m in gms_pyramid(x, y)]).mean()


def msgms_map(x, y):
    size = x.shape[-2:]
    maps = [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in gms_pyramid(x, y)]
    return torch.stack(maps).mean(0)


def _gaussian_window(device, size: int = 11, sigma: float = 1.5):
    coords = torch.arange(size, dtype=torch.float32, device=device) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim_loss(x, y):
    """1 - SSIM, 11 x 11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, valid region, per channel."""
    channels = x.shape[1]
    window = _gaussian_window(x.device).expand(channels, 1, 11, 11)

    def blur(t):
        return F.conv2d(t, window, groups=channels)

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return 1 - ssim.mean()


def riad_loss(x, y):
    return msgms_loss(x, y) + ssim_loss(x, y) + F.mse_loss(x, y)


# ----------------------------------------------------------------------------
# Inference (Algorithm 3, Eq. 8-10)


def inference_masks(height: int, width: int, ks, n: int, seed: int, device):
    rng = np.random.default_rng(seed)
    return {k: torch.from_numpy(grid_masks(height, width, k, n, rng))[:, None].to(device) for k in ks}


@torch.no_grad()
def anomaly_maps(net, images, masks_by_k, smoothing: int):
    """G_A per pixel `(B, H, W)` and image scores `(B,)`."""
    per_k = []
    for masks in masks_by_k.values():
        similarity = msgms_map(images, inpaint(net, images, masks))
        smoothed = F.avg_pool2d(similarity, smoothing, stride=1, padding=smoothing // 2, count_include_pad=False)
        per_k.append(1 - smoothed)
    maps = torch.stack(per_k).mean(0)[:, 0]
    return maps, maps.flatten(1).max(1).values


def nchw(images: np.ndarray, device):
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)


@torch.no_grad()
def validation_loss(net, images: np.ndarray, ks, n: int, batch: int, device) -> float:
    """Mean Eq. 7 loss in eval mode on fixed partitions (one k per batch, cycling through K)."""
    net.eval()
    rng = np.random.default_rng(1234)
    losses = []
    for i, start in enumerate(range(0, len(images), batch)):
        x = nchw(images[start : start + batch], device)
        masks = torch.from_numpy(grid_masks(*x.shape[-2:], ks[i % len(ks)], n, rng))[:, None].to(device)
        losses.append(float(riad_loss(x, inpaint(net, x, masks))) * len(x))
    return sum(losses) / len(images)


# ----------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, required=True, help="data.npz from compare_reference.py (train, holdout, test)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (history.json, eval/epoch_NNN.npz)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--eval-epochs", default="", help="comma-separated epochs after which the test set is scored")
    parser.add_argument("--widths", default="64,128,256,512,512", help="U-Net widths, comma-separated")
    parser.add_argument("--ks", default="2,4,8,16")
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--smoothing", type=int, default=21, help="mean-filter size of Eq. 8")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu", help="cpu, cuda, or auto (cuda when there is one)")
    # riad-tf's recipe, piece by piece, to find out which of its differences matters (experiments/sweep_reference.py)
    parser.add_argument(
        "--mask-draw",
        choices=("batch", "image"),
        default="batch",
        help="batch: one k and partition per batch (the public recipe); image: one per image, one U-Net call (riad-tf)",
    )
    parser.add_argument(
        "--precision",
        choices=("float32", "bfloat16"),
        default="float32",
        help="training precision: bfloat16 autocasts the U-Net but its output layer, as riad-tf's mixed_bfloat16",
    )
    return parser.parse_args(argv)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _save_npz(path: Path, **arrays) -> None:
    with open(path, "wb") as file:  # a file object: np.savez would add ".npz" to a path
        np.savez(file, **arrays)


def _atomic_save(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def train_epoch(net, optimizer, train_images: np.ndarray, ks, args, rng, device) -> float:
    """One epoch of the public recipe in a fresh random order; returns the mean loss per image."""
    net.train()
    height, width = train_images.shape[1:3]
    per_image = args.mask_draw == "image"
    loss_sum = 0.0
    indices = rng.permutation(len(train_images))
    for start in range(0, len(train_images), args.batch_size):
        x = nchw(train_images[indices[start : start + args.batch_size]], device)
        masks = training_masks(len(x), height, width, ks, args.n, per_image, rng).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bfloat16"):
            restored = (inpaint_per_image if per_image else inpaint)(net, x, masks)
        loss = riad_loss(x, restored.float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach()) * len(x)
    return loss_sum / len(train_images)


def score_test_set(net, test: np.ndarray, masks_by_k, smoothing: int, device) -> tuple[np.ndarray, np.ndarray]:
    """(maps, scores) of the test images, in batches of 16, in inference mode."""
    net.eval()
    maps, scores = zip(
        *(anomaly_maps(net, nchw(test[s : s + 16], device), masks_by_k, smoothing) for s in range(0, len(test), 16))
    )
    return torch.cat(maps).cpu().numpy(), torch.cat(scores).cpu().numpy()


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    data = np.load(args.data)
    train_images, holdout, test = (data[key].astype(np.float32) for key in ("train", "holdout", "test"))
    height, width, channels = train_images.shape[1:]
    ks, eval_epochs = _ints(args.ks), set(_ints(args.eval_epochs))
    net = UNet(_ints(args.widths), channels).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    rng = np.random.default_rng(args.seed)
    masks_by_k = inference_masks(height, width, ks, args.n, args.seed, device)
    (args.out / "eval").mkdir(parents=True, exist_ok=True)
    history = []
    steps = math.ceil(len(train_images) / args.batch_size)
    print(
        f"reference: {len(train_images)} training images, {steps} steps per epoch, {args.threads} threads, "
        f"{device}, mask draw per {args.mask_draw}, {args.precision}",
        flush=True,
    )
    for epoch in range(1, args.epochs + 1):
        started = time.time()
        loss = train_epoch(net, optimizer, train_images, ks, args, rng, device)
        seconds = time.time() - started
        record = {
            "epoch": epoch,
            "loss": loss,
            "val_loss": validation_loss(net, holdout, ks, args.n, args.batch_size, device),
            "seconds": round(seconds, 3),
            "images_per_s": round(len(train_images) / seconds, 2),
        }
        history.append(record)
        print(
            f"reference epoch {epoch}/{args.epochs}: loss {record['loss']:.4f}, val {record['val_loss']:.4f}, {seconds:.0f} s",
            flush=True,
        )
        if epoch in eval_epochs:
            maps, scores = score_test_set(net, test, masks_by_k, args.smoothing, device)
            _atomic_save(
                args.out / "eval" / f"epoch_{epoch:03d}.npz",
                lambda p, maps=maps, scores=scores: _save_npz(p, maps=maps.astype(np.float16), scores=scores),
            )
        _atomic_save(args.out / "history.json", lambda p: p.write_text(json.dumps(history, indent=1) + "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

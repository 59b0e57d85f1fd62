"""Grid masks for reconstruction by inpainting (Sec. 3.1, Eq. 1, Algorithm 1).

The image is cut into a grid of k x k cells; the N cells are randomly permuted
and the permutation is split into n disjoint sets S_1..S_n (sizes differ by at
most one). Mask M_Si is 1 where pixels are kept and 0 inside the cells of S_i,
so every pixel is removed in exactly one mask:  sum_i (1 - M_Si) = 1   (Eq. 1).

At inference no cell is removed together with all of its neighbours
(`isolated_cells`, `give_context`): a fixed partition that did so would make
the U-Net inpaint that cell blind, and plant a false defect there in every
image (docs/method.md, "Masks").

`grid_masks` and `inference_masks` are plain numpy (export writes the inference
masks of a bare-U-Net model into a `.npy` file that the edge runner reads);
`random_grid_masks` draws fresh partitions inside a TensorFlow graph for
training (Algorithm 2).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# What inference's partitions are, recorded with the thresholds calibrated on them (`riad_tf.run.load_thresholds`).
PARTITIONS = "context"


def _check_divides(height: int, width: int, k: int) -> None:
    if k <= 0 or height % k or width % k:
        raise ValueError(f"region size k={k} does not divide the image size {height}x{width}")


def _cells_to_masks(cell_set: np.ndarray, k: int, n: int) -> np.ndarray:
    """(H/k, W/k) set index per cell -> (n, H, W, 1) float32 keep-masks."""
    pixel_set = np.repeat(np.repeat(cell_set, k, axis=0), k, axis=1)
    removed = pixel_set[None] == np.arange(n)[:, None, None]
    return (~removed).astype(np.float32)[..., None]


def isolated_cells(cell_set: np.ndarray) -> np.ndarray:
    """Cells removed together with every 4-neighbour they have inside the grid.

    Such a cell is inpainted with no visible context at all: its reconstruction
    is a guess, whatever the image holds. A cell with no neighbour (a 1 x 1
    grid) is never counted: nothing could give it context.

    Args:
        cell_set: `(rows, cols)` set index of each cell.

    Returns:
        bool array `(rows, cols)`, True where a cell is isolated.

    Example:

    >>> isolated_cells(np.array([[0, 0, 1], [0, 2, 1]])).astype(int)
    array([[1, 0, 0],
           [0, 0, 0]])
    """
    cell_set = np.asarray(cell_set)
    padded = np.pad(cell_set, 1, constant_values=-1)  # -1: outside the grid
    neighbours = [padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
    inside = [n >= 0 for n in neighbours]
    same_or_outside = [(n == cell_set) | ~i for n, i in zip(neighbours, inside)]
    return np.logical_and.reduce(same_or_outside) & np.logical_or.reduce(inside)


def give_context(cell_set: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Moves every isolated cell (`isolated_cells`) to another set, drawn at random, until none is left.

    A moved cell then sees all of its neighbours, and no cell that was not
    isolated becomes so: its moved neighbour left the set they shared. Only a
    cell whose neighbours all moved to its new set can stay isolated, and the
    next pass moves it again. About 1 % of the cells move, so set sizes may
    differ by that much more than the one cell of Algorithm 1 (docs/method.md).

    Args:
        cell_set: `(rows, cols)` set index of each cell, in [0, n).
        n: number of sets; with n = 1 nothing can move and the sets are returned as they are.
        rng: the generator that drew the partition.

    Returns:
        a new `(rows, cols)` array in which no cell is isolated.
    """
    cell_set = np.array(cell_set)
    if n < 2:
        return cell_set
    isolated = isolated_cells(cell_set)
    while isolated.any():
        shift = rng.integers(1, n, size=int(isolated.sum()))
        cell_set[isolated] = (cell_set[isolated] + shift) % n
        isolated = isolated_cells(cell_set)
    return cell_set


def grid_masks(height: int, width: int, k: int, n: int = 3, seed=None, context: bool = True) -> np.ndarray:
    """One random partition of the k x k grid into n masks (Algorithm 1), every cell with context.

    Args:
        height, width: image size; both must be divisible by `k`.
        k: cell size in pixels.
        n: number of disjoint cell sets.
        seed: anything `np.random.default_rng` accepts (int, sequence of ints,
            None for fresh entropy). Equal seeds give equal masks.
        context: move the cells that would be removed together with all of
            their neighbours to another set (`give_context`, docs/method.md);
            False keeps the paper's plain draw.

    Returns:
        float32 array `(n, height, width, 1)`: 1 where a pixel is kept, 0 inside
        the cells of S_i. Summing `1 - masks` over the first axis gives ones (Eq. 1).

    Raises:
        ValueError: when k does not divide the image size.

    Example:

    >>> m = grid_masks(8, 8, k=2, n=3, seed=0)
    >>> m.shape, float((1 - m).sum(axis=0).min())
    ((3, 8, 8, 1), 1.0)
    """
    _check_divides(height, width, k)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rows, cols = height // k, width // k
    num_cells = rows * cols
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_cells)
    # Position j of the permutation goes to set floor(j * n / N): S_i is a
    # contiguous run of R, and set sizes differ by at most one.
    cell_set = np.empty(num_cells, dtype=np.int64)
    cell_set[order] = np.arange(num_cells) * n // num_cells
    cell_set = cell_set.reshape(rows, cols)
    if context:
        cell_set = give_context(cell_set, n, rng)
    return _cells_to_masks(cell_set, k, n)


def inference_masks(
    height: int, width: int, ks: Sequence[int], n: int = 3, seed: int = 0, context: bool = True
) -> np.ndarray:
    """The fixed partitions used at inference, one per k (Algorithm 3).

    The partition for k is `grid_masks(height, width, k, n, seed=(seed, k), context)`,
    so it depends only on the seed and k, not on the order of `ks`. Every
    cell keeps some context (`give_context`): a fixed partition that removed a
    cell with all of its neighbours would plant the same false defect there in
    every image (docs/method.md).

    Returns:
        float32 array `(len(ks), n, height, width, 1)`.

    Example:

    >>> inference_masks(16, 16, ks=(2, 4), n=3, seed=7).shape
    (2, 3, 16, 16, 1)
    """
    return np.stack([grid_masks(height, width, k, n, seed=(seed, k), context=context) for k in ks])


def random_grid_masks(
    batch_size,
    height: int,
    width: int,
    ks: Sequence[int],
    n: int = 3,
    seed=None,
):
    """Fresh random partitions inside a TensorFlow graph, one per image (Algorithm 2).

    Each image gets its own k drawn uniformly from `ks` and its own random
    permutation of that grid, so a training batch never repeats a partition.
    Training keeps this plain draw: giving its cells context as
    `inference_masks` does was measured and gave nothing (docs/accuracy.md).

    Args:
        batch_size: number of images (a Python int or a scalar tensor).
        height, width: image size, divisible by every k.
        ks: the region sizes K.
        n: number of disjoint sets.
        seed: optional int (or int scalar tensor, e.g. keyed by training step)
            for `tf.random` stateless draws; None uses the global generator.

    Returns:
        float32 tensor `(batch_size, n, height, width, 1)`.
    """
    import tensorflow as tf

    for k in ks:
        _check_divides(height, width, k)
    batch_size = tf.convert_to_tensor(batch_size, tf.int32)
    seeds = (
        None
        if seed is None
        else tf.random.split(tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)]), len(ks) + 1)
    )

    def uniform(shape, i):
        return tf.random.uniform(shape) if seeds is None else tf.random.stateless_uniform(shape, seed=seeds[i])

    per_k = []
    for i, k in enumerate(ks):
        rows, cols = height // k, width // k
        num_cells = rows * cols
        # The rank of each cell in a random permutation, then set = rank * n // N.
        keys = uniform(tf.stack([batch_size, num_cells]), i)
        rank = tf.argsort(tf.argsort(keys, axis=1), axis=1)
        cell_set = tf.reshape(rank * n // num_cells, tf.stack([batch_size, rows, cols]))
        pixel_set = tf.repeat(tf.repeat(cell_set, k, axis=1), k, axis=2)
        per_k.append(pixel_set)
    choice = tf.cast(tf.floor(uniform(tf.reshape(batch_size, [1]), len(ks)) * len(ks)), tf.int32)
    choice = tf.minimum(choice, len(ks) - 1)
    pixel_set = tf.gather(tf.stack(per_k, axis=1), choice, axis=1, batch_dims=1)
    removed = tf.equal(pixel_set[:, None], tf.range(n)[None, :, None, None])
    return tf.cast(tf.logical_not(removed), tf.float32)[..., None]

import numpy as np
import pytest
import tensorflow as tf

from riad_tf.masks import give_context, grid_masks, inference_masks, isolated_cells, random_grid_masks


@pytest.mark.parametrize("k,n", [(2, 3), (4, 3), (8, 5), (16, 2), (4, 7)])
def test_every_pixel_removed_exactly_once(k, n):
    masks = grid_masks(32, 48, k, n, seed=1)
    assert masks.shape == (n, 32, 48, 1) and masks.dtype == np.float32
    assert set(np.unique(masks)) <= {0.0, 1.0}
    np.testing.assert_array_equal((1 - masks).sum(axis=0), np.ones((32, 48, 1)))  # Eq. 1


@pytest.mark.parametrize("k,n", [(2, 3), (4, 3), (8, 5)])
def test_cells_uniform_and_set_sizes_balanced(k, n):
    masks = grid_masks(32, 48, k, n, seed=3, context=False)[..., 0]
    cells = masks.reshape(n, 32 // k, k, 48 // k, k)
    # Every k x k cell is all kept or all removed.
    assert np.all(cells.min(axis=(2, 4)) == cells.max(axis=(2, 4)))
    removed_cells = (1 - cells[:, :, 0, :, 0]).reshape(n, -1).sum(axis=1)
    assert removed_cells.max() - removed_cells.min() <= 1
    assert removed_cells.sum() == (32 // k) * (48 // k)


def test_seeds():
    a, b = grid_masks(64, 64, 4, seed=5), grid_masks(64, 64, 4, seed=5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, grid_masks(64, 64, 4, seed=6))


def test_bad_k_refused_with_numbers():
    with pytest.raises(ValueError, match=r"k=5.*30x32"):
        grid_masks(30, 32, 5)
    with pytest.raises(ValueError):
        grid_masks(32, 32, 0)


def test_inference_masks_depend_on_seed_and_k_only():
    both = inference_masks(32, 32, ks=(2, 8), n=3, seed=4)
    alone = inference_masks(32, 32, ks=(8,), n=3, seed=4)
    assert both.shape == (2, 3, 32, 32, 1)
    np.testing.assert_array_equal(both[1], alone[0])


def _cell_size(mask):
    """The largest k in (8, 4, 2) on whose k x k blocks the (H, W) mask is constant."""
    for k in (8, 4, 2):
        blocks = mask.reshape(mask.shape[0] // k, k, mask.shape[1] // k, k)
        if np.all(blocks.min(axis=(1, 3)) == blocks.max(axis=(1, 3))):
            return k
    return 1


def test_random_grid_masks_balanced_uniform_cells():
    masks = random_grid_masks(24, 32, 32, ks=(2, 4, 8), n=3, seed=5).numpy()[..., 0]
    for image_masks in masks:
        sizes = {_cell_size(m) for m in image_masks}
        assert len(sizes) == 1, "the n masks of one image use different cell sizes"
        k = sizes.pop()
        removed = (1 - image_masks).sum(axis=(1, 2)) / (k * k)
        assert removed.max() - removed.min() <= 1
    assert not np.array_equal(masks, random_grid_masks(24, 32, 32, ks=(2, 4, 8), n=3, seed=6).numpy()[..., 0])


def test_random_grid_masks_fresh_partition_per_image():
    masks = random_grid_masks(16, 32, 32, ks=(2, 4, 8), n=3, seed=11).numpy()
    assert masks.shape == (16, 3, 32, 32, 1)
    np.testing.assert_array_equal((1 - masks).sum(axis=1), np.ones((16, 32, 32, 1)))
    # No two images share a partition.
    flat = masks.reshape(16, -1)
    assert len({row.tobytes() for row in flat}) == 16


def test_random_grid_masks_cell_sizes_come_from_K():
    masks = random_grid_masks(64, 32, 32, ks=(2, 8), n=3, seed=0).numpy()[..., 0]
    assert {_cell_size(m) for image_masks in masks for m in image_masks} == {2, 8}


def test_random_grid_masks_in_graph_and_seeded():
    fn = tf.function(lambda b: random_grid_masks(b, 16, 16, ks=(2, 4), n=3))
    assert fn(tf.constant(5)).shape == (5, 3, 16, 16, 1)
    a = random_grid_masks(4, 16, 16, ks=(2, 4), seed=9).numpy()
    np.testing.assert_array_equal(a, random_grid_masks(4, 16, 16, ks=(2, 4), seed=9).numpy())


def _cell_sets(masks, k):
    """(n, H, W, 1) keep-masks of one partition -> (H/k, W/k) set index of each cell."""
    return np.argmin(masks[:, ::k, ::k, 0], axis=0)


def test_isolated_cells_counts_cells_hidden_with_all_their_neighbours():
    sets = np.array(
        [
            [0, 0, 1, 2],
            [0, 1, 1, 1],
            [2, 2, 1, 2],
        ]
    )
    expected = np.zeros_like(sets, bool)
    expected[0, 0] = True  # a corner whose two neighbours share its set
    expected[1, 2] = True  # an interior cell whose four neighbours share its set
    np.testing.assert_array_equal(isolated_cells(sets), expected)
    assert not isolated_cells(np.array([[0]])).any(), "a lone cell has no neighbour to give it context"
    assert isolated_cells(np.array([[1, 1, 1]])).all()


@pytest.mark.parametrize("size", [64, 128, 256])
def test_inference_partitions_leave_no_cell_without_context(size):
    plain = 0
    for seed in range(5):
        masks = inference_masks(size, size, ks=(2, 4, 8, 16), n=3, seed=seed)
        paper = inference_masks(size, size, ks=(2, 4, 8, 16), n=3, seed=seed, context=False)
        for k, partition, drawn in zip((2, 4, 8, 16), masks, paper):
            np.testing.assert_array_equal((1 - partition).sum(axis=0), np.ones((size, size, 1)))  # Eq. 1
            sets = _cell_sets(partition, k)
            assert not isolated_cells(sets).any(), f"size {size}, k {k}, seed {seed}"
            plain += int(isolated_cells(_cell_sets(drawn, k)).sum())
            # Only the isolated cells moved: the sets stay within a few cells of balanced.
            counts = np.bincount(sets.ravel(), minlength=3)
            assert counts.max() - counts.min() <= 1 + 0.05 * sets.size
    assert plain > 0, "the paper's plain draw was expected to leave some cells without context"


def test_give_context_moves_only_isolated_cells():
    rng = np.random.default_rng(0)
    sets = rng.integers(0, 3, (40, 40))
    fixed = give_context(sets, 3, np.random.default_rng(1))
    moved = fixed != sets
    assert moved.any() and not isolated_cells(fixed).any()
    # A cell that moved was isolated before, or was moved again after all its neighbours moved with it.
    assert (moved <= isolated_cells(sets) | _has_moved_neighbour(moved)).all()
    np.testing.assert_array_equal(give_context(np.zeros((3, 3), int), 1, rng), np.zeros((3, 3)))  # n = 1: nothing moves


def _has_moved_neighbour(moved):
    padded = np.pad(moved, 1)
    return padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]


def _grid_of(masks, ks):
    """The largest k of `ks` on whose k x k cells the (n, H, W, 1) masks are constant."""
    return max(k for k in ks if np.array_equal(masks, np.repeat(np.repeat(masks[:, ::k, ::k], k, 1), k, 2)))


def test_training_keeps_the_plain_draw():
    """Training draws Algorithm 2's plain partitions (context was measured and gave nothing): some cells
    are hidden with all their neighbours (about 1 in 20 at k = 16 here), as inference never allows."""
    ks = (4, 8, 16)
    masks = random_grid_masks(96, 64, 64, ks=ks, n=3, seed=2).numpy()
    isolated = 0
    for image_masks in masks:
        np.testing.assert_array_equal((1 - image_masks).sum(axis=0), np.ones((64, 64, 1)))  # Eq. 1
        k = _grid_of(image_masks, ks)
        isolated += int(isolated_cells(_cell_sets(image_masks, k)).sum())
    assert isolated > 0

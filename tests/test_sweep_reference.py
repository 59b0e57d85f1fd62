"""experiments/sweep_reference.py: the run plan, resuming, and the per-recipe means (no PyTorch needed)."""

import numpy as np
import pytest

from experiments import sweep_reference as sweep


def _args(tmp_path, *extra):
    data = tmp_path / "split.npz"
    np.savez(data, train=np.zeros((1, 4, 4, 1), np.float16))
    return sweep.parse_args(["--data", str(data), str(data), "--out", str(tmp_path / "out"), *extra])


def test_runs_are_planned_seed_by_seed_so_a_deadline_leaves_whole_seeds(tmp_path):
    args = _args(tmp_path, "--recipes", "reference,riad-tf", "--seeds", "3,4")
    runs = sweep.planned_runs(args)
    assert len(runs) == 2 * 2 * 2
    assert [seed for _, _, seed, _ in runs] == [3] * 4 + [4] * 4
    assert runs[1][3] == args.out / "split-0" / "riad-tf" / "seed-3"
    assert runs[2][3] == args.out / "split-1" / "reference" / "seed-3"


def test_a_run_with_every_scored_epoch_is_skipped_and_past_the_deadline_none_starts(tmp_path):
    args = _args(tmp_path, "--eval-epochs", "2,4", "--deadline", "0")
    data, recipe, seed, folder = sweep.planned_runs(args)[0]
    assert "not started" in sweep.train_run(args, data, recipe, seed, folder, started=0.0)
    (folder / "eval").mkdir(parents=True)
    for epoch in (2, 4):
        (folder / "eval" / f"epoch_{epoch:03d}.npz").write_bytes(b"")
    assert "already scored" in sweep.train_run(args, data, recipe, seed, folder, started=0.0)


def test_unknown_recipes_and_missing_data_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _args(tmp_path, "--recipes", "reference,fast")
    assert "unknown recipe(s) fast" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sweep.parse_args(["--data", str(tmp_path / "nothing.npz"), "--out", str(tmp_path)])
    assert "nothing.npz: no such data file" in capsys.readouterr().err


def test_recipes_are_averaged_per_epoch_over_runs_in_the_order_of_the_recipes():
    def row(epoch, value):
        return {"epoch": epoch, "image_auroc": value, "pixel_auroc": value, "aupro": value}

    def run(recipe, *rows):
        return {"recipe": recipe, "rows": [{**r, "val_loss": 0.2, "seconds_per_epoch": 4.0} for r in rows]}

    results = {
        "runs": [
            run("riad-tf", row(13, 0.6)),
            run("reference", row(13, 0.5), row(40, 0.7)),
            run("reference", row(13, 0.7)),
        ]
    }
    summary = sweep.summarize_recipes(results)
    assert [(s["recipe"], s["epoch"], s["runs"]) for s in summary] == [
        ("reference", 13, 2),
        ("reference", 40, 1),
        ("riad-tf", 13, 1),
    ]
    assert summary[0]["aupro"] == pytest.approx(0.6) and summary[0]["aupro_std"] == pytest.approx(
        np.std([0.5, 0.7], ddof=1)
    )
    assert summary[1]["aupro_std"] == 0.0
    table = sweep.markdown(summary, "python3 -m experiments.sweep_reference ...")
    assert "| reference | 13 | 2 | 0.6000 ± 0.1414 |" in table


def test_pack_writes_float16_copies_that_keep_the_other_arrays(tmp_path):
    source = tmp_path / "data.npz"
    images = np.linspace(0, 1, 2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4, 1)
    np.savez(source, train=images, labels=np.array([0, 1]), test_masks=np.ones((2, 4, 4), bool))
    (written,) = sweep.pack([source], tmp_path / "packed")
    packed = np.load(written)
    assert written.name == "split-0.npz" and packed["train"].dtype == np.float16
    np.testing.assert_allclose(packed["train"], images, atol=1e-3)
    assert packed["labels"].tolist() == [0, 1] and packed["test_masks"].dtype == bool

"""Scale-out: strategy selection, the distributed input pipeline, MirroredStrategy against one
device, and a two-worker MultiWorkerMirroredStrategy job that is killed and resumed.

Worker processes can hang forever when a peer dies (and ignore SIGTERM), so every one of
them is bounded by a hard kill; ports are picked free at run time.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from edge.errors import ConfigError
from riad_tf.config import RiadConfig
from riad_tf.distribute import (
    cluster_resolver,
    cpu_bf16_support,
    is_chief,
    make_strategy,
    num_workers,
    resolve_precision,
)
from riad_tf.train import build_training_state, train_unet
from riad_tf.training_step import learning_rate, training_batches

TINY = dict(image_size=(32, 32), widths=(4, 8, 8, 16, 16), ks=(2, 4, 8), smoothing=5)
TINY_SETS = ["--set", "widths=[4,8,8,16,16]", "--set", "ks=[2,4,8]", "--set", "smoothing=5"]
QUIET = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _kill(procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()  # SIGKILL: a worker stuck in a collective ignores SIGTERM
        proc.wait()


# ----------------------------------------------------------------------------
# Strategy selection and cluster resolvers (no training)


def test_strategy_names_and_chief():
    strategy = make_strategy("default")
    assert strategy.num_replicas_in_sync == 1 and is_chief(strategy) and num_workers(strategy) == 1
    with pytest.raises(ValueError, match="strategy must be one of"):
        make_strategy("everywhere")
    with pytest.raises(ValueError, match="strategy must be one of"):
        RiadConfig(strategy="everywhere")


def test_multi_worker_resolver_from_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        cluster_resolver("multi_worker")
    cluster = {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    resolver = cluster_resolver("multi_worker")
    assert (resolver.task_type, resolver.task_id) == ("worker", 1)
    assert resolver.cluster_spec().as_dict() == cluster

    def fake(task_type, task_id, spec):
        resolvers = tf.distribute.cluster_resolver
        resolver = resolvers.SimpleClusterResolver(tf.train.ClusterSpec(spec), task_type=task_type, task_id=task_id)
        return types.SimpleNamespace(cluster_resolver=resolver)

    # Worker 0 is the chief unless the cluster has a "chief" job.
    assert is_chief(fake("worker", 0, cluster)) and not is_chief(fake("worker", 1, cluster))
    with_chief = {"chief": ["10.0.0.9:2222"], **cluster}
    assert is_chief(fake("chief", 0, with_chief)) and not is_chief(fake("worker", 0, with_chief))
    assert num_workers(fake("worker", 0, with_chief)) == 3


def test_slurm_resolver(monkeypatch):
    for name, value in {
        "SLURM_PROCID": "1",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_STEP_NODELIST": "node[07-08]",
        "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
        "CUDA_VISIBLE_DEVICES": "",
        "RIAD_SLURM_PORT": "9100",
    }.items():
        monkeypatch.setenv(name, value)
    resolver = cluster_resolver("slurm")
    assert (resolver.task_type, resolver.task_id) == ("worker", 1)
    assert resolver.cluster_spec().as_dict() == {"worker": ["node07:9100", "node08:9100"]}


def test_kubernetes_resolver_task_is_place_among_sorted_pods(monkeypatch):
    def pod(name, ip):
        return types.SimpleNamespace(
            metadata=types.SimpleNamespace(name=name), status=types.SimpleNamespace(phase="Running", host_ip=ip)
        )

    pods = [pod("riad-2", "10.0.0.2"), pod("riad-10", "10.0.0.10"), pod("riad-1", "10.0.0.1")]
    selectors = []

    class FakeCoreV1:
        def list_pod_for_all_namespaces(self, label_selector):
            selectors.append(label_selector)
            return types.SimpleNamespace(items=pods)

    monkeypatch.setenv("POD_NAME", "riad-2")
    monkeypatch.setenv("RIAD_K8S_SELECTOR", "app=riad-train")
    monkeypatch.setenv("RIAD_K8S_PORT", "3333")
    resolver = cluster_resolver("kubernetes", k8s_client=FakeCoreV1())
    workers = resolver.cluster_spec().as_dict()["worker"]
    assert workers == ["10.0.0.1:3333", "10.0.0.10:3333", "10.0.0.2:3333"]  # sorted by pod name
    assert (resolver.task_type, resolver.task_id) == ("worker", 2) and workers[2].startswith("10.0.0.2:")
    assert set(selectors) == {"app=riad-train"}
    monkeypatch.setenv("POD_NAME", "someone-else")
    with pytest.raises(ConfigError, match="someone-else"):
        cluster_resolver("kubernetes", k8s_client=FakeCoreV1())


def test_learning_rate_scaling_and_precision_choice():
    base = dict(learning_rate=1e-4, epochs=12, lr_schedule="step")
    assert learning_rate(RiadConfig(**base), 0, replicas=4) == pytest.approx(1e-4)
    assert learning_rate(RiadConfig(**base, lr_scaling="linear"), 0, replicas=4) == pytest.approx(4e-4)
    assert learning_rate(RiadConfig(**base, lr_scaling="sqrt"), 0, replicas=4) == pytest.approx(2e-4)
    assert learning_rate(RiadConfig(**base, lr_scaling="sqrt"), 10, replicas=4) == pytest.approx(2e-5)
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    assert resolve_precision("auto", xla=True) == ("mixed_float16" if on_gpu else "mixed_bfloat16")
    # On a CPU, auto follows what the CPU has: bfloat16 needs native support unless XLA compiles the step.
    assert resolve_precision("auto", xla=False, native_bf16=False) == ("mixed_float16" if on_gpu else "float32")
    assert resolve_precision("auto", xla=False, native_bf16=True) == ("mixed_float16" if on_gpu else "mixed_bfloat16")
    detected = resolve_precision("auto", xla=False)
    assert detected == ("mixed_float16" if on_gpu else "mixed_bfloat16" if cpu_bf16_support() else "float32")
    assert resolve_precision("off") == "float32" and resolve_precision("mixed_bfloat16") == "mixed_bfloat16"
    with pytest.raises(ValueError, match="mixed_precision"):
        RiadConfig(mixed_precision="float8")


def test_train_rejects_impossible_distributed_settings(tmp_path):
    two_replicas = types.SimpleNamespace(num_replicas_in_sync=2)
    images = np.zeros((16, 32, 32, 3), np.float32)
    with pytest.raises(ValueError, match="sync_batchnorm"):
        train_unet(RiadConfig(**TINY, xla=True, sync_batchnorm=True), images, tmp_path, strategy=two_replicas)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train_unet(RiadConfig(**TINY, batch_size=16), images, tmp_path, strategy=two_replicas)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------
# The input pipeline


def _epochs_of(dataset, steps):
    batches = [(x.numpy(), m.numpy()) for x, m in dataset]
    return [batches[i : i + steps] for i in range(0, len(batches), steps)]


def test_pipeline_is_seeded_per_epoch_and_resumes_exactly():
    config = RiadConfig(**TINY, epochs=3, seed=5)
    # Image i is filled with the value i, so a batch tells which images it holds.
    images = np.broadcast_to(np.arange(10, dtype=np.float32)[:, None, None, None], (10, 32, 32, 3)).copy()
    run = _epochs_of(training_batches(images, config, 4, drop_remainder=True), steps=2)
    assert len(run) == 3 and all(len(epoch) == 2 for epoch in run)
    for epoch in run:
        ids = np.concatenate([x[:, 0, 0, 0] for x, _ in epoch]).astype(int)
        assert len(set(ids)) == 8 and set(ids) <= set(range(10))  # no image twice in an epoch
    orders = [tuple(np.concatenate([x[:, 0, 0, 0] for x, _ in epoch])) for epoch in run]
    assert len(set(orders)) == 3, "every epoch should reshuffle"

    masks = run[0][0][1]
    assert masks.dtype == np.uint8 and masks.shape == (4, config.n, 32, 32, 1)
    np.testing.assert_array_equal((1 - masks.astype(int)).sum(axis=1), 1)  # Eq. 1 for each image
    assert len({m.tobytes() for m in masks}) == 4, "images of a batch (and so replicas) need their own masks"

    # The same seed gives the same run; a resumed run continues it exactly.
    again = _epochs_of(training_batches(images, config, 4, drop_remainder=True), steps=2)
    resumed = _epochs_of(training_batches(images, config, 4, first_epoch=1, drop_remainder=True), steps=2)
    for a, b in zip(run, again):
        for (xa, ma), (xb, mb) in zip(a, b):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ma, mb)
    for a, b in zip(run[1:], resumed):
        for (xa, ma), (xb, mb) in zip(a, b):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ma, mb)
    other_seed = _epochs_of(training_batches(images, config.with_overrides({"seed": 6}), 4, drop_remainder=True), 2)
    assert not np.array_equal(other_seed[0][0][1], run[0][0][1])


def test_retired_experiment_keys_load_at_their_built_in_value_only():
    """Configs and runs that still name a retired key load; asking for the experiment is an error."""
    config = RiadConfig(**TINY).with_overrides({"mask_draw": "image", "weight_decay": 0.0, "train_mask_context": False})
    assert config == RiadConfig(**TINY)
    for key, value in (("mask_draw", "batch"), ("weight_decay", 1e-4), ("train_mask_context", True)):
        with pytest.raises(ConfigError, match=f"{key} was an experiment and is retired"):
            config.with_overrides({key: value})


@pytest.mark.parametrize("kernel_init, within_pytorch_bound", [("pytorch", True), ("glorot", False)])
def test_training_builds_the_unet_with_the_configs_kernel_init(kernel_init, within_pytorch_bound):
    config = RiadConfig(**TINY, kernel_init=kernel_init)
    unet, _, _ = build_training_state(config, make_strategy("default"))
    kernel = unet.get_layer("enc5_b_conv").kernel.numpy()  # 3 x 3 x 16 -> 16
    assert (np.abs(kernel).max() <= 1 / np.sqrt(3 * 3 * 16)) == within_pytorch_bound
    with pytest.raises(ConfigError, match="kernel_init must be one of glorot, pytorch"):
        config.with_overrides({"kernel_init": "he"})


# ----------------------------------------------------------------------------
# MirroredStrategy over two logical CPUs against one device

MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, sys, tempfile
    import numpy as np
    from riad_tf.distribute import make_strategy, split_cpu
    devices = split_cpu(2)  # before TensorFlow initialises
    import keras
    import tensorflow as tf
    from riad_tf.config import RiadConfig
    from riad_tf.model import build_unet
    from riad_tf.train import train_unet

    config = RiadConfig(**json.loads(sys.argv[1]))
    images = np.random.default_rng(0).random((16, 32, 32, 3), dtype=np.float32)
    runs = {
        "one": (config, tf.distribute.OneDeviceStrategy(devices[0])),
        "two": (config.with_overrides({"batch_size": config.batch_size // 2}), make_strategy("mirrored", devices)),
    }
    keras.utils.set_random_seed(config.seed)  # what train_unet() does: both runs start from these weights
    initial = build_unet(config.input_shape, config.widths)
    moving = np.array(["moving_" in v.path for v in initial.weights])
    result, weights = {}, {}
    for name, (cfg, strategy) in runs.items():
        out = tempfile.mkdtemp()
        unet = train_unet(cfg, images, out, strategy=strategy, progress=False)
        history = json.load(open(out + "/history.json"))
        weights[name] = unet.get_weights()
        result[name] = {"replicas": strategy.num_replicas_in_sync, "losses": [r["loss"] for r in history]}

    def mean_abs(a, b, which):
        return float(np.mean(np.concatenate([np.abs(x - y).ravel() for x, y, m in zip(a, b, moving) if m == which])))

    for kind, which in (("trained", False), ("batchnorm_stats", True)):
        result[kind] = {"moved": mean_abs(weights["one"], initial.get_weights(), which),
                        "apart": mean_abs(weights["two"], weights["one"], which)}
    print("RESULT " + json.dumps(result))
    """
)


def test_mirrored_two_replicas_follow_one_device():
    """Same global batch (8 = 2 x 4) and seed: the same masks reach the same images, and with
    batch norm synchronised the loss trajectory matches one device up to float rounding."""
    # float32 and a constant rate: the comparison is about summation order, not bfloat16 rounding.
    config = dict(
        TINY,
        epochs=2,
        batch_size=8,
        learning_rate=1e-3,
        lr_schedule="constant",
        mixed_precision="off",
        sync_batchnorm=True,
    )
    done = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, json.dumps(config)],
        capture_output=True,
        text=True,
        env=QUIET,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    one, two = result["one"], result["two"]
    assert (one["replicas"], two["replicas"]) == (1, 2)
    # Tolerance: float32 sums in a different order (per-replica gradients, then all-reduce).
    # Losses: within 5e-4 relative (measured about 5e-5). Batch-norm statistics follow the forward
    # passes: within 1% of how far they moved. Trained weights: Adam moves each one by about the
    # learning rate whatever its gradient's size, so the rounding of near-zero gradients shows;
    # they must still be far closer to each other (20%) than to where they started.
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=5e-4)
    stats, trained = result["batchnorm_stats"], result["trained"]
    assert stats["apart"] < 0.01 * stats["moved"], result
    assert trained["moved"] > 1e-3 and trained["apart"] < 0.2 * trained["moved"], result


# ----------------------------------------------------------------------------
# MultiWorkerMirroredStrategy: two processes on 127.0.0.1, killed and resumed


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from riad_tf.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(
        tmp_path_factory.mktemp("data") / "tiles", image_size=32, n_train=12, n_test_good=2, n_test_defect=2
    )


def _start_workers(dataset, outs, epochs, scratch, logs):
    ports = _free_ports(len(outs))
    procs = []
    for index, out in enumerate(outs):
        tf_config = {
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
        env = dict(QUIET, TF_CONFIG=json.dumps(tf_config), TMPDIR=str(scratch[index]))
        command = [
            sys.executable,
            "-m",
            "riad_tf.cli",
            "train",
            "--data",
            str(dataset),
            "--out",
            str(out),
            "--epochs",
            str(epochs),
            "--batch-size",
            "2",
            "--image-size",
            "32",
            "--no-progress",
            "--strategy",
            "multi_worker",
            "--mixed-precision",
            "mixed_float16",
            *TINY_SETS,
        ]
        procs.append(subprocess.Popen(command, stdout=logs[index].open("w"), stderr=subprocess.STDOUT, env=env))
    return procs


def test_multi_worker_killed_and_resumed(dataset, tmp_path):
    """Two workers train with mixed_float16 (loss scaling); worker 1 is killed after epoch 2, the
    job restarts and resumes at the right epoch; only the chief writes; the model loads and scores."""
    epochs = 4
    run, elsewhere = tmp_path / "run", tmp_path / "worker1-out"
    scratch = [tmp_path / "tmp0", tmp_path / "tmp1"]
    for path in scratch:
        path.mkdir()
    logs = [tmp_path / "worker0.log", tmp_path / "worker1.log"]

    # Phase 1: a fresh job; worker 1 is pointed at its own directory, which it must leave unwritten.
    procs = _start_workers(dataset, [run, elsewhere], epochs, scratch, logs)
    try:
        deadline = time.time() + 300
        while not (run / "checkpoints" / "ckpt-2.index").exists():
            assert time.time() < deadline, "no checkpoint after 300 s:\n" + logs[0].read_text()[-3000:]
            assert all(p.poll() is None for p in procs), (
                "a worker ended early:\n" + logs[0].read_text()[-3000:] + logs[1].read_text()[-3000:]
            )
            time.sleep(0.05)
        procs[1].kill()  # the non-chief dies mid-run ...
        time.sleep(1.0)
    finally:
        _kill(procs)  # ... and the chief, now stuck waiting for it, is killed too
    assert not (run / "model.keras").exists()
    done_before = len(json.loads((run / "history.json").read_text()))
    assert 2 <= done_before < epochs
    assert not elsewhere.exists(), "a non-chief worker wrote to its --out"

    # Phase 2: the job restarts on a shared run directory and resumes.
    killed_leftovers = {p for path in scratch for p in path.glob("riad-*")}  # a SIGKILL leaves scratch behind
    procs = _start_workers(dataset, [run, run], epochs, scratch, logs)
    try:
        deadline = time.time() + 400
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        pass  # reported below by the return codes
    finally:
        _kill(procs)
    outputs = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    for output in outputs:
        assert f"resuming {run} after epoch {done_before} of {epochs}" in output
    assert "worker 1 finished; the chief writes" in outputs[1]
    assert [r["epoch"] for r in json.loads((run / "history.json").read_text())] == list(range(1, epochs + 1))
    # The non-chief's obligatory saves went to scratch directories, removed when it finished.
    assert {p for path in scratch for p in path.glob("riad-*")} == killed_leftovers

    # Loss scaling was used, the saved model is float32, and it loads and scores.
    saved = {name for name, _ in tf.train.list_variables(tf.train.latest_checkpoint(str(run / "checkpoints")))}
    assert any("dynamic_scale" in name for name in saved)
    unet = keras.saving.load_model(run / "model.keras", compile=False, safe_mode=True)
    assert {layer.dtype_policy.name for layer in unet.layers} == {"float32"}
    reconstruction = unet.predict(np.full((1, 32, 32, 3), 0.5, np.float32), verbose=0)
    assert reconstruction.dtype == np.float32 and np.all((reconstruction >= 0) & (reconstruction <= 1))
    # The chief calibrated: it loaded the saved detector and scored the held-out good images.
    thresholds = json.loads((run / "thresholds.json").read_text())
    assert np.isfinite(thresholds["image"]) and np.isfinite(thresholds["region"])

"""Scale-out: which `tf.distribute` strategy trains, which worker writes, which precision.

Strategies (`RiadConfig.strategy`, `riad-tf train --strategy`):

- "default": one device, TensorFlow's default strategy.
- "mirrored": `MirroredStrategy` over all local GPUs (all logical CPUs when the
  machine has no GPU; see `split_cpu`).
- "multi_worker": `MultiWorkerMirroredStrategy`, cluster and own task from
  `TF_CONFIG` (`TFConfigClusterResolver`).
- "slurm": the same, cluster from the Slurm step (`SlurmClusterResolver`);
  one task per node or per GPU, ports from `RIAD_SLURM_PORT` (default 8888).
- "kubernetes": the same, cluster from the pods matching `RIAD_K8S_SELECTOR`
  (`KubernetesClusterResolver`); the task index is this pod's place among them
  sorted by name. Needs `pip install kubernetes`.

A multi-worker strategy must be created at program start, before TensorFlow
runs any op. Only the chief writes the run directory; the others still take
part in every save (TensorFlow's checkpointing needs their collective ops) but
write to a temporary directory that is deleted (`scratch_dir`).

Example:

>>> strategy = make_strategy("default")
>>> strategy.num_replicas_in_sync, is_chief(strategy)
(1, True)
>>> resolve_precision("auto", xla=True) in ("mixed_float16", "mixed_bfloat16")
True
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf

from edge.bench import cpu_flags
from edge.errors import ConfigError, RuntimeUnavailable
from riad_tf.config import MIXED_PRECISION, STRATEGIES

MULTI_WORKER = ("multi_worker", "slurm", "kubernetes")
DEFAULT_SLURM_PORT = 8888
DEFAULT_K8S_PORT = 2222
DEFAULT_K8S_SELECTOR = "app=riad-tf"
_CPU_TASK_SLOTS = 4096  # most Slurm tasks per CPU node


def split_cpu(replicas: int) -> list[str]:
    """Splits the CPU into `replicas` logical devices, e.g. to try `MirroredStrategy` without GPUs.

    Must run before TensorFlow initialises its devices (first op or device query).

    Returns:
        The logical CPU device names, e.g. `["/device:CPU:0", "/device:CPU:1"]`.

    Raises:
        RuntimeError: when TensorFlow is already initialised.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError as err:
        raise ConfigError(f"split_cpu({replicas}) must run before TensorFlow initialises: {err}") from None
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def _local_devices() -> list[str]:
    gpus = tf.config.list_logical_devices("GPU")
    return [d.name for d in gpus] if gpus else [d.name for d in tf.config.list_logical_devices("CPU")]


def _gpus_on_node() -> int | None:
    """GPUs the Slurm task may use; None lets the resolver ask nvidia-smi."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    return None if shutil.which("nvidia-smi") else 0


def _kubernetes_resolver(client=None):
    selector = os.environ.get("RIAD_K8S_SELECTOR", DEFAULT_K8S_SELECTOR)
    port = int(os.environ.get("RIAD_K8S_PORT", DEFAULT_K8S_PORT))
    if client is None:
        try:
            from kubernetes import client as k8s_client
            from kubernetes import config as k8s_config
        except ImportError:
            raise RuntimeUnavailable(
                "strategy 'kubernetes' needs the Kubernetes client: pip install kubernetes"
            ) from None
        k8s_config.load_incluster_config()
        client = k8s_client.CoreV1Api()
    # The resolver lists the same pods sorted by name; this pod's place there is its task id.
    names = sorted(pod.metadata.name for pod in client.list_pod_for_all_namespaces(label_selector=selector).items)
    own = os.environ.get("POD_NAME") or os.environ.get("HOSTNAME", "")
    if own not in names:
        raise ConfigError(f"pod {own!r} is not among the pods selected by {selector!r}: {names}")
    resolver = tf.distribute.cluster_resolver.KubernetesClusterResolver(
        {"worker": [selector]}, tf_server_port=port, override_client=client
    )
    resolver.task_type, resolver.task_id = "worker", names.index(own)
    return resolver


def cluster_resolver(name: str, k8s_client=None):
    """The cluster resolver of a multi-worker strategy, from the environment.

    Args:
        name: "multi_worker" (reads TF_CONFIG), "slurm" (the SLURM_* variables
            of the job step; ports from RIAD_SLURM_PORT) or "kubernetes" (pods
            matching RIAD_K8S_SELECTOR, servers on RIAD_K8S_PORT; this pod's
            name from POD_NAME or HOSTNAME).
        k8s_client: a Kubernetes `CoreV1Api` (default: the in-cluster one).

    Returns:
        A `tf.distribute.cluster_resolver.ClusterResolver` whose task type and
        id are set.

    Raises:
        ValueError: for another name, or "multi_worker" without a TF_CONFIG cluster.

    Example:

    >>> os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": ["a:2222", "b:2222"]},
    ...                                       "task": {"type": "worker", "index": 1}})  # doctest: +SKIP
    >>> cluster_resolver("multi_worker").task_id                                         # doctest: +SKIP
    1
    """
    resolvers = tf.distribute.cluster_resolver
    if name == "multi_worker":
        if not json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster"):
            raise ConfigError("strategy 'multi_worker' needs TF_CONFIG with a cluster (see docs/distributed.md)")
        return resolvers.TFConfigClusterResolver()
    if name == "slurm":
        port_base = int(os.environ.get("RIAD_SLURM_PORT", DEFAULT_SLURM_PORT))
        gpus = _gpus_on_node()
        if gpus == 0:  # CPU nodes: the resolver pairs tasks with GPU slots, so give it placeholders, unused
            resolver = resolvers.SlurmClusterResolver(
                port_base=port_base, gpus_per_node=_CPU_TASK_SLOTS, gpus_per_task=1, auto_set_gpu=False
            )
        else:
            resolver = resolvers.SlurmClusterResolver(port_base=port_base, gpus_per_node=gpus)
        resolver.cluster_spec()  # sets the task type and id (and this task's CUDA_VISIBLE_DEVICES)
        return resolver
    if name == "kubernetes":
        return _kubernetes_resolver(k8s_client)
    raise ConfigError(f"{name!r} is not a multi-worker strategy (one of {', '.join(MULTI_WORKER)})")


def _warn_listening(resolver) -> None:
    """Says where TensorFlow's worker server listens: every interface, no authentication (docs/distributed.md)."""
    try:
        address = resolver.cluster_spec().task_address(resolver.task_type, resolver.task_id)
    except (ValueError, KeyError, TypeError):
        return
    port = address.rpartition(":")[2]
    logging.getLogger(__name__).warning(
        f"note: TensorFlow's worker server listens on port {port} of every network interface, without "
        "authentication, whatever host TF_CONFIG names; keep the cluster on a private network or firewall the port"
    )


def make_strategy(name: str = "default", devices: list[str] | None = None) -> tf.distribute.Strategy:
    """Creates the strategy `name` (one of `riad_tf.config.STRATEGIES`).

    Args:
        name: "default", "mirrored", "multi_worker", "slurm" or "kubernetes".
        devices: for "mirrored": the devices (default: all GPUs, else all logical CPUs).

    Returns:
        A `tf.distribute.Strategy`. Create multi-worker ones before any TensorFlow op.

    Example:

    >>> make_strategy("mirrored").num_replicas_in_sync >= 1
    True
    """
    if name not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}; got {name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices or _local_devices())
    resolver = cluster_resolver(name)
    _warn_listening(resolver)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    except RuntimeError as err:
        raise ConfigError(
            f"cannot start strategy {name!r}: {err} (a multi-worker strategy must be created before TensorFlow runs any op)"
        ) from None


def task(strategy: tf.distribute.Strategy | None = None) -> tuple[str | None, int | None]:
    """(task type, task id) of this process in a multi-worker job; (None, None) otherwise."""
    resolver = getattr(strategy or tf.distribute.get_strategy(), "cluster_resolver", None)
    if resolver is None:
        return None, None
    return resolver.task_type, resolver.task_id


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process writes the run: always, except on non-chief workers of a multi-worker job.

    The chief is task "chief", or "worker" 0 when the cluster has no "chief" job.
    """
    strategy = strategy or tf.distribute.get_strategy()
    task_type, task_id = task(strategy)
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in strategy.cluster_resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def num_workers(strategy: tf.distribute.Strategy | None = None) -> int:
    """Processes taking part in training (1 unless multi-worker)."""
    resolver = getattr(strategy or tf.distribute.get_strategy(), "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return sum(len(spec.get(job, ())) for job in ("chief", "worker"))


@contextlib.contextmanager
def scratch_dir(strategy: tf.distribute.Strategy | None = None):
    """A temporary directory for a non-chief worker's obligatory writes, deleted on exit.

    Example:

    >>> with scratch_dir() as path:
    ...     path.is_dir()
    True
    """
    task_type, task_id = task(strategy)
    path = Path(tempfile.mkdtemp(prefix=f"riad-{task_type or 'local'}{task_id if task_id is not None else ''}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def assert_workers_agree(strategy: tf.distribute.Strategy, value: int, what: str) -> None:
    """Raises on every worker when the workers hold different `value`s (e.g. the restored epoch).

    Uses one all-reduce of (value, value^2): all workers see the same sums, so
    all of them stop, instead of some hanging in the next collective.
    """
    if num_workers(strategy) < 2:
        return

    @tf.function
    def sums():
        local = tf.constant([value, value * value], tf.float32)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(local)), axis=None)

    total, total_sq = (float(v) for v in sums().numpy())
    replicas = strategy.num_replicas_in_sync
    mean = total / replicas
    if total_sq / replicas - mean * mean > 1e-3:
        raise ConfigError(
            f"workers disagree on the {what} (this worker: {value}, mean {mean:g}); "
            "the run directory must be on a filesystem all workers share (docs/distributed.md)"
        )


# CPU features that run bfloat16 matrix products natively (Linux /proc/cpuinfo flag names).
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_support(cpuinfo: str | None = None) -> tuple[str, ...]:
    """The native bfloat16 features of this CPU (AMX, AVX512-BF16); () when it has none.

    Args:
        cpuinfo: the text of /proc/cpuinfo (default: read it; other systems give ()).

    Example:

    >>> cpu_bf16_support("flags : fpu avx2 avx512_bf16 amx_tile amx_bf16")
    ('amx_bf16', 'avx512_bf16')
    >>> cpu_bf16_support("flags : fpu avx2 fma")
    ()
    """
    flags = cpu_flags(cpuinfo)
    return tuple(flag for flag in NATIVE_BF16_FLAGS if flag in flags)


def resolve_precision(name: str, xla: bool = False, native_bf16: bool | None = None) -> str:
    """The Keras dtype policy for a `mixed_precision` setting.

    "off" is "float32". "auto" decides from the hardware at hand
    (docs/distributed.md): "mixed_float16" when a GPU is visible; on a CPU
    with native bfloat16 (AMX or AVX512-BF16, `cpu_bf16_support`)
    "mixed_bfloat16" (1.87x float32 training on such a CPU, no XLA needed);
    on other CPUs "mixed_bfloat16" only with XLA (1.9x float32 on an AVX2
    CPU) and "float32" without it (there every bfloat16 op converts: 3-10x
    slower).

    Args:
        name: "off", "mixed_float16", "mixed_bfloat16" or "auto".
        xla: whether the training step is XLA-compiled.
        native_bf16: whether the CPU has native bfloat16 (default: detected).

    Example:

    >>> resolve_precision("mixed_bfloat16"), resolve_precision("off")
    ('mixed_bfloat16', 'float32')
    """
    if name not in MIXED_PRECISION:
        raise ConfigError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}; got {name!r}")
    if name == "off":
        return "float32"
    if name == "auto":
        if tf.config.list_physical_devices("GPU"):
            return "mixed_float16"
        if native_bf16 is None:
            native_bf16 = bool(cpu_bf16_support())
        return "mixed_bfloat16" if xla or native_bf16 else "float32"
    return name


@contextlib.contextmanager
def precision_policy(policy: str):
    """Sets Keras's global dtype policy (e.g. "float32", "mixed_bfloat16") inside, then restores it.

    Layers keep the policy they were built with, so the policy can be scoped
    to building the training model.

    Example:

    >>> import keras
    >>> with precision_policy(resolve_precision("mixed_bfloat16")):
    ...     layer = keras.layers.Dense(2)
    >>> layer.compute_dtype, keras.config.dtype_policy().name
    ('bfloat16', 'float32')
    """
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)

"""riad-tf: RIAD (reconstruction-by-inpainting anomaly detection) in TensorFlow / Keras 3.

The algorithm reads in four files next to the paper (Zavrtanik et al., Pattern Recognition 2020):

- `riad_tf.masks`: the k x k grid partitions (Sec. 3.1, Eq. 1, Algorithm 1),
- `riad_tf.model`: the inpainting U-Net (Sec. 3.2, Fig. 4),
- `riad_tf.losses`: GMS, MSGMS, SSIM and the training loss (Eq. 3-7),
- `riad_tf.scoring`: anomaly maps and image scores (Sec. 3.4, Eq. 8-10).

Importing this package does not import TensorFlow; the submodules that need it do.
It does turn on TensorFlow's oneDNN kernels on x86-64 CPUs (`TF_ENABLE_ONEDNN_OPTS=1`)
unless you set that variable yourself, so import riad_tf before tensorflow. TensorFlow
leaves them off on CPUs without AVX-512; on a 2-core AVX2 machine they made the
detector 1.5-1.7x faster at 128-256 px (docs/benchmark.md, "oneDNN").
"""

import os as _os
import platform as _platform

__version__ = "0.1.0"

if _platform.machine().lower() in ("x86_64", "amd64"):
    _os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

"""riad-tf: RIAD anomaly detection in TensorFlow / Keras 3, with a TensorFlow-free edge runtime."""

import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"', Path("riad_tf/__init__.py").read_text()).group(1)

# What both sides need: numpy and click; PyYAML reads the configs.
CORE = ["numpy>=2.0,<3", "PyYAML>=6.0", "click>=8.1"]

# Training, evaluation, export. TensorFlow lives here, not in CORE, so that
# `pip install .[edge]` on a device pulls no TensorFlow or Keras.
TF = [
    "tensorflow>=2.21,<2.22",
    "keras>=3.15,<3.16",
    "scikit-learn>=1.4",
    "scipy>=1.11",
    "pillow>=10.0",
    "matplotlib>=3.8",
    "tqdm>=4.66",
    "threadpoolctl>=3.1",  # BLAS threads of the benchmark peak
    "tensorboard>=2.20",
    "opencv-python-headless>=4.10",  # video decoding (riad_tf.video)
]

EDGE = ["onnxruntime>=1.20", "ai-edge-litert>=2.0", "pillow>=10.0", "opencv-python-headless>=4.10"]

# `riad-edge --runtime openvino`: Intel CPUs and iGPUs, reading the exported ONNX (beside ONNX Runtime's CPU wheel).
OPENVINO = ["openvino>=2025.1,<2027"]

# `riad-edge serve`: a small, well-kept HTTP server and the Prometheus client.
SERVE = ["aiohttp>=3.9,<4", "prometheus-client>=0.20"]

# experiments/ (reference_torch.py and the comparisons built on it): the public PyTorch recipe, on CPU or CUDA.
REFERENCE = ["torch>=2.13,<3"]  # the measurements in docs/accuracy.md used 2.13.0

# `riad-tf export --int8-quantizer nncf`: NNCF's int8 quantization with accuracy control (it takes ONNX models).
INT8 = ["nncf>=3.0,<4"]

# Export converts with tf2onnx and checks every exported model in the runtimes the device uses.
TF += ["tf2onnx>=1.17", "onnx>=1.17"] + [req for req in EDGE if req not in TF]

setup(
    name="riad-tf",
    version=VERSION,
    description="Reconstruction-by-inpainting anomaly detection (RIAD) in TensorFlow/Keras 3 with TFLite, ONNX and TensorRT export",
    long_description=Path("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["riad_tf", "riad_tf.*", "edge", "edge.*"]),
    include_package_data=True,
    install_requires=CORE,
    extras_require={
        "tf": TF,
        "edge": EDGE,
        "serve": EDGE + SERVE,
        "openvino": EDGE + OPENVINO,
        "reference": TF + REFERENCE,
        "int8": TF + INT8,
        "dev": TF
        + SERVE
        + OPENVINO
        + ["pytest>=8.0", "ruff>=0.17,<0.18", "playwright>=1.45,<2"],  # Playwright: the report in Chromium
    },
    entry_points={
        "console_scripts": [
            "riad-tf=riad_tf.command:main",
            "riad-edge=edge.cli:main",
        ]
    },
)

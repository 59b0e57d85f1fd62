"""The device side of riad-tf: numpy plus one runtime (LiteRT, ONNX Runtime, OpenVINO or TensorRT), never TensorFlow."""

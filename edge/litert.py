"""A `.tflite` model behind the session interface, on LiteRT (`ai_edge_litert`).

LiteRT applies its XNNPACK delegate by default. XNNPACK refuses some int8
models ("failed to prepare"); the session then warns once and reopens the model
with the built-in kernels only (`OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`),
which run every model, more slowly. `session.delegate` says which one runs.

With XNNPACK, a dynamic-batch RIAD model (ai-edge-litert 2.3) gave wrong scores
in some interpreters of a process and right ones in others, depending on the
heap layout; the wrong scores were the same in every bad interpreter, one
thread or several (a fixed-batch export, and the built-in kernels, were always
right). Measured:

- with XNNPACK's node clustering (LiteRT's default), in 5 to 9 of 12
  interpreters, from the first call on (a trained magnetic-tile model's image
  AUROC fell from 0.674 to 0.512);
- with clustering turned off, rarely: 1 of 12 interpreters answered its first
  call wrongly in the test's harness, and 1 of 2 under valgrind's memcheck.

Keeping every intermediate tensor in its own memory
(`experimental_preserve_all_tensors`, i.e. no reuse of the tensor arena)
removed both: 0 of 30 interpreters wrong with clustering, 0 of 2 under
memcheck. The session therefore opens XNNPACK with it (and clustering still
off). Measured on a 64 x 64 model, batch 4: the same speed, about 3x the
activation memory (170 MB instead of 59 MB).

Example:

>>> session = LiteRTSession("riad_fp32.tflite", threads=4)           # doctest: +SKIP
>>> session.run(images)["maps"].shape                                 # doctest: +SKIP
(1, 256, 256)
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from edge.errors import InputError, one_line


class LiteRTSession:
    """Runs a `.tflite` model through its serving signature; implements `edge.session.Session`.

    Args:
        path: the model file.
        threads: CPU threads for LiteRT (None: its default).

    Attributes:
        input_name, output_names: the signature's tensor names.
        input_shape: `(batch or None, H, W, C)`.
        delegate: "xnnpack" (LiteRT's default) or "none" (built-in kernels only).
    """

    backend = "litert"
    # Every intermediate tensor keeps its own memory (see the module docstring): the
    # runner sizes its batches for this many times the usual activation memory.
    activation_memory_factor = 3

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self._path = str(path)
        self._threads = threads
        self._interpreter_class = Interpreter
        self._resolvers = {"xnnpack": OpResolverType.AUTO, "none": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
        self._open("xnnpack")
        signature = self._interpreter.get_signature_list()
        if len(signature) != 1:
            raise InputError(f"{path}: expected one serving signature, found {sorted(signature)}")
        ((self._key, names),) = signature.items()
        if len(names["inputs"]) != 1:
            raise InputError(f"{path}: expected one input, found {names['inputs']}")
        self.input_name = names["inputs"][0]
        self.output_names = tuple(names["outputs"])
        details = self._runner.get_input_details()[self.input_name]
        shape = [int(d) for d in details["shape_signature"]]
        self.input_shape = tuple(None if d < 0 else d for d in shape)
        self.input_dtype = np.dtype(details["dtype"]).name

    def _open(self, delegate: str) -> None:
        with warnings.catch_warnings():  # LiteRT calls preserve_all_tensors a debugging option: here it is the fix
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors", category=UserWarning)
            try:
                self._interpreter = self._interpreter_class(
                    model_path=self._path,
                    num_threads=self._threads,
                    experimental_op_resolver_type=self._resolvers[delegate],
                    experimental_disable_delegate_clustering=True,  # wrong answers otherwise: see the module docstring
                    experimental_preserve_all_tensors=delegate == "xnnpack",  # likewise
                )
            except ValueError as err:  # LiteRT's answer to a file that is not a TFLite model
                raise InputError(f"{self._path}: LiteRT cannot load this model: {one_line(err)}") from None
        self._runner = self._interpreter.get_signature_runner()
        self.delegate = delegate

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """One inference: `{output name: array}` for an input batch."""
        try:
            outputs = self._runner(**{self.input_name: batch})
        except RuntimeError as err:
            if self.delegate != "xnnpack":
                raise
            warnings.warn(
                f"{self._path}: LiteRT's XNNPACK delegate failed ({str(err).splitlines()[0]}); "
                "running with the built-in kernels instead (slower)",
                RuntimeWarning,
                stacklevel=2,
            )
            self._open("none")
            outputs = self._runner(**{self.input_name: batch})
        return {name: np.array(value) for name, value in outputs.items()}

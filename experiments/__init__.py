"""What reproduces riad-tf's measurements (docs/accuracy.md): the PyTorch reference, comparisons and sweeps.

Each runs as `python3 -m experiments.NAME --help` from the repository root; the PyTorch
reference needs the `[reference]` extra (`pip install -e .[reference]`).
"""

"""Collection rules for the whole repository (tests/conftest.py has the tests' fixtures)."""

import importlib.util

# The PyTorch reference stops at import without PyTorch (the `[reference]` extra), so its docstrings are
# collected only where that extra is installed.
collect_ignore = [] if importlib.util.find_spec("torch") else ["experiments/reference_torch.py"]

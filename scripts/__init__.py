"""What users run: benchmarks, operating points and accuracy checks of exports, each `python3 -m scripts.NAME --help`."""

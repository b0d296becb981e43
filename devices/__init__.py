"""Devices: where benchmarks run. The on-device runner (runner.py) is self-contained."""

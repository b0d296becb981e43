"""Where calibration and evaluation data come from, and the cached set every target quantizes from."""

from edgeport.calibration.sets import build_sets, load_set, save_set

__all__ = ["build_sets", "load_set", "save_set"]

"""Instance values: one raster band that tells buildings apart and still says their class.

A pixel's value is ``class << 24 | number``: the semantic class in the high bits, a building number (1 to 2**24 - 1)
in the low bits; number 0 is a building no instance explains (rule 4 of :mod:`mtp_core.inference.instance_rows`),
value 0 is background and -1 nodata. Polygonizing such a band (:func:`~mtp_core.vectorize.vectorize_raster_to_file`
with ``class_of=class_of``) gives one polygon per building, touching neighbours included, each with its class.
Numbers are reused after 2**24 - 1 buildings: only buildings that touch need different ones, and those are numbered
within a few tiles of each other.
"""
from __future__ import annotations

import numpy as np

BITS = 24
NODATA_VALUE = -1
MAX_CLASS = 127  # values stay positive in int32


def encode(classes: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    """Instance values (int32) of pixels with these semantic classes and building numbers."""
    return (classes.astype(np.int32) << BITS) | numbers.astype(np.int32)


def class_of(values: np.ndarray) -> np.ndarray:
    """The semantic class of instance values."""
    return np.asarray(values, np.int64) >> BITS

"""Mean and spread over seeds: one definition for the terminal, the report and the demo.

The standard deviation is the sample one (ddof=1), as a table of a few seeds reports it;
a single value has none.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1) of `values`; std None for one value.

    Raises:
      ValueError: no values.
    """
    if len(values) == 0:
        raise ValueError("mean_std of no values")
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)

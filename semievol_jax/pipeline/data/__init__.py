"""A task's splits: the records, reading and validating them, leakage between them.

`synth` (the demo's synthetic world, one more source of split files) is imported by
path: nothing here needs it.
"""

from semievol_jax.errors import DataError
from semievol_jax.pipeline.data.examples import Example, GoldAnswers, UnlabeledQuestion
from semievol_jax.pipeline.data.leakage import LeakageReport, Overlap, find_leakage
from semievol_jax.pipeline.data.validation import DataWarning, load_split, load_unlabeled

__all__ = [
    "DataError", "DataWarning", "Example", "GoldAnswers", "LeakageReport", "Overlap",
    "UnlabeledQuestion", "find_leakage", "load_split", "load_unlabeled",
]

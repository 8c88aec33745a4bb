"""The SemiEvol pipeline: tasks, data, prompts and selection (re-exported here), and the
stages, their graph, runner, workers, variants, summary and verification (by path).

Only the pure-Python pieces are re-exported, so `import semievol_jax.pipeline` stays
cheap (no JAX, no `datasets`).
"""

from semievol_jax.pipeline.data import (
    DataError,
    DataWarning,
    Example,
    GoldAnswers,
    LeakageReport,
    UnlabeledQuestion,
    find_leakage,
    load_split,
    load_unlabeled,
)
from semievol_jax.pipeline.prompts import (
    TARGET_TEMPLATE,
    format_question,
    format_reflection,
    target,
)
from semievol_jax.pipeline.selection import (
    Candidate,
    PseudoLabelScore,
    Reflection,
    Selection,
    SelectionConfig,
    needs_reflection,
    score_pseudo_labels,
    select,
    vote,
)
from semievol_jax.pipeline.tasks import (
    Task,
    TaskError,
    get_task,
    register_task,
    register_tasks,
    resolve_task,
    task_names,
)

__all__ = [
    "TARGET_TEMPLATE", "Candidate", "DataError", "DataWarning", "Example", "GoldAnswers",
    "LeakageReport", "PseudoLabelScore", "Reflection", "Selection", "SelectionConfig",
    "Task", "TaskError", "UnlabeledQuestion", "find_leakage", "format_question",
    "format_reflection", "get_task", "load_split", "load_unlabeled", "needs_reflection",
    "register_task", "register_tasks", "resolve_task", "score_pseudo_labels", "select",
    "target", "task_names", "vote",
]

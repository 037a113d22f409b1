"""Forget-set selection: worst-case (bi-level) data-wise and class-wise forget sets.

``worstcase`` holds the family-generic selector, ``projection`` the capped-simplex projection, and
``runner`` the config glue used by ``unlearnkit select worstcase`` and the ``worstcase-digits`` suite.
"""

from unlearnkit.selection.projection import project_capped_simplex, top_m_indicator
from unlearnkit.selection.worstcase import (
    SelectionResult,
    SelectionTask,
    WorstCaseConfig,
    WorstCaseSelector,
    resolve_size,
    select_worst_case,
    select_worst_classes,
    select_worst_groups,
)

__all__ = [
    "SelectionResult",
    "SelectionTask",
    "WorstCaseConfig",
    "WorstCaseSelector",
    "project_capped_simplex",
    "resolve_size",
    "select_worst_case",
    "select_worst_classes",
    "select_worst_groups",
    "top_m_indicator",
]

"""Does AMP help *my* task? A paired, early-stopping-aware comparison of AMP candidates with plain ERM on the user's
own training script (`python -m amp_hf.compare`, `run_comparison`) or training function (`compare`, notebooks).
The user's guide is docs/compare.md; the statistics are in `amp_hf.compare.statistics`.
"""

from .candidates import ERM_NAME, Candidate, CompareError, parse_candidate, parse_candidates
from .comparison import RunRequest, compare, run_comparison
from .plan import ComparisonStopped
from .recording import RUN_ENVIRONMENT, ComparisonRecorder, add_comparison_recorder
from .report import ComparisonReport
from .statistics import PairedDifference, judge_family, paired_difference, student_t_quantile

__all__ = [
    "ERM_NAME",
    "RUN_ENVIRONMENT",
    "Candidate",
    "CompareError",
    "ComparisonRecorder",
    "ComparisonReport",
    "ComparisonStopped",
    "PairedDifference",
    "RunRequest",
    "add_comparison_recorder",
    "compare",
    "judge_family",
    "paired_difference",
    "parse_candidate",
    "parse_candidates",
    "run_comparison",
    "student_t_quantile",
]

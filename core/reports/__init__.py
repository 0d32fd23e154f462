"""Reports: ablation reports (effects with statistics across seeds) and search-study reports."""
from .ablation import ReportOptions, write_report
from .study import write_study_report

__all__ = ["ReportOptions", "write_report", "write_study_report"]

"""Great Expectations suites built in code, summarised without data values."""

from custody.quality.tables import QualityResult, check_table, preload

__all__ = ["QualityResult", "check_table", "preload"]

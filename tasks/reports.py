"""The error a stage raises when its report says the run must stop (bad data, blocking drift)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class ReportedStop(RuntimeError):
    """Carries the report that stopped the run; ``str(err)`` is the report's own error message."""

    def __init__(self, report: Any, report_dir: Path | None = None) -> None:
        super().__init__(report.error_message(report_dir))
        self.report = report
        self.report_dir = report_dir

    def __reduce__(self) -> tuple[Any, ...]:
        # Prefect pickles task exceptions; the default reduce would call __init__ with the message only.
        return (type(self), (self.report, self.report_dir))

"""What a search found: a stored run read for analysis (``analysis``), its pictures (``plots``, ``drawing``) and
the report written into the run folder (``summary``; ``python -m blockqnn.report``)."""

from blockqnn.report.summary import report, report_multirun, report_run

__all__ = ["report", "report_multirun", "report_run"]

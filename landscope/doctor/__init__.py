"""The training doctor: rules over a Monitor's record that say what is wrong and what to do.

``diagnose(run_dir)`` returns a ranked :class:`Diagnosis`; ``report_text`` / ``diagnosis_report``
render it; ``SCENARIOS`` are real small training runs that show each failure (and its remedy),
run with ``run_scenario``.
"""

from landscope.doctor.doctor import diagnose
from landscope.doctor.findings import Diagnosis, Finding
from landscope.doctor.report import diagnosis_report, report_text
from landscope.doctor.rules import Thresholds
from landscope.doctor.scenarios import SCENARIOS, run_scenario

__all__ = ["SCENARIOS", "Diagnosis", "Finding", "Thresholds", "diagnose", "diagnosis_report",
           "report_text", "run_scenario"]

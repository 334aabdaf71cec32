"""The training doctor: rules over a Monitor's record that say what is wrong and what to do.

``diagnose(run_dir)`` returns a ranked :class:`Diagnosis`; ``report_text`` / ``diagnosis_report``
render it (they live in ``landscope.render.doctor``, loaded on first use, so that the doctor does
not load rich); ``SCENARIOS`` are real small training runs that show each failure (and its remedy),
run with ``run_scenario``.
"""

from landscope.doctor.doctor import diagnose
from landscope.doctor.findings import Diagnosis, Finding
from landscope.doctor.rules import Thresholds
from landscope.doctor.scenarios import SCENARIOS, run_scenario

__all__ = ["SCENARIOS", "Diagnosis", "Finding", "Thresholds", "diagnose", "diagnosis_report",
           "report_text", "run_scenario"]


def __getattr__(name: str):
    if name in ("diagnosis_report", "report_text"):
        from landscope.render import doctor as rendering

        return getattr(rendering, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Terminal rendering of results (rich), all in one place. Reads result objects; computes nothing.

``probe.py``: a probe's panel, the anytime stages and the cost plan; ``doctor.py``: the doctor's
report of a diagnosis, for the terminal and as plain text; ``surface.py``: a surface's table;
``race.py``: a race's tables. The library's other modules do not
import rich, so ``import landscope`` does not load it.
"""

from landscope.render.doctor import diagnosis_report, loss_line, report_text
from landscope.render.probe import plan_text, probe_panel, stage_panel

__all__ = ["diagnosis_report", "loss_line", "plan_text", "probe_panel", "report_text",
           "stage_panel"]

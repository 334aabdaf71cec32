"""Watch a training run: first-order statistics every step, curvature when the loss stalls.

``Monitor`` attaches to any PyTorch loop; ``read_record`` reads a run directory back;
``lightning_callback`` and ``huggingface_callback`` attach it to those trainers (optional extras).
"""

from landscope.monitor.callbacks import huggingface_callback, lightning_callback
from landscope.monitor.monitor import Monitor
from landscope.monitor.record import Record, read_record
from landscope.monitor.signals import CurveThresholds

__all__ = ["CurveThresholds", "Monitor", "Record", "huggingface_callback", "lightning_callback",
           "read_record"]

"""The task entries (``TASKS``) and their report tables (``TASK_GROUPS``)."""

from __future__ import annotations

from collections.abc import Callable

from .task_audio import AUDIO_COLUMNS, basic_pitch_entry
from .task_faces import DETECTOR_COLUMNS, face_entries
from .task_superres import SUPERRES_COLUMNS, superres_entry
from .tasks import TaskEntry

#: task key -> builder(zoo) -> entries; table groups follow this order.
TASKS: dict[str, Callable[[str], list[TaskEntry]]] = {
    "face": face_entries,
    "superres": lambda zoo: [superres_entry(zoo)],
    "basic_pitch": lambda zoo: [basic_pitch_entry(zoo)],
}
TASK_GROUPS = {
    "detector": ("Face detectors: INT8 detections against FP32's", DETECTOR_COLUMNS),
    "superres": ("Super-resolution: PSNR", SUPERRES_COLUMNS),
    "audio": ("Basic Pitch: output correlation", AUDIO_COLUMNS),
}

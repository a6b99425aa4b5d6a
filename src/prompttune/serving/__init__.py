"""Serving many tasks from one loaded model: the task pool (`pool.py`)."""

from .pool import Prediction, TaskInfo, TaskPool

__all__ = ["Prediction", "TaskInfo", "TaskPool"]

"""Serving many tasks from one loaded model: the task pool (`pool.py`) and `prompttune serve` on it
(`server.py`: HTTP endpoints; `batcher.py`: the router's queue and micro-batches; `engine.py`: the
model side; `completions.py`: the OpenAI-compatible endpoints; `api.py`, `limits.py`, `metrics.py`)."""

from .pool import Prediction, TaskInfo, TaskPool

__all__ = ["Prediction", "TaskInfo", "TaskPool"]

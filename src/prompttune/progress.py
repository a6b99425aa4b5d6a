"""When a progress bar shows: asked for (`progress`) and on a terminal.

tqdm draws its bar with carriage returns; in a log redirected to a file that is a wall of partial
lines. `disable=None` is tqdm's own check that its file (stderr) is a terminal.
"""

from __future__ import annotations


def bar_off(progress: bool) -> bool | None:
    """tqdm's `disable` for a bar shown only when `progress` is asked for and stderr is a terminal.

    Example:
        >>> for batch in tqdm(batches, desc="evaluating", disable=bar_off(progress)): ...
    """
    return None if progress else True

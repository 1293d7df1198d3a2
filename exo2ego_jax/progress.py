"""Console progress bars (tqdm: rate and ETA) for the jobs that take more than a few seconds.

A bar shows only on a terminal: tqdm stays silent when stderr is a pipe or a file (tests, batch
logs), and ``EXO2EGO_PROGRESS=0`` turns every bar off (``=1`` forces them on, e.g. under ``tee``).
Only process 0 of a multi-process run draws one.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from tqdm import tqdm

PROGRESS_ENV = "EXO2EGO_PROGRESS"


def enabled() -> bool | None:
    """tqdm's `disable` argument inverted: False = off, True = on, None = on a terminal only."""
    value = os.environ.get(PROGRESS_ENV, "")
    if value in ("0", "false", "off"):
        return False
    if value in ("1", "true", "on"):
        return True
    return None


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str, unit: str,
        initial: int = 0) -> tqdm:
    """A tqdm bar for `desc` (e.g. "world takes"); see the module docstring for when it shows."""
    on = enabled()
    # A process that never loaded jax (the world's writer processes) is not part of a multi-process
    # run; this module does not import jax itself, so those processes start without it.
    jax = sys.modules.get("jax")
    if jax is not None and jax.process_index() != 0:
        on = False
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True,
                disable=None if on is None else not on)

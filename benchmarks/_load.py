"""The machine's load when a benchmark starts, as every report's header prints it: the figures
were taken on a shared machine, and this says how busy it was."""

from __future__ import annotations

import os


def load_average():
    """The 1, 5 and 15 minute load averages, e.g. ``"0.52, 0.61, 0.70"``."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())

"""What every report section shares: the log line and the markdown number and table formats."""

import sys


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def num(x):
    """3 significant digits (``0.0123``, ``4.50``), whole numbers from 100 up."""
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:#.3g}"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)

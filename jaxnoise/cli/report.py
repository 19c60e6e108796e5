"""``jaxnoise report WORKDIR [--threshold T | --count N] [--out DIR]``: a run's figures and label
issues (:mod:`jaxnoise.report`, also ``python -m jaxnoise.report``)."""

from __future__ import annotations


def run(argv: list[str], prog: str = "jaxnoise report") -> int:
    """The report of a workdir; the exit code (2: refused in one line)."""
    from jaxnoise import report

    return report.main(argv, prog=prog)

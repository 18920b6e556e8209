"""What every recorded run of the benchmarks opens with, and its tables as JSON rows (shared by the
benchmarks that write ``agglib/data/runs/*.json`` or a model's ``scores.json``)."""

from __future__ import annotations

import datetime
import math
import platform
import sys

import agglib


def run_header(script: str, argv=None) -> dict:
    """``command`` (``python benchmarks/<script>`` and its arguments: ``argv``, or the process's
    own where None), ``date``, ``machine`` and the ``agglib`` version of a recorded run."""
    return {"command": f"python benchmarks/{script} " + " ".join(sys.argv[1:] if argv is None else argv),
            "date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {platform.processor()}",
            "agglib": agglib.__version__}


def json_rows(table) -> list[dict]:
    """The rows of a DataFrame, its index as columns, NaN written as None (JSON null)."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in table.reset_index().to_dict(orient="records")]

"""Regenerate the nbval reference notebooks: the deterministic notebooks executed at the tiny profile.

    python tests/nbval/make_references.py

Each reference is the notebook executed by papermill (``profile = "tiny"`` injected), with the
outputs of :data:`CHECKED` cells kept and tagged ``nbval-check-output`` and every other output
dropped. ``pytest --nbval-lax tests/nbval`` re-executes them and compares the checked cells: a
number that changes is a regression (or a deliberate change: rerun this script and review the
diff). Figures are not compared (their HTML carries random ids); tables of numbers are.
"""

from pathlib import Path

import nbformat
import papermill

HERE = Path(__file__).resolve().parent
NOTEBOOKS = HERE.parents[1] / "notebooks"
#: notebook -> substrings identifying the cells whose outputs are references
CHECKED = {
    "01_aggregate_generation": ['summary = table.groupby("theta_df")'],
    "02_stem_simulation": ["summary = pd.DataFrame({f\"{t} nm\"", "summaries = {\"ideal detector\"",
                           "contrast, trained = contrast_interval(with_detector)"],
}


def _coalesced(outputs):
    """Consecutive stream outputs of one name as one (how a print's text is split into chunks
    depends on the kernel's timing)."""
    out = []
    for o in outputs:
        if out and o.get("output_type") == "stream" and out[-1].get("output_type") == "stream" \
                and out[-1].get("name") == o.get("name"):
            out[-1]["text"] += o["text"]
        else:
            out.append(o)
    return out


def main():
    for name, markers in CHECKED.items():
        out = HERE / f"{name}.ipynb"
        papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(out), parameters={"profile": "tiny"},
                                   kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=False)
        nb = nbformat.read(out, as_version=4)
        found = 0
        for cell in nb.cells:
            cell.metadata.pop("papermill", None)           # timings: every regeneration would rewrite them
            cell.metadata.pop("execution", None)
            if cell.cell_type != "code":
                continue
            if "injected-parameters" in cell.metadata.get("tags", []):
                cell.id = "injected-parameters"            # papermill draws a new id each run
            tags = [t for t in cell.metadata.get("tags", []) if t != "nbval-check-output"]
            if any(m in cell.source for m in markers):
                tags.append("nbval-check-output")
                cell.outputs = _coalesced(cell.outputs)
                found += 1
            else:
                cell.outputs = []
            cell.metadata["tags"] = tags
        nb.metadata.pop("papermill", None)
        assert found == len(markers), f"{name}: {found} of {len(markers)} checked cells found"
        nbformat.write(nb, out)
        print(f"{out.name}: {found} checked cells")


if __name__ == "__main__":
    main()

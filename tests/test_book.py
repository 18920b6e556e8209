"""The book builds (strict, offline) and its pages carry visible plotly figures."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_book_builds_with_figures(tmp_path, executed_notebooks):
    executed_dir, results = executed_notebooks
    failed = [name for name, (_, err) in results.items() if err is not None]
    assert not failed, f"notebooks failed at the tiny profile: {failed}"
    cmd = [sys.executable, str(ROOT / "book" / "make_book.py"), "--profile", "tiny",
           "--out", str(tmp_path), "--executed", str(executed_dir), "--no-sweep"]   # tests/test_sweep.py
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    html_dir = tmp_path / "_build" / "html"
    assert (html_dir / "index.html").is_file()
    js = html_dir / "_static" / "plotly.min.js"
    assert js.is_file() and js.stat().st_size > 1_000_000, "plotly.js not shipped once in _static"
    page = (html_dir / "notebooks" / "01_aggregate_generation.html").read_text()
    assert "plotly.min.js" in page, "page does not load the shipped plotly.js"
    assert page.count("Plotly.newPlot") >= 4, "plotly figures missing from the built page"
    assert "cdn.plot.ly" not in page and "cdn.jsdelivr" not in page.split("plotly.min.js")[0][-200:]
    # plotly.js is not inlined into the page
    assert len(page) < 3_000_000
    # the interactive-widgets cell is removed from the static page
    assert "if widgets:" not in page
    assert "Fig. 4a" in page and "Fig. 5" in page

    # Every notebook of the table of contents is a page with figures, and no page needs
    # MathJax (the book writes formulas in Unicode; MathJax would come from a CDN).
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        built = html_dir / "notebooks" / (nb.stem + ".html")
        assert built.is_file(), f"{nb.name} missing from the book"
        text = built.read_text()
        assert text.count("Plotly.newPlot") >= 1, f"{nb.name}: no figure in the book"
        assert 'class="math' not in text, f"{nb.name}: LaTeX math needs MathJax from a CDN"
    for page in (html_dir / "book").glob("*.html"):
        assert 'class="math' not in page.read_text(), f"{page.name}: LaTeX math"
    # No page declares THEBE_JS_URL (sphinx-thebe did so twice: a console error on every page),
    # none shows a local absolute path, and the quick start leads the book.
    for page in html_dir.rglob("*.html"):
        text = page.read_text()
        assert "THEBE_JS_URL" not in text, f"{page.name}: Thebe scripts left in"
        assert "/tmp/" not in text and "/work/" not in text and "/root/" not in text, f"{page.name}: local path"
    import re

    quick = re.sub(r"<[^>]+>", "", (html_dir / "book" / "quickstart.html").read_text())   # code is highlighted
    assert "agglib fit tests/data/fit_sample" in quick and "doi.org/10.1088/2632-2153/ad38fd" in \
        (html_dir / "book" / "intro.html").read_text()

"""The book builds (strict, offline) and its pages carry visible plotly figures."""

import json
import re
import shutil
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
    quick = re.sub(r"<[^>]+>", "", (html_dir / "book" / "quickstart.html").read_text())   # code is highlighted
    assert "agglib fit tests/data/fit_sample" in quick and "doi.org/10.1088/2632-2153/ad38fd" in \
        (html_dir / "book" / "intro.html").read_text()

    # The API reference lists every public name (agglib.__all__ and each documented module's) with its docstring
    import dataclasses
    import importlib

    api = (html_dir / "book" / "api.html").read_text()
    api_md = (ROOT / "book" / "api.md").read_text()
    documented = re.findall(r"^\.\. automodule:: (\S+)", api_md, flags=re.M)
    assert {"agglib", "agglib.model", "agglib.stem", "agglib.estimate", "agglib.posterior", "agglib.fit",
            "agglib.evaluate", "agglib.visualize", "agglib.config", "agglib.stem.reference", "agglib.stem.crystals",
            "agglib.stem.multislice", "agglib.stem.orientations", "agglib.dataset.pytorch", "agglib.nets",
            "agglib.evaluate.architectures"} <= set(documented)
    for name in documented:
        module = importlib.import_module(name)
        for public in getattr(module, "__all__", []):
            assert f'<span class="pre">{public}</span>' in api, f"{name}.{public} missing from the API reference"
    assert "Draw one hetero-aggregate from the model" in api          # docstrings, not only names
    # Signatures show defaults as written: no "<factory>" (a dataclass field's default_factory), no
    # "<class 'numpy.float32'>" (autodoc_preserve_defaults: dtype=np.float32; the HTML splits that repr
    # after "<class")
    assert "&lt;factory&gt;" not in api and "&lt;class" not in api
    # ... so dataclasses with a default_factory field have their signature written out in api.md
    # (".. autoclass:: X(a, b={})"): it must be the class's, private fields left out
    for path, written in re.findall(r"^\s*\.\. autoclass:: ([\w.]+)\((.*)\)\s*$", api_md, flags=re.M):
        module, _, name = path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        assert dataclasses.is_dataclass(cls), f"api.md writes out the signature of {path}, not a dataclass"
        params = []
        for f in dataclasses.fields(cls):
            factory, default = f.default_factory is not dataclasses.MISSING, f.default is not dataclasses.MISSING
            if not f.init or (f.name.startswith("_") and (factory or default)):
                continue
            params.append(f"{f.name}={f.default_factory()!r}" if factory else f"{f.name}={f.default!r}" if default
                          else f.name)
        assert written == ", ".join(params), f"api.md: {path}({written}), but the class has ({', '.join(params)})"
    # Dataclass fields are described once, in their class's Attributes (napoleon_use_ivar; api.md has no
    # :undoc-members:, which listed each field again as an empty entry) ...
    assert not re.search(r'<dl class="py (attribute|property|method)">\s*<dt[^>]*>(?:(?!</dt>).)*</dt>\s*<dd></dd>',
                         api, flags=re.S), "an empty attribute, property or method entry in the API reference"
    # ... one name per entry: napoleon reads "a, b : int" in an Attributes section as b of type "a," (a
    # Parameters section splits it)
    assert "<em>,</em>)" not in api and "<strong>theta1_values</strong> (<em>tuple</em>)" in api

    # The results table keeps to the text column: its reproducing commands follow it as code blocks
    results = (html_dir / "book" / "results.html").read_text()
    assert "The commands that reproduce them" in results and "<th class=\"head\"><p>command</p></th>" not in results
    # ... and opens with figures: the headline numbers beside the paper's and the trivial predictor's, coverage
    assert results.count("Plotly.newPlot") >= 2 and results.index("Plotly.newPlot") < results.index("<h2>Every recorded number")
    assert "Headline numbers" in results and "Coverage of 90 % regions" in results
    # Figures fit their frames: none is wider than the text column (690 px in a 1280 px window), and
    # every 3D scene is seen from far enough that its cube stays inside the scene — with tick labels
    # from ≥ 2.3 (plotly's default camera, 2.17, cut the corners and labels of notebook 1's gallery
    # and notebook 2's Fig. 3), without from ≥ 1.8
    for page in sorted((html_dir / "notebooks").glob("*.html")):
        for layout in plotly_layouts(page.read_text()):
            assert layout.get("width", 0) <= 680, f"{page.name}: a figure {layout['width']} px wide"
            for name, scene in layout.items():
                if name.startswith("scene"):
                    eye = scene.get("camera", {}).get("eye", {})
                    distance = sum(eye.get(k, 1.25) ** 2 for k in "xyz") ** 0.5
                    labelled = any(scene.get(axis, {}).get("visible", True) and scene.get(axis, {}).get("showticklabels", True)
                                   for axis in ("xaxis", "yaxis", "zaxis"))
                    assert distance >= (2.3 if labelled else 1.8), \
                        f"{page.name}: 3D {name} seen from {distance:.2f}: its corners and labels are cut"
    # Tables fit the text column on every notebook page and every written page but the API reference
    # (the estimated width of each: the longest cell of each column at the theme's table font, long
    # cells wrapped); a wide table shortens its headers (meaning in the text above), is transposed
    # or groups its columns
    for name in ("notebooks/01_aggregate_generation", "notebooks/02_stem_simulation", "notebooks/03_dataset_building",
                 "notebooks/04_image_encoder", "notebooks/05_posterior", "notebooks/06_calibration",
                 "notebooks/07_paper_method", "notebooks/08_descriptor_comparison", "notebooks/09_baselines",
                 "notebooks/10_fit_your_images", "book/intro", "book/results", "book/methods", "book/quickstart",
                 "book/performance", "book/howto"):
        for k, width in enumerate(table_widths((html_dir / f"{name}.html").read_text())):
            assert width <= TEXT_COLUMN_PX, f"{name}: table {k + 1} is about {width:.0f} px wide"
    # In a browser (where Chromium is installed): the pages the quick start leads to log no errors
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:
        shots = subprocess.run([sys.executable, str(ROOT / "book" / "screenshots.py"), str(html_dir),
                                "--out", str(tmp_path / "shots"), "--height", "8000"],
                               capture_output=True, text=True, timeout=600)
        assert shots.returncode == 0, shots.stdout[-3000:] + shots.stderr[-3000:]
        assert len(list((tmp_path / "shots").glob("*.png"))) >= 5


#: Width of the book theme's text column [px] in a 1280 px window.
TEXT_COLUMN_PX = 690
#: Mean width of a character in a table cell [px] (the theme's 0.9 em table font) and a cell's padding.
TABLE_CHAR_PX, TABLE_CELL_PADDING_PX = 7.6, 14
#: Characters after which a cell's text wraps (browsers narrow a wide table's text columns).
WRAP_CHARS = 24


def table_widths(html: str) -> list:
    """Estimated width [px] of every HTML table of a page (pandas' and markdown's): per column
    the longest cell text (wrapped at spaces after :data:`WRAP_CHARS` characters), at
    :data:`TABLE_CHAR_PX` per character plus the cell padding."""
    import html as html_lib

    widths = []
    for table in re.findall(r"<table.*?</table>", html, flags=re.S):
        columns = {}
        for row in re.findall(r"<tr.*?</tr>", table, flags=re.S):
            for k, cell in enumerate(re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, flags=re.S)):
                text = html_lib.unescape(re.sub(r"<[^>]+>", "", cell)).strip()
                words = max((len(w) for w in text.split()), default=0)     # a cell wraps at spaces,
                chars = min(len(text), max(words, WRAP_CHARS))                 # down to its longest word
                columns[k] = max(columns.get(k, 0), chars)
        widths.append(sum(c * TABLE_CHAR_PX + TABLE_CELL_PADDING_PX for c in columns.values()))
    return widths


def plotly_layouts(html: str) -> list:
    """The layout of every ``Plotly.newPlot(id, data, layout, config)`` call of a page."""
    decoder = json.JSONDecoder()
    layouts = []
    for match in re.finditer(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*", html):
        _, end = decoder.raw_decode(html, match.end())                  # the data
        start = re.compile(r"\s*,\s*").match(html, end).end()
        layout, _ = decoder.raw_decode(html, start)
        layouts.append(layout)
    return layouts

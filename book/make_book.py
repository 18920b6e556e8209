"""Execute every notebook with papermill, then build the HTML book with jupyter-book 1.x.

    python book/make_book.py [--profile quick] [--out .] [--only 01,02]

The sources are staged in ``<out>/_build/site`` (config, ``book/`` pages, executed
notebooks, ``_static/plotly.min.js``); the HTML lands in ``<out>/_build/html``. The build
runs with warnings as errors (``-W -n --keep-going``); a notebook error stops it.
The time per notebook is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stage_sources(site: Path) -> None:
    """Stage the book's sources in ``site``, replacing only a staging folder this script made
    (it holds agglib's output marker written by ``make_book.py``); anything else there is refused."""
    from agglib.core.files import OUTPUT_MARKER, atomic_write_text, read_output_marker

    if site.exists():
        marker = read_output_marker(site) if site.is_dir() else None
        if marker is None or marker.get("command") != "book/make_book.py":
            raise SystemExit(f"make_book: {site} exists and was not staged by book/make_book.py (no {OUTPUT_MARKER} "
                             "of it); it is left as it is: move it away or choose another --out")
        shutil.rmtree(site)
    (site / "notebooks").mkdir(parents=True)
    atomic_write_text(site / OUTPUT_MARKER, json.dumps({"written_by": "agglib", "command": "book/make_book.py",
                                                       "files": ["*"]}, indent=1))
    shutil.copy(ROOT / "_config.yml", site)
    shutil.copy(ROOT / "_toc.yml", site)
    shutil.copytree(ROOT / "book", site / "book", ignore=shutil.ignore_patterns("*.py", "*.css", "__pycache__"))
    static = site / "_static"
    static.mkdir()
    shutil.copy(ROOT / "book" / "agglib.css", static)          # jupyter-book links every _static/*.css
    from agglib.visualize.plotly_book import plotly_js_path

    shutil.copy(plotly_js_path(), static / "plotly.min.js")


def execute_notebooks(site: Path, profile: str, only: list[str] | None, timeout: int,
                      overrides: dict, executed: Path | None = None) -> dict[str, float]:
    import papermill

    times = {}
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        if only and nb.name[:2] not in only:
            continue
        t0 = time.perf_counter()
        if executed is not None:                       # notebooks already run (e.g. by the tests)
            shutil.copy(executed / nb.name, site / "notebooks" / nb.name)
            prepare_for_book(site / "notebooks" / nb.name)
            times[nb.name] = time.perf_counter() - t0
            continue
        print(f"[book] executing {nb.name} (profile={profile})", flush=True)
        params = {"profile": profile}
        if overrides:
            params["overrides"] = overrides
        papermill.execute_notebook(str(nb), str(site / "notebooks" / nb.name), parameters=params,
                                   kernel_name="python3", cwd=str(ROOT / "notebooks"),
                                   progress_bar=sys.stderr.isatty(), log_output=False, execution_timeout=timeout)
        print(f"[book] {nb.name} done in {time.perf_counter() - t0:.0f} s", flush=True)
        prepare_for_book(site / "notebooks" / nb.name)
        times[nb.name] = time.perf_counter() - t0
    return times


def show_parameters_used(nb) -> None:
    """Write the values papermill injected into the notebook's parameters cell (keeping its
    comments), so a page run at another profile shows that profile, not the default."""
    import re

    injected = next((c for c in nb.cells if "injected-parameters" in c.get("metadata", {}).get("tags", [])), None)
    params = next((c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if injected is None or params is None:
        return
    values = dict(re.findall(r"^(\w+) = (.*)$", injected.source, flags=re.M))
    lines = []
    for line in params.source.splitlines():
        m = re.match(r"^(\w+) = (.*?)(\s+#.*)?$", line)
        if m and m.group(1) in values:
            line = f"{m.group(1)} = {values[m.group(1)]}{m.group(3) or ''}"
        lines.append(line)
    params.source = "\n".join(lines)


def prepare_for_book(path: Path) -> None:
    """Tidy a staged, executed notebook for the static book.

    Keeps only the HTML of plotly outputs (JupyterLab draws ``application/vnd.plotly.v1+json``;
    the book draws the HTML, which uses the shipped plotly.js, and would warn about the JSON)
    and hides papermill's injected-parameters cell.
    """
    import nbformat

    nb = nbformat.read(path, as_version=4)
    show_parameters_used(nb)
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "application/vnd.plotly.v1+json" in data and "text/html" in data:
                del data["application/vnd.plotly.v1+json"]
    nbformat.write(nb, path)


def remove_thebe(html_dir: Path) -> int:
    """Drop the live-code (Thebe) scripts from every page: the book is static and offline (Thebe
    loads from a CDN), and sphinx-thebe declares ``THEBE_JS_URL`` twice, a console error on every
    page. Returns the number of pages changed."""
    import re

    pattern = re.compile(r'\s*<script>const THEBE_JS_URL = [^<]*</script>|\s*<script async="async" '
                         r'src="[^"]*sphinx-thebe\.js[^"]*"></script>')
    changed = 0
    for page in html_dir.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        new = pattern.sub("", text)
        if new != text:
            page.write_text(new, encoding="utf-8")
            changed += 1
    return changed


RESULTS_MARKER = "<!-- agglib:results-table -->"
FIGURES_MARKER = "<!-- agglib:results-figures -->"
SWEEP_MARKER = "<!-- agglib:sweep-table -->"
#: The sweep the how-to page shows: notebook 10's θ̂ errors against dose and pixel size.
HOWTO_SWEEP = {"dose_e_per_A2": [40, 149, 600], "measured_pixel_nm": [1.7, 2.9]}


def write_sweep_section(site: Path, out: Path, profile: str) -> int:
    """Run the how-to's sweep (``agglib sweep``) and put its table on the page; returns its rows."""
    from agglib.sweep import run_sweep

    page = site / "book" / "howto.md"
    if not page.is_file() or SWEEP_MARKER not in page.read_text():
        return 0
    folder = out / "_build" / "sweeps" / f"fit-{profile}"
    table = run_sweep("10", HOWTO_SWEEP, folder, profile=profile, fixed={"robustness": False, "real_samples": False},
                      workers=2)
    grid = " ".join(f"-p {k} {' '.join(map(str, v))}" for k, v in HOWTO_SWEEP.items())
    command = f"agglib sweep 10 {grid} \\\n    -f robustness=false -f real_samples=false --profile {profile} --out sweeps/fit"
    cols = [c for c in table.columns if c in HOWTO_SWEEP or "error" in c or "intervals" in c]
    headers = {"dose_e_per_A2": "dose [e/Å²]", "measured_pixel_nm": "pixel [nm]",
               "intervals holding the truth (of 4)": "intervals holding θ (of 4)"}
    short = [headers.get(c, c.replace(" error", " abs. error").replace("θ̂_", "")) for c in cols]
    lines = ["| " + " | ".join(short) + " |", "|" + "---|" * len(cols)]
    for _, row in table[cols].iterrows():
        lines.append("| " + " | ".join(f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in cols) + " |")
    text = (f"```bash\n{command}\n```\n\n" + "\n".join(lines) +
            f"\n\n(profile {profile}; errors are |θ̂ − θ| of the one sample, so they scatter from run to run — "
            "a sweep over seeds, `-p seed 1 2 3 …`, averages that out.)")
    page.write_text(page.read_text().replace(SWEEP_MARKER, text))
    return len(table)


def write_results_page(site: Path, profile: str, overrides: dict, seed: int = 0) -> int:
    """Fill the results page's table from the results the notebooks recorded; returns the row count."""
    from agglib.evaluate import PAPER_RESULTS, default_run_dir

    page = site / "book" / "results.md"
    if not page.is_file():
        return 0
    from agglib.notebook import parameter_tag

    records = [json.loads(path.read_text()) for path in
               sorted((default_run_dir(parameter_tag(profile, overrides), seed) / "results").glob("*.json"))]
    profiles = sorted({rec["profile"] for rec in records})
    several = len(profiles) > 1
    header = ["quantity", "paper", "agglib", "trivial predictor", *(["profile"] if several else [])]
    sections = []
    for rec in records:                    # one table per notebook, its reproducing command below it
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for key, value in rec["results"].items():
            # the paper's numbers are its method's: they stand beside the paper-method rows too
            paper = PAPER_RESULTS.get(key, PAPER_RESULTS.get(key.removeprefix("paper method: ")))
            trivial = rec.get("trivial", {}).get(key)
            cells = [key, "" if paper is None else f"{paper:g}", f"{value:.4g}",
                     "" if trivial is None else f"{trivial:.4g}", *([rec["profile"]] if several else [])]
            lines.append("| " + " | ".join(cells) + " |")
        sections.append(f"### {rec['notebook']}\n\n" + "\n".join(lines)
                        + f"\n\n```bash\n{rec['command']}\n```")
    rows = sum(len(rec["results"]) for rec in records)
    if rows:
        table = ((f"All rows: profile `{profiles[0]}`. " if not several else "")
                 + "One table per notebook. The commands that reproduce them follow each table.\n\n"
                 + "\n\n".join(sections))
    else:
        table = "*No results were recorded in this build.*"
    text = page.read_text().replace(RESULTS_MARKER, table)
    page.write_text(text.replace(FIGURES_MARKER, results_figures(records)))
    return rows


def results_figures(records: list[dict]) -> str:
    """The results page's figures (plotly, drawn with the book's shipped plotly.js): the headline
    numbers beside the paper's and the trivial predictor's, and the coverage of 90 % regions."""
    import agglib.visualize as viz
    from agglib.evaluate import recorded_coverage, recorded_headlines

    results = {k: v for rec in records for k, v in rec["results"].items()}
    trivial = {k: v for rec in records for k, v in rec.get("trivial", {}).items()}
    figures = []
    headlines = recorded_headlines(results, trivial)
    if headlines.shape[1] > 1:
        figures.append(("The headline numbers", viz.plot_headlines(headlines)))
    for label, name in (("paper's acquisition", "this book's estimator (paper's acquisition)"),
                        ("default estimator, drawn acquisition", "the default of fit (one drawn acquisition per sample)"),
                        ("default estimator, drawn acquisition given",
                         "the default of fit, each sample's intensity scale and contrast given")):
        coverage = recorded_coverage(results, label)
        if not coverage.empty:
            columns = [c for c in ("df central", "df HPD", "rho central", "rho HPD", "joint HPD", "TARP") if c in coverage]
            fig = viz.plot_coverage(coverage, columns, title=f"Coverage of 90 % regions: {name}")
            figures.append((f"Calibration: {name}", fig.update_layout(width=680)))
    if not figures:
        return "*No figures: this build recorded no headline numbers.*"
    parts = []
    for heading, fig in figures:
        html = fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})
        parts.append(f"**{heading}.**\n\n<div class=\"agglib-figure\">\n{html.strip()}\n</div>")
    return "\n\n".join(parts)


def restrict_toc(site: Path, only: list[str]) -> None:
    """Drop notebooks that were not executed from the staged table of contents."""
    import yaml

    toc = yaml.safe_load((site / "_toc.yml").read_text())
    for part in toc.get("parts", []):
        part["chapters"] = [c for c in part["chapters"] if not c["file"].startswith("notebooks/")
                            or c["file"].split("/")[1][:2] in only]
    toc["parts"] = [p for p in toc["parts"] if p["chapters"]]
    (site / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=None, help="run-size profile (default: agglib config)")
    ap.add_argument("--out", default=str(ROOT), help="directory that receives _build/")
    ap.add_argument("--only", default=None, help="comma-separated notebook numbers, e.g. 01,02")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per notebook cell")
    ap.add_argument("--overrides", default="{}", help="JSON dict of profile-field overrides")
    ap.add_argument("--no-sweep", dest="sweep", action="store_false",
                    help="skip the how-to page's parameter sweep (its table says so)")
    ap.add_argument("--executed", default=None,
                    help="folder of notebooks already executed at this profile (skips papermill)")
    args = ap.parse_args(argv)

    import agglib

    profile = args.profile or agglib.config.get("profile")
    from agglib.profiles import is_profile_file

    if is_profile_file(profile):                 # notebooks run in notebooks/: an absolute path
        profile = str(Path(profile).resolve())
    only = args.only.split(",") if args.only else None
    out = Path(args.out).resolve()
    site = out / "_build" / "site"
    t0 = time.perf_counter()
    stage_sources(site)
    if only:
        restrict_toc(site, only)
    times = execute_notebooks(site, profile, only, args.timeout, json.loads(args.overrides),
                              Path(args.executed) if args.executed else None)
    rows = write_results_page(site, profile, json.loads(args.overrides))
    print(f"[book] results page: {rows} recorded numbers")
    if args.sweep:
        t_sweep = time.perf_counter()
        print(f"[book] how-to sweep: {write_sweep_section(site, out, profile)} runs", flush=True)
        times["how-to sweep (agglib sweep)"] = time.perf_counter() - t_sweep
    elif (site / "book" / "howto.md").is_file():
        page = site / "book" / "howto.md"
        page.write_text(page.read_text().replace(SWEEP_MARKER, "*This build skipped the sweep (`make_book.py --no-sweep`).*"))
    t_build = time.perf_counter()
    cmd = ["jupyter-book", "build", str(site), "--path-output", str(out), "-W", "-n", "--keep-going"]
    jb = Path(sys.executable).with_name("jupyter-book")
    if jb.exists():
        cmd[0] = str(jb)
    rc = subprocess.call(cmd)
    remove_thebe(out / "_build" / "html")
    times["jupyter-book build"] = time.perf_counter() - t_build
    print("\n[book] wall time per step:")
    for name, t in times.items():
        print(f"  {name:<40s} {t:8.1f} s")
    print(f"  {'total':<40s} {time.perf_counter() - t0:8.1f} s")
    if rc == 0:
        print(f"[book] HTML in {out / '_build' / 'html' / 'index.html'}")
    return rc


if __name__ == "__main__":
    sys.exit(main())

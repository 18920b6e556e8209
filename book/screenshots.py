"""Screenshots of built book pages in headless Chromium, and the pages' browser-console errors.

    python book/screenshots.py _build/html --out _build/screenshots        # the pages the issue names
    python book/screenshots.py _build/html --out shots notebooks/05_posterior book/results

Each page is loaded from the built HTML (offline: plotly.js comes from the book's ``_static``),
given time to draw its figures, and saved as ``<page>.png`` (full height, in tiles of
``--tile-height`` px for viewers that downscale tall images; the window is ``--height`` px tall
and the blank bottom is cut off). The console messages Chromium logs at
level ERROR, and any uncaught exception, are printed; the exit status is 1 if a page has one.
Needs Chromium (``apt-get install chromium``); ``--chromium`` names another binary.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PAGES = ("book/quickstart", "notebooks/01_aggregate_generation", "notebooks/02_stem_simulation",
         "notebooks/08_descriptor_comparison", "book/results")

#: Console lines that are errors: Chromium's level ERROR, uncaught exceptions, redeclared scripts.
_ERROR = re.compile(r":(ERROR|FATAL):CONSOLE|Uncaught|has already been declared")
#: Software-rendering notices of a headless browser without a GPU, not the page's errors.
_BENIGN = re.compile(r"WebGL|GroupMarkerNotSet|swiftshader|willReadFrequently", re.IGNORECASE)


def find_chromium(name: str | None = None) -> str | None:
    """The Chromium binary: ``name``, else the first of chromium, chromium-browser, google-chrome."""
    for candidate in ([name] if name else ["chromium", "chromium-browser", "google-chrome"]):
        path = shutil.which(candidate) if candidate else None
        if path:
            return path
    return None


def _content_bottom(image, blank_px: int = 1000) -> int:
    """The row where the page's content ends: the start of the first run of ``blank_px`` white
    rows in the text column (below it the window was taller than the page; a footer may follow)."""
    import numpy as np

    width = image.width
    column = np.asarray(image.convert("L").crop((width // 4, 0, width * 3 // 4, image.height)))
    blank = (column >= 250).all(axis=1)
    run = 0
    for row, white in enumerate(blank):
        run = run + 1 if white else 0
        if run == blank_px:
            return row - blank_px + 40
    return image.height


def screenshot(chromium: str, html_dir: Path, page: str, out: Path, width: int = 1280,
               tile_height: int = 1500, height: int = 24_000) -> tuple[list[Path], list[str]]:
    """PNG tiles of one page (drawn in a window ``height`` px tall, the blank bottom cut off) and
    its console errors."""
    from PIL import Image

    url = (html_dir / f"{page}.html").resolve().as_uri()
    out.mkdir(parents=True, exist_ok=True)
    name = page.replace("/", "_")
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "page.png"
        res = subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                              f"--window-size={width},{height}", "--virtual-time-budget=10000",
                              "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", url],
                             capture_output=True, text=True, timeout=300)
        errors = [line for line in res.stderr.splitlines() if _ERROR.search(line) and not _BENIGN.search(line)]
        image = Image.open(shot)
        image = image.crop((0, 0, width, _content_bottom(image)))
        tiles = []
        for k, top in enumerate(range(0, image.height, tile_height)):
            tile = out / f"{name}_{k}.png"
            image.crop((0, top, width, min(image.height, top + tile_height))).save(tile)
            tiles.append(tile)
    return tiles, errors


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("html", help="the built book, e.g. _build/html")
    ap.add_argument("pages", nargs="*", default=list(PAGES), help=f"pages without .html (default: {' '.join(PAGES)})")
    ap.add_argument("--out", default="_build/screenshots", help="folder of the PNG tiles (default: %(default)s)")
    ap.add_argument("--width", type=int, default=1280, help="window width [px] (default: %(default)s)")
    ap.add_argument("--tile-height", type=int, default=1500, help="height of one PNG tile [px] (default: %(default)s)")
    ap.add_argument("--height", type=int, default=24_000, help="window height [px], at least the longest page's (default: %(default)s)")
    ap.add_argument("--chromium", default=None, help="Chromium binary (default: found on PATH)")
    args = ap.parse_args(argv)
    chromium = find_chromium(args.chromium)
    if chromium is None:
        print("no Chromium found: apt-get install chromium (or --chromium PATH)", file=sys.stderr)
        return 2
    failed = False
    for page in args.pages:
        tiles, errors = screenshot(chromium, Path(args.html), page, Path(args.out), args.width, args.tile_height,
                                   args.height)
        print(f"{page}: {len(tiles)} tiles in {args.out}/, {len(errors)} console errors")
        for line in errors:
            print("   ", line[:300])
        failed |= bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Regenerate tests/data/fit_sample/: 12 simulated 'measured' HAADF images of one sample.

θ = (1.8, 0.6, 2, 3), 160² px at 2.9 nm/px (464 nm field of view), 149 e/Å², stored as float32
TIFF *without* a pixel size (so `agglib fit` needs --pixel-size 2.9).

    python tests/data/make_fit_images.py
"""

from pathlib import Path

import tifffile

import agglib

THETA = (1.8, 0.6, 2, 3)
PIXEL_NM = 2.9


def main():
    out = Path(__file__).with_name("fit_sample")
    out.mkdir(exist_ok=True)
    settings = agglib.StemSettings(image_size_px=160, pixel_size_nm=PIXEL_NM)
    for k, agg in enumerate(agglib.generate_aggregates(agglib.ModelParams(*THETA), 12, seed=42, workers=1)):
        tifffile.imwrite(out / f"image_{k:02d}.tif", agglib.render_stem(agg, seed=1000 + k, settings=settings),
                         compression="zlib")


if __name__ == "__main__":
    main()

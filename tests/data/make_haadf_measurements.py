"""Regenerate agglib/data/haadf_measurements.json from the public measurements of TiO2–WO3 aggregates.

Source: the repository UniBremenIFPElectronMicroscopy/Material-Discrimination-in-Nanoparticle-
Hetero-Aggregates-by-Analysis-of-STEM-images (commit 3bfad34), the data of B. Gerken, C. Mahr,
J. Stahl, T. Grieb, M. Schowalter, F. F. Krause, T. Mehrtens, L. Mädler and A. Rosenauer,
"Material discrimination in nanoparticle hetero-aggregates by analysis of scanning transmission
electron microscopy images", Part. Part. Syst. Charact. 40(9), 2300048 (2023) — reference [54]
of the paper agglib implements. Two files are read:

* ``RawData/comparison_simulation_med_values.mat`` (written by their ``summary_paper.m``): for
  the primary particles of the 7 images normalised for the comparison with simulations (LeBeau &
  Stemmer), the material (1 = WO3, 2 = TiO2), the radius [nm] and the median, over the pixels
  within 0.4 radii of the particle centre, of the log-scaled electron optical density
  R = −ln(1 − I)/t × 1000 (I: normalised HAADF intensity, t: projected thickness [nm]; their
  ``get_orientation_thickness_matrix_paper.m`` plots it against the diameter, t = 2r);
* ``RawData/HAADF_Spektra_91mm_R50_v2.txt``: their annular detector's sensitivity against the
  scattering angle [rad] at 91 mm camera length.

    python tests/data/make_haadf_measurements.py <path of a checkout of that repository>
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import scipy.io

REPO = "UniBremenIFPElectronMicroscopy/Material-Discrimination-in-Nanoparticle-Hetero-Aggregates-by-Analysis-of-STEM-images"
MATERIAL = {1: "WO3", 2: "TiO2"}


def main(source: Path):
    commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()

    def read(path):
        return subprocess.run(["git", "-C", str(source), "show", f"HEAD:{path}"], capture_output=True,
                              check=True).stdout

    out = Path(__file__).resolve().parents[2] / "agglib" / "data" / "haadf_measurements.json"
    tmp = out.with_suffix(".mat.tmp")
    tmp.write_bytes(read("RawData/comparison_simulation_med_values.mat"))
    try:
        m = scipy.io.loadmat(tmp)
    finally:
        tmp.unlink()
    element, radius, r_value = (m[k].ravel() for k in ("element_liste", "radius_liste", "y_werte_part_med_liste"))
    keep = np.isfinite(r_value) & np.isfinite(radius)
    sensitivity = np.loadtxt(read("RawData/HAADF_Spektra_91mm_R50_v2.txt").decode().splitlines())
    record = {
        "format": "agglib-haadf-measurements/1",
        "source": {"repository": f"https://github.com/{REPO}", "commit": commit,
                   "files": ["RawData/comparison_simulation_med_values.mat", "RawData/HAADF_Spektra_91mm_R50_v2.txt"],
                   "reference": "B. Gerken, C. Mahr, J. Stahl, T. Grieb, M. Schowalter, F. F. Krause, T. Mehrtens, "
                                "L. Mädler, A. Rosenauer: Material discrimination in nanoparticle hetero-aggregates "
                                "by analysis of scanning transmission electron microscopy images, Part. Part. Syst. "
                                "Charact. 40(9), 2300048 (2023)",
                   "converted_by": "tests/data/make_haadf_measurements.py"},
        "particles": {"material": [MATERIAL[int(e)] for e in element[keep]],
                      "radius_nm": [round(float(r), 4) for r in radius[keep]],
                      "log_density_per_um": [round(float(v), 5) for v in r_value[keep]]},
        "particles_left_out": int((~keep).sum()),
        "notes": "log_density_per_um: median of R = -ln(1 - I)/t * 1000 [1/µm, t in nm] over the pixels within "
                 "0.4 radii of the centre; I is the detector-normalised HAADF intensity (fraction of the beam).",
        "detector": {"angle_mrad": [round(float(a) * 1000, 4) for a in sensitivity[:, 0]],
                     "sensitivity": [float(s) for s in sensitivity[:, 1]],
                     "camera_length_mm": 91},
    }
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{int(keep.sum())} particles ({int((~keep).sum())} without a value left out) -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""agglib never deletes or replaces a file it did not write (issue: `fit --out <input> --overwrite`)."""

import os
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from agglib.cli import main
from agglib.core.files import OUTPUT_MARKER, OutputFolderError, check_outside_inputs, claim_output_dir

SAMPLE = Path(__file__).parent / "data" / "fit_sample"


def _user_sample(tmp_path) -> Path:
    """A microscopist's folder: the 12 shipped images and a notes file."""
    folder = tmp_path / "mysample"
    folder.mkdir()
    for f in sorted(SAMPLE.glob("*.tif")):
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "notes.txt").write_text("acquired 2026-11-02, 300 kV")
    return folder


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_fit_into_its_own_input_folder_is_refused_and_deletes_nothing(tmp_path, capsys):
    sample = _user_sample(tmp_path)
    before = _snapshot(tmp_path)
    code = main(["fit", str(sample), "--pixel-size", "2.9", "--out", str(sample), "--overwrite",
                 "--bootstrap", "10", "--shadows", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "is the input" in err and str(sample.resolve()) in err
    assert _snapshot(tmp_path) == before


def test_fit_into_the_parent_of_its_input_is_refused_and_deletes_nothing(tmp_path, capsys, monkeypatch):
    sample = _user_sample(tmp_path)
    (tmp_path / "other.dat").write_text("not agglib's")
    before = _snapshot(tmp_path)
    monkeypatch.chdir(sample)
    code = main(["fit", ".", "--pixel-size", "2.9", "--out", "..", "--overwrite", "--bootstrap", "10",
                 "--shadows", "2"])
    assert code == 2
    assert "contains the input" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before


def test_output_inside_an_input_folder_or_a_foreign_folder_is_refused(tmp_path, capsys):
    sample = _user_sample(tmp_path)
    assert main(["fit", str(sample), "--pixel-size", "2.9", "--out", str(sample / "results")]) == 2
    assert "lies inside the input folder" in capsys.readouterr().err
    foreign = tmp_path / "papers"
    foreign.mkdir()
    (foreign / "draft.docx").write_text("thesis")
    assert main(["fit", str(sample), "--pixel-size", "2.9", "--out", str(foreign), "--overwrite"]) == 2
    assert "files agglib did not write" in capsys.readouterr().err
    assert (foreign / "draft.docx").read_text() == "thesis" and not (sample / "results").exists()


def test_overwrite_replaces_only_agglibs_own_files(tmp_path, capsys):
    sample = _user_sample(tmp_path)
    out = tmp_path / "result"
    args = ["fit", str(sample), "--pixel-size", "2.9", "--out", str(out), "--bootstrap", "10", "--shadows", "2"]
    assert main(args) == 0
    assert (out / OUTPUT_MARKER).is_file() and (out / "summary.json").is_file()
    (out / "my_notes.md").write_text("keep me")
    assert main(args) == 2                                      # exists, no --overwrite
    assert "pass --overwrite" in capsys.readouterr().err
    (out / "summary.json").write_text("{}")
    assert main([*args, "--overwrite"]) == 0
    assert (out / "my_notes.md").read_text() == "keep me"
    assert (out / "summary.json").read_text() != "{}"
    assert sorted(p.name for p in sample.iterdir()) == sorted([*(f.name for f in SAMPLE.glob("*.tif")), "notes.txt"])


def test_a_user_file_with_an_agglib_name_is_never_replaced(tmp_path):
    out = claim_output_dir(tmp_path / "o", ["a.npy"], command="test")
    (out / "b.npy").write_text("user's")
    with pytest.raises(OutputFolderError, match="b.npy exists and was not written by agglib"):
        claim_output_dir(out, ["a.npy", "b.npy"], overwrite=True)
    assert (out / "b.npy").read_text() == "user's"


def test_dataset_build_refuses_a_folder_that_is_not_a_store(tmp_path):
    from agglib.dataset import build_dataset

    folder = tmp_path / "mydata"
    folder.mkdir()
    (folder / "image.tif").write_text("x")
    with pytest.raises(OutputFolderError, match="is not a dataset store"):
        build_dataset(folder, "tiny", workers=1, show_progress_bars=False)
    assert (folder / "image.tif").read_text() == "x"


names = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3)


@settings(max_examples=40, deadline=None)
@given(parts_in=names, parts_out=names)
def test_output_never_overlaps_an_input_folder(tmp_path_factory, parts_in, parts_out):
    """Refused exactly when one path is the other or lies inside it."""
    root = tmp_path_factory.mktemp("tree")
    src, out = root.joinpath(*parts_in), root.joinpath(*parts_out)
    src.mkdir(parents=True, exist_ok=True)
    overlap = src == out or src in out.parents or out in src.parents
    if overlap:
        with pytest.raises(OutputFolderError):
            check_outside_inputs(out, [src])
    else:
        check_outside_inputs(out, [src])
    assert os.path.isdir(src)


def test_make_book_replaces_only_a_staging_folder_it_made(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_book", Path(__file__).parents[1] / "book" / "make_book.py")
    make_book = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_book)
    site = tmp_path / "_build" / "site"
    site.mkdir(parents=True)
    (site / "thesis.md").write_text("my chapter")
    with pytest.raises(SystemExit, match="was not staged by book/make_book.py"):
        make_book.stage_sources(site)
    assert (site / "thesis.md").read_text() == "my chapter"
    (site / "thesis.md").unlink()
    site.rmdir()
    make_book.stage_sources(site)                       # a new staging folder, with its marker …
    (site / "stale.md").write_text("left from the last build")
    make_book.stage_sources(site)                       # … is replaced on the next build
    assert not (site / "stale.md").exists() and (site / "_config.yml").is_file()

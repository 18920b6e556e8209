"""A notebook's set-up in one call: profile, datasets, run folder, upstream results, records.

Every numbered notebook starts with :func:`setup_notebook` on its papermill parameters::

    nb = setup_notebook("05_posterior", profile, seed, overrides, nu=nu)
    store, continuous = nb.grid_store(), nb.continuous_store()
    estimator = nb.sample_estimator(train=True)    # notebooks 4 and 5 train it …
    estimator = nb.sample_estimator()              # … the others load it, or refuse
    nb.record({"θ̂_Df MAE": 0.02}, trivial=...)     # results/<notebook>.json + a table

* A **run folder per parameter set**: ``runs/<tag>-seed<seed>`` in the user data folder, where the
  tag is the profile's name, followed by a digest of the overrides when there are any — two
  different override sets never share (or overwrite) a folder. Datasets are shared by every run
  whose dataset fields agree (their tag hashes only those fields).
* **Upstream results are loaded, never silently retrained**: a notebook that needs the estimator
  of notebooks 4 and 5 gets a :class:`agglib.sets_training.NotTrainedError` naming the commands to run.
* **The exact command** that reproduces a notebook's numbers (papermill with every parameter) is
  recorded beside them and written to ``run_dir/parameters/<notebook>.json`` (one file per
  notebook, written whole: runs of a sweep never read-modify-write a shared file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import hashlib
import json
from pathlib import Path

import agglib
from agglib.profiles import Profile, load_profile

__all__ = ["setup_notebook", "NotebookRun", "parameter_tag"]


def parameter_tag(name: str, changes: dict) -> str:
    """``name``, or ``name-<8 hex digits>`` of the sorted ``changes`` when there are any."""
    if not changes:
        return name
    digest = hashlib.sha256(json.dumps(changes, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{name}-{digest}"


def _yaml(value) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


@dataclass
class NotebookRun:
    """What a notebook works with (see the module docstring).

    Attributes
    ----------
    notebook : str
        The notebook's name without suffix (e.g. ``"05_posterior"``).
    profile : Profile
        The run's profile, with the overrides applied.
    seed : int
        The run's seed.
    overrides : dict
        Profile fields changed from the named profile's values.
    parameters : dict
        The notebook's own papermill parameters (beside ``profile``, ``seed`` and ``overrides``),
        written into :attr:`command`.
    record_to : str or None
        A file that :meth:`record` also writes this run's numbers to (the notebook's
        ``record_to`` parameter, which ``agglib sweep`` sets to each run's ``results.json``).
    """

    notebook: str
    profile: Profile
    seed: int
    overrides: dict
    parameters: dict = field(default_factory=dict)
    record_to: str | None = None
    _stores: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def tag(self) -> str:
        """The run's tag (the profile's name, with a digest of the overrides if any; a profile
        file's name with a digest of all its fields, so an edited file gets a run of its own)."""
        if self.profile.source:
            return parameter_tag(self.profile.name, {k: v for k, v in self.profile.to_dict().items() if k != "source"})
        return parameter_tag(self.profile.name, self.overrides)

    @property
    def data_tag(self) -> str:
        """The datasets' tag (a digest of only the overrides that change a dataset; for a profile
        file, of its dataset fields)."""
        if self.profile.source:
            fields = {**self.profile.dataset_fields("grid"), **self.profile.dataset_fields("continuous")}
            return parameter_tag(self.profile.name, fields)
        base = load_profile(self.profile.name)
        keys = (set(base.dataset_fields("grid")) | set(base.dataset_fields("continuous"))
                | {"acquisition", "particles", "dose_e_per_A2"})
        return parameter_tag(self.profile.name, {k: v for k, v in self.overrides.items() if k in keys})

    @property
    def run_dir(self) -> Path:
        """The run folder, ``runs/<tag>-seed<seed>`` in the user data folder."""
        from agglib.evaluate.estimators import default_run_dir

        return default_run_dir(self.tag, self.seed)

    @property
    def command(self) -> str:
        """The papermill command that reproduces this notebook's results."""
        parts = [f"papermill notebooks/{self.notebook}.ipynb out.ipynb -p profile {self.profile.source or self.profile.name}",
                 f"-p seed {self.seed}"]
        if self.overrides:
            parts.append(f"-y 'overrides: {_yaml(self.overrides)}'")
        for name, value in self.parameters.items():
            parts.append(f"-y '{name}: {_yaml(value)}'" if not isinstance(value, (int, float, str)) or
                         isinstance(value, bool) else f"-p {name} {value}")
        return " ".join(parts)

    def store_path(self, design: str = "grid") -> Path:
        """Where the run's dataset of ``design`` (``"grid"`` or ``"continuous"``) is kept; shared
        by every run whose dataset fields agree (see :attr:`data_tag`)."""
        from agglib.dataset import default_store_path

        return default_store_path(self.data_tag, self.seed, design)

    def _store(self, design: str):
        """The profile's dataset of ``design``, built (or resumed) once per run object."""
        from agglib.dataset import build_dataset

        if design not in self._stores:
            self._stores[design] = build_dataset(self.store_path(design), self.profile, seed=self.seed,
                                                 design=design, show_progress_bars=False)
        return self._stores[design]

    def grid_store(self):
        """The profile's grid dataset (built, or resumed, if missing: same parameters, same data)."""
        return self._store("grid")

    def continuous_store(self):
        """The profile's continuous dataset (built, or resumed, if missing)."""
        return self._store("continuous")

    def continuous_stores(self) -> list:
        """The ``profile.posterior_datasets`` continuous datasets the posterior trains on (seeds
        ``seed``, ``seed + 1`` …; built, or resumed, if missing): the first is :meth:`continuous_store`."""
        from agglib.dataset import build_dataset, default_store_path

        more = [build_dataset(default_store_path(self.data_tag, self.seed + k, "continuous"), self.profile,
                              seed=self.seed + k, design="continuous", show_progress_bars=False)
                for k in range(1, self.profile.posterior_datasets)]
        return [self.continuous_store(), *more]

    def sample_estimator(self, train: bool = False):
        """The new method's estimator of this run: trained here with ``train=True`` (notebooks 4
        and 5), else loaded — or :class:`agglib.sets_training.NotTrainedError` naming what to run."""
        from agglib.sets_training import NotTrainedError
        from agglib.sets_training.pipeline import train_sample_estimator

        try:
            return train_sample_estimator(self.profile, self.grid_store(), self.continuous_stores(), self.run_dir,
                                          seed=self.seed, train=train)
        except NotTrainedError as err:
            upstream = [NotebookRun(n, self.profile, self.seed, self.overrides).command
                        for n in ("04_image_encoder", "05_posterior")]
            raise NotTrainedError(f"{self.notebook} uses the estimator that notebooks 04 and 05 train for these "
                                  f"parameters, and it is not there ({err}). Run them first:\n  "
                                  + "\n  ".join(upstream)) from None

    def record(self, results: dict, trivial: dict | None = None):
        """Our numbers beside the paper's and the trivial predictor's; also written to
        ``run_dir/results/<notebook>.json`` with :attr:`command` (the book's results page)."""
        from agglib.core.files import atomic_write_text
        from agglib.evaluate import results_table

        atomic_write_text(self.run_dir / "parameters" / f"{self.notebook}.json",
                          json.dumps({"command": self.command, "profile": self.profile.source or self.profile.name,
                                      "seed": self.seed, "overrides": self.overrides, "parameters": self.parameters},
                                     indent=1, ensure_ascii=False, default=str))
        if self.record_to:                          # a sweep's run: a copy in the run's own folder
            atomic_write_text(Path(self.record_to), json.dumps({"command": self.command, "parameters": self.parameters,
                                                       "results": {k: float(v) for k, v in results.items()}},
                                                      indent=1, ensure_ascii=False, default=str))
        return results_table(results, self.profile.name, self.command, self.run_dir, self.notebook, trivial=trivial)


def setup_notebook(notebook: str, profile: str = "quick", seed: int = 0, overrides: dict | None = None, *,
                   progress_bars: bool = False, record_to: str | None = None, **parameters) -> NotebookRun:
    """Set up a notebook from its papermill parameters (see the module docstring).

    Parameters
    ----------
    notebook : str
        Its file name without ``.ipynb``, e.g. ``"05_posterior"``.
    profile, seed, overrides
        The papermill parameters every notebook has.
    progress_bars : bool
        tqdm bars in this kernel (False in the book; set True in JupyterLab). It is the kernel's
        setting: ``agglib.config['progress_bars']``, which every long call of agglib reads unless
        given ``show_progress_bars=``.
    record_to : str, optional
        Also write what :meth:`NotebookRun.record` records to this file (``agglib sweep`` sets it).
    **parameters
        The notebook's other parameters (recorded in its command).
    """
    overrides = dict(overrides or {})
    prof = load_profile(profile, **overrides)
    agglib.config.set(progress_bars=progress_bars)
    return NotebookRun(notebook, prof, int(seed), overrides, dict(parameters), record_to=record_to)

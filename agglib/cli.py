"""Command-line interface: ``agglib <command> ...`` for batch jobs."""

from __future__ import annotations

import argparse
import csv
import functools
import sys
import warnings
from pathlib import Path

import agglib
from agglib.core.wording import counted


def _compiling(*modules: str) -> None:
    """The one-line notice before numba compiles the kernels of ``modules`` ("model": aggregation,
    "stem": rendering) on a first run (after the input checks)."""
    from agglib.core.compilation import announce_first_compilation

    announce_first_compilation(modules=modules)


def _cmd_generate(args) -> int:
    from agglib.core.files import check_output_dir, claim_output_dir

    params = agglib.ModelParams(args.df, args.rho, args.theta0, args.theta1)
    if args.count < 1:
        raise ValueError(f"--count {args.count}: give at least 1 aggregate")
    width = len(str(max(args.count - 1, 0)))
    names = [f"aggregate_{k:0{width}d}.npz" for k in range(args.count)]
    check_output_dir(args.out, names, overwrite=args.overwrite)
    _compiling("model")
    aggs = agglib.generate_aggregates(params, args.count, seed=args.seed, n_particles=args.n_particles,
                                      cluster_sizes=args.cluster_sizes, workers=args.workers)
    out = claim_output_dir(args.out, names, overwrite=args.overwrite, command="agglib generate")
    for name, agg in zip(names, aggs):
        agg.save(out / name)
    print(f"wrote {counted(len(aggs), 'aggregate')} with {params} to {out}/")
    return 0


def _cmd_describe(args) -> int:
    aggregates = [agglib.Aggregate.load(path) for path in args.paths]      # every input checked first
    writer = csv.writer(sys.stdout)
    writer.writerow(["file", *agglib.descriptors.DESCRIPTOR_NAMES])
    for path, agg in zip(args.paths, aggregates):
        d = agglib.describe(agg)
        writer.writerow([path, *(d[k] for k in agglib.descriptors.DESCRIPTOR_NAMES)])
    return 0


def _cmd_render(args) -> int:
    import numpy as np

    from agglib.core.files import atomic_open, claim_output_dir
    from agglib.core.seeding import spawn_seeds

    settings = agglib.StemSettings(image_size_px=args.image_size, pixel_size_nm=args.pixel_size,
                                   dose_e_per_A2=args.dose, scan_noise_nm=args.scan_noise,
                                   semiangle_mrad=args.semiangle, noise=not args.no_noise)
    names = [Path(path).stem + ".npy" for path in args.paths]
    if len(set(names)) < len(names):
        raise ValueError("two inputs have the same file name; their images would overwrite each other")
    aggregates = [agglib.Aggregate.load(path) for path in args.paths]      # every input checked first
    out = claim_output_dir(args.out, names, inputs=args.paths, overwrite=args.overwrite, command="agglib render")
    seeds = spawn_seeds(args.seed, len(args.paths))
    _compiling("stem")
    for agg, name, seed in zip(aggregates, names, seeds):
        image = agglib.render_stem(agg, seed=seed, settings=settings)
        with atomic_open(out / name) as fh:
            np.save(fh, image)
    print(f"wrote {counted(len(args.paths), 'image')} ({settings.image_size_px}² px, "
          f"{settings.pixel_size_nm:g} nm/px, {settings.dose_e_per_A2:g} e/Å²) to {out}/")
    return 0


def _cmd_haadf_table(args) -> int:
    try:
        import abtem  # noqa: F401
    except ImportError:
        raise ValueError('agglib haadf-table runs abTEM multislice simulations, which are not installed: '
                         'pip install "agglib[multislice]"') from None
    from agglib.stem.multislice import MultisliceSettings
    from agglib.stem.reference import build_reference_table

    settings = MultisliceSettings(thickness_nm=args.thickness, positions=args.positions,
                                  zone_axis_positions=args.zone_axis_positions, phonons=args.phonons,
                                  box_A=args.box)
    table = build_reference_table(args.out, phases=args.phases, settings=settings, workers=args.workers)
    print(f"HAADF table with {len(table.phases)} phases written to {args.out}")
    return 0


def _parse_sets(items) -> dict:
    """``["key=value", ...]`` -> dict, values parsed as YAML (numbers, lists)."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r} must look like field=value, e.g. samples_per_config=40")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _cmd_dataset_build(args) -> int:
    from agglib.dataset import build_dataset
    from agglib.profiles import load_profile

    profile = load_profile(args.profile, **_parse_sets(args.set))          # a bad profile or field: refused first
    _compiling("model", "stem")
    build_dataset(args.out, profile, seed=args.seed, workers=args.workers, scheduler=args.scheduler,
                  shard_size=args.shard_size, design=args.design)
    return 0


def _cmd_dataset_info(args) -> int:
    import json

    from agglib.dataset import open_store

    store = open_store(args.path)
    print(json.dumps({**store.summary(), "identity": store.identity}, indent=1))
    return 0


def _cmd_train(args) -> int:
    from agglib.core.files import check_writable
    from agglib.paper_training import TrainConfig, train_network

    if not Path(args.store).is_dir():
        raise FileNotFoundError(f"--store {args.store}: no such dataset store (build one with `agglib dataset build`)")
    check_writable(args.out)

    config = TrainConfig(target=args.target, arch=args.arch, epochs=args.epochs, lr=args.lr, nu=args.nu,
                         schedule=args.schedule, repeats=args.repeats, init_features=args.init_features,
                         batch=args.batch, seed=args.seed, device=args.device, num_workers=args.num_workers,
                         bf16=args.bf16, val_share=args.val_share, val_images=args.val_images,
                         bn_batches=args.bn_batches)
    result = train_network(args.store, config, args.out, checkpoint_every_steps=args.checkpoint_every,
                           time_budget_s=args.time_budget_s)
    from agglib.core.distributed import DistEnv

    if not DistEnv.from_env().is_main:             # torchrun: rank 0 reports
        return 0
    last = result["history"][-1] if result["history"] else {}
    print(f"{args.target}: {len(result['history'])} epochs, best validation loss on V {result['best_val_loss']:.4g}, "
          f"last validation MAE on V {last.get('val_mae', float('nan')):.4g}; checkpoints in {args.out}/")
    if len(result["history"]) < args.epochs:
        print(f"stopped by the time budget after epoch {len(result['history'])} of {args.epochs}: run the same "
              "command again to continue")
    scores = result.get("E")
    if scores:                    # reported, not used to choose
        best = scores["best"] or {}
        print(f"on E (not used to choose): best.pt (epoch {best.get('epoch', -1) + 1}) MAE "
              f"{best.get('E_mae', float('nan')):.4g}, last (epoch {scores['last']['epoch'] + 1}) MAE "
              f"{scores['last']['E_mae']:.4g}")
    return 0


def _cmd_estimator(args) -> int:
    from agglib.dataset import build_dataset
    from agglib.notebook import NotebookRun
    from agglib.profiles import load_profile
    from agglib.sets_training.pipeline import train_sample_estimator

    changes = _parse_sets(args.set)
    run = NotebookRun("train-estimator", load_profile(args.profile, **changes), args.seed, changes)
    prof = run.profile
    if args.out:                                   # refused now, not after the datasets and the training
        from agglib.core.files import check_output_dir

        check_output_dir(args.out, ["encoder.pt", "posterior.pt"], overwrite=args.overwrite)
    _compiling("model", "stem")
    grid_path = args.store or run.store_path("grid")
    if args.continuous_store and len(args.continuous_store) != prof.posterior_datasets:
        raise ValueError(f"--continuous-store given {len(args.continuous_store)} times; the {prof.name} profile's "
                         f"posterior trains on posterior_datasets={prof.posterior_datasets} continuous datasets "
                         "(seeds --seed, --seed + 1, …): give that many, or none")
    from agglib.dataset import default_store_path

    cont_paths = args.continuous_store or [default_store_path(run.data_tag, args.seed + k, "continuous")
                                           for k in range(prof.posterior_datasets)]
    if args.encoder and not Path(args.encoder).is_file():
        raise FileNotFoundError(f"--encoder {args.encoder}: no such file (an encoder.pt of a trained estimator)")
    if args.encoder and not args.run_dir:           # the default run folder is the one that trains its own encoder
        raise ValueError(f"--encoder {args.encoder} needs --run-dir: a folder for this posterior's training (the "
                         "default run folder belongs to the run that trains its own encoder)")
    from agglib.core.distributed import DistEnv

    if DistEnv.from_env().distributed:             # torchrun: every process would build the same store
        import shlex

        from agglib.dataset.build import sample_identity
        from agglib.dataset.store import DatasetStore, check_identity

        sets = "".join(f" --set {shlex.quote(change)}" for change in args.set or [])
        stores, missing = [], []
        wanted = ([] if args.encoder else [(grid_path, "grid", args.seed)]) \
            + [(p, "continuous", args.seed + k) for k, p in enumerate(cont_paths)]
        for path, design, seed in wanted:
            try:
                store = DatasetStore(path)         # complete, or it raises
            except (FileNotFoundError, ValueError) as err:
                missing.append(f"agglib dataset build --profile {args.profile} --seed {seed} --design {design}"
                               f"{sets} --out {path}\n    ({err})")
                continue
            check_identity(store.identity, sample_identity(prof, seed, design), path)   # as build_dataset does
            stores.append(store)
        if missing:
            raise ValueError("under torchrun the datasets must exist (every process would build them): build "
                             "them first, in one process:\n  " + "\n  ".join(missing))
        grid, cont = (None, stores) if args.encoder else (stores[0], stores[1:])   # opened, not built
    else:
        grid = None if args.encoder else build_dataset(grid_path, prof, seed=args.seed, workers=args.workers)
        cont = [build_dataset(p, prof, seed=args.seed + k, workers=args.workers, design="continuous")
                for k, p in enumerate(cont_paths)]
    run_dir = Path(args.run_dir) if args.run_dir else run.run_dir
    estimator = train_sample_estimator(prof, grid, cont, run_dir, seed=args.seed,
                                       encoder_changes={"device": args.device}, encoder=args.encoder)
    if estimator is None:                          # a torchrun process other than rank 0: its part is done
        return 0
    out = estimator.save(args.out, overwrite=args.overwrite) if args.out else run_dir / "sets"
    print(f"estimator (encoder + set-level posterior) in {out}/; use it with `agglib fit … --models {out}`")
    return 0


def _cmd_calibrate(args) -> int:
    from agglib.core.validation import check_range
    from agglib.estimate import SampleEstimator, load_default_estimator
    from agglib.fit.acquisition_calibration import (CLI_OPTIONS, AcquisitionCalibration, calibrate_for_acquisition,
                                                    check_stated_acquisition)
    from agglib.stem.acquisition import ACQUISITION_KEYS

    out = AcquisitionCalibration.check_writable(args.out, args.overwrite)       # before the simulation, not after
    check_range("--configs", args.configs, low=20, integer=True)
    check_range("--images", args.images, low=1, high=24, integer=True)
    check_range("--seed", args.seed, low=0, integer=True)
    if args.workers is not None:
        check_range("--workers", args.workers, low=1, integer=True)
    options = {key: option for key, option in CLI_OPTIONS.items() if key != "pixel_zoom"}     # --pixel-size: below
    typed = {key: getattr(args, option[2:].replace("-", "_")) for key, option in options.items()}
    stated = check_stated_acquisition({key: value for key, value in typed.items() if value is not None}, options)
    if args.models is None:
        estimator = load_default_estimator()
    elif (Path(args.models) / "posterior.pt").is_file():
        estimator = SampleEstimator.load(args.models)
    else:
        raise FileNotFoundError(f"--models {args.models}: no posterior.pt there; agglib calibrate calibrates a "
                                "new-method estimator (encoder.pt + posterior.pt)")
    if args.pixel_size is not None:
        if not estimator.pixel_size_nm / 8 <= args.pixel_size <= 2 * estimator.pixel_size_nm:
            raise ValueError(f"--pixel-size {args.pixel_size:g}: accepted range [{estimator.pixel_size_nm / 8:g}, "
                             f"{2 * estimator.pixel_size_nm:g}] nm for this estimator ({estimator.pixel_size_nm:g} nm/px; "
                             "fit resamples images to it and refuses coarser than twice)")
        stated["pixel_zoom"] = estimator.pixel_size_nm / args.pixel_size
    if args.configs < 100:
        print(f"note: {args.configs} simulated samples give noisy widths (400, the default, for use)")
    calibration = calibrate_for_acquisition(estimator, stated, configs=args.configs, images=args.images, seed=args.seed,
                                            workers=args.workers)
    calibration.save(out, overwrite=args.overwrite)
    drawn = [k for k in ACQUISITION_KEYS if k not in stated]
    print(f"calibrated for {calibration.stated_in_words(estimator.pixel_size_nm)}; drawn per sample "
          f"from the training ranges: {', '.join(drawn) or 'nothing'} ({args.configs} simulated samples of "
          f"{args.images} images, {calibration.refused:.0%} of them refused by fit's intensity check and left out)")
    m = [1, 12, args.images] if args.images > 12 else [1, args.images]
    print(f"width factors at M = {', '.join(map(str, m))} images:")
    for label, own, law in (("acquisition unknown", estimator.widening, calibration.widening),
                            ("acquisition given", estimator.widening_known_acquisition,
                             calibration.widening_known_acquisition)):
        if law is None:
            continue
        for name, k in (("θ_Df", 0), ("θ_ρ", 1)):
            print(f"  {label}, {name}: {' / '.join(f'{w:.2f}' for w in law.factors(m)[0][:, k])} "
                  f"(the estimator's own: {' / '.join(f'{w:.2f}' for w in own.factors(m)[0][:, k])})")
    fit_options = (f" --intensity-scale {stated['intensity_scale']:g} --wo3-contrast {stated['wo3_contrast']:g} "
                   "(as stated) or without them") if calibration.widening_known_acquisition is not None else \
        " (without --intensity-scale/--wo3-contrast)"
    print(f"written to {out}; use it with agglib fit ... --calibration {out}{fit_options}")
    return 0


def _cmd_fit(args) -> int:
    from agglib.estimate import ParameterEstimator, SampleEstimator, missing_known_acquisition
    from agglib.core.files import check_output_dir
    from agglib.fit import SUPPORTED_SUFFIXES, characterise, draw_shadows, export_shadows
    from agglib.fit.characterise import SHADOW_FILES

    files = []
    for p in map(Path, args.paths):
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or folder")
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SUPPORTED_SUFFIXES)
            if not found:
                others = sorted({f.suffix.lower() or "(no suffix)" for f in p.iterdir() if f.is_file()})
                raise ValueError(f"{p} holds no image files of the accepted types "
                                 f"({', '.join(sorted(set(SUPPORTED_SUFFIXES)))})"
                                 + (f"; it holds {', '.join(others)} files" if others else "; it is empty"))
            files += found
        else:
            files.append(p)
    out = Path(args.out)
    check_output_dir(out, SHADOW_FILES, inputs=args.paths, overwrite=args.overwrite)
    if args.shadows < 1:
        raise ValueError(f"--shadows {args.shadows}: draw at least 1 digital shadow")
    if args.bootstrap < 10:
        raise ValueError(f"--bootstrap {args.bootstrap}: give at least 10 resamples")
    if args.dose is not None and args.dose <= 0:
        raise ValueError(f"--dose {args.dose:g}: the electron dose must be > 0 e/Å²")
    if args.dose is not None and args.units == "fraction":
        raise ValueError(f"--dose {args.dose:g} with --units fraction: the dose converts counts to fractions of the "
                         "beam; images already in fractions need none (leave --dose out, or give --units counts)")
    if args.pixel_size is not None and not 0 < args.pixel_size <= 1000:
        raise ValueError(f"--pixel-size {args.pixel_size:g}: out of range; accepted range (0, 1000] nm")
    acquisition = {"intensity_scale": args.intensity_scale, "wo3_contrast": args.wo3_contrast}
    missing = missing_known_acquisition(acquisition)
    if len(missing) == 1:
        given = next("--" + key.replace("_", "-") for key in acquisition if key not in missing)
        raise ValueError(f"{given} given alone: give both --intensity-scale and --wo3-contrast (notebook 2 measures "
                         "both against published particles: 0.72 and 0.69), or neither")
    acquisition = None if missing else acquisition
    _compiling("model")                            # the shadows; fit renders nothing with shipped estimators
    models = None if args.models is None else Path(args.models)
    if models is not None and not (models / "posterior.pt").is_file() and not any(models.glob("*/best.pt")):
        hint = (": that is a profile file; train an estimator for it first (agglib train-estimator --profile "
                f"{args.models} --out my_estimator) and give its folder" if str(args.models).endswith((".yaml", ".yml"))
                else ": no such folder" if not models.is_dir() else ": the folder holds no estimator")
        raise FileNotFoundError(f"--models {args.models}{hint} (an estimator folder holds encoder.pt and posterior.pt, "
                                "or the paper method's five networks as <target>/best.pt, as `agglib train-estimator "
                                "--out` and `agglib train` write them)")
    if models is None:
        estimator = None                    # fit chooses the shipped estimator for the images' field of view
    elif (models / "posterior.pt").is_file():
        estimator = SampleEstimator.load(models)
    else:
        estimator = ParameterEstimator.load(models)
    result = characterise(files, estimator, pixel_size_nm=args.pixel_size, dose_e_per_A2=args.dose,
                          n_bootstrap=args.bootstrap, seed=args.seed, skip_bad=args.skip_bad, units=args.units,
                          check_intensity_scale=not args.skip_intensity_check, acquisition=acquisition,
                          calibration=args.calibration)
    if args.calibration is not None:
        used = result.settings["acquisition_calibration"]
        print(f"intervals calibrated for the acquisition stated in {args.calibration} ({used['stated in words']}; its "
              f"law for the {used['law']})")
    if result.settings.get("estimator_chosen_by_field_of_view"):
        print(f"estimator: the shipped {result.settings['estimator_chosen_by_field_of_view']} one, made for "
              f"{result.settings['estimator_field_of_view_nm']:.0f} nm fields of view (--models to choose another)")
    if args.units == "counts" and args.dose is None:            # after the images were read: an error stays one line
        print(f"note: the images were read as electron counts at the training dose, {result.settings['training_dose_e_per_A2']:g} e/Å² "
              "(--units counts --dose D for another dose, --units fraction for detector-normalised images)")
    from agglib.estimate import INTERVAL_KINDS

    print(f"θ̂ from {counted(result.n_images, 'image')} (95 % {INTERVAL_KINDS[result.interval_kind]}):")
    for k, label in (("df", "θ_Df"), ("rho", "θ_ρ"), ("theta0", "θ0"), ("theta1", "θ1")):
        lo, hi = result.intervals[k]
        print(f"  {label:<5} {result.estimate[k]:>7.3f}   [{lo:.3f}, {hi:.3f}]")
    for w in result.warnings:
        print(f"warning: {w}")
    aggregates, _ = draw_shadows(result, args.shadows, seed=args.seed)
    export_shadows(result, aggregates, out, overwrite=args.overwrite, inputs=args.paths)
    print(f"{counted(len(aggregates), 'digital shadow')} written to {out}/ (summary.json, particles.csv, "
          "particles.parquet, shadows.ply)")
    return 0


def _cmd_sweep(args) -> int:
    import yaml

    from agglib.sweep import run_sweep

    grid = {}
    for item in args.parameter:
        if len(item) < 2:
            raise ValueError(f"-p {' '.join(item)}: give a parameter name and at least one value")
        grid[item[0]] = [yaml.safe_load(v) for v in item[1:]]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = run_sweep(args.notebook, grid, args.out, profile=args.profile, fixed=_parse_sets(args.fixed),
                          workers=args.workers, timeout=args.timeout)
    print(table.to_string(index=False))
    print(f"{len(table)} runs in {args.out}/ (one folder per parameter set); the table is {args.out}/sweep.csv")
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return 0


def _cmd_profiles(args) -> int:
    from agglib.profiles import available_profiles, load_profile

    if getattr(args, "action", None) == "write":
        return _cmd_profiles_write(args)
    for name in available_profiles():
        p = load_profile(name)
        print(f"{name}: {p.description}")
        for k, v in p.to_dict().items():
            if k == "particles":
                print(f"    particles = {p.particles.describe()}")
            elif k not in ("name", "description", "source"):
                print(f"    {k} = {v}")
    return 0


def _cmd_profiles_write(args) -> int:
    from agglib.fit.sample_profile import write_profile
    from agglib.profiles import load_profile

    import re

    counts = args.n_particles
    if counts is not None and not Path(counts).exists():
        found = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", counts)
        if not found:
            raise ValueError(f"--n-particles {counts!r}: neither a CSV file (with an n_particles column) nor a range "
                             "LOW-HIGH, e.g. 20-80")
        counts = (int(found[1]), int(found[2]))
    path = write_profile(args.out, args.images, args.radii, n_particles=counts, pixel_size_nm=args.pixel_size,
                         dose_e_per_A2=args.dose, base=args.base, image_size_px=args.image_size_px,
                         overwrite=args.overwrite)
    print(f"wrote {path}: {load_profile(path)!r}")
    print(f"next: agglib train-estimator --profile {path}   (then agglib fit <images> --models <the folder it names>)")
    return 0


_OVERWRITE_HELP = "replace the files agglib wrote in an existing output folder (never anything else)"
_SEED_HELP = "root seed of every random draw (same seed, same output; None: fresh entropy)"


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``agglib fit: error: … (agglib fit --help)``), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default once: not for required options or flags, nor where the help
    already explains it (``(default:`` or ``None:`` in the text)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.required or isinstance(action.default, bool) or action.default in (None, argparse.SUPPRESS, [])
                or "(default:" in text or "None:" in text or not action.option_strings):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from agglib.stem.acquisition import AcquisitionRanges

    trained = AcquisitionRanges()                  # the ranges of a randomised acquisition (the default estimator's)
    ap = _Parser(prog="agglib", description=agglib.__doc__.splitlines()[0])
    ap.add_argument("--version", action="version", version=f"agglib {agglib.__version__}")
    commands = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    class _Sub:                                     # every subcommand with the same help formatter
        def __init__(self, parent):
            self.parent = parent

        def add_parser(self, name, **kw):
            kw.setdefault("description", kw.get("help"))
            return self.parent.add_parser(name, formatter_class=_HelpFormatter, **kw)

    sub = _Sub(commands)

    g = sub.add_parser("generate", help="draw aggregates from θ and save them as .npz files")
    g.add_argument("--df", type=float, required=True, help="θ_Df, fractal dimension [-], in (1, 3)")
    g.add_argument("--rho", type=float, required=True, help="θ_ρ, fraction of WO3 particles [-], in [0, 1]")
    g.add_argument("--theta0", type=float, required=True, help="θ0, WO3 primary-cluster size [particles], >= 1")
    g.add_argument("--theta1", type=float, required=True, help="θ1, TiO2 primary-cluster size [particles], >= 1")
    g.add_argument("--count", type=int, default=1, help="number of aggregates (at least 1)")
    g.add_argument("--n-particles", type=int, default=None,
                   help="particles N per aggregate (None: uniform on 20..80 per aggregate)")
    g.add_argument("--cluster-sizes", choices=["fixed", "poisson"], default="fixed",
                   help="primary-cluster sizes: θ0/θ1 particles each, or Poisson around them")
    g.add_argument("--seed", type=int, default=None, help=_SEED_HELP)
    g.add_argument("--workers", type=int, default=None,
                   help="processes (None: agglib.config['workers'], else all cores)")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    g.set_defaults(func=_cmd_generate)

    d = sub.add_parser("describe", help="descriptors of saved aggregates, as CSV on stdout (D_f(A), ρ(A), "
                                        "cluster sizes, coordination numbers, N, R_g [nm])")
    d.add_argument("paths", nargs="+", help="aggregate .npz files written by `agglib generate`")
    d.set_defaults(func=_cmd_describe)

    r = sub.add_parser("render", help="virtual HAADF-STEM images of saved aggregates (.npy, counts)")
    r.add_argument("paths", nargs="+", help="aggregate .npz files")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--seed", type=int, default=None, help=_SEED_HELP)
    defaults = agglib.StemSettings()
    r.add_argument("--image-size", type=int, default=defaults.image_size_px, help="image side [px]")
    r.add_argument("--pixel-size", type=float, default=defaults.pixel_size_nm, help="pixel size [nm]")
    r.add_argument("--dose", type=float, default=defaults.dose_e_per_A2, help="dose [e/Å²]")
    r.add_argument("--scan-noise", type=float, default=defaults.scan_noise_nm,
                   help="per-line beam displacement SD [nm]")
    r.add_argument("--semiangle", type=float, default=defaults.semiangle_mrad,
                   help="probe semi-convergence angle [mrad]")
    r.add_argument("--no-noise", action="store_true", help="expected counts, no scan/shot noise")
    r.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    r.set_defaults(func=_cmd_render)

    h = sub.add_parser("haadf-table", help="(re)compute the HAADF reference table with abTEM "
                                           "(resumable; needs agglib[multislice])")
    h.add_argument("--out", required=True,
                   help="table JSON to write (resumable: finished curves are kept in <out>.parts/); render "
                        "with it through $AGGLIB_HAADF_TABLE or render_stem(table=)")
    h.add_argument("--phases", nargs="+", default=None, help="phase names (default: all four)")
    h.add_argument("--thickness", type=float, default=60.0, help="largest thickness [nm]")
    h.add_argument("--positions", type=int, default=4, help="probe positions off zone axes")
    h.add_argument("--zone-axis-positions", type=int, default=25, help="probe positions on zone axes")
    h.add_argument("--phonons", type=int, default=1, help="frozen-phonon configurations")
    h.add_argument("--box", type=float, default=20.0, help="lateral crystal block size [Å]")
    h.add_argument("--workers", type=int, default=2, help="curves computed in parallel")
    h.set_defaults(func=_cmd_haadf_table)

    ds = sub.add_parser("dataset", help="build or inspect a dataset store (Zarr)")
    ds_sub = _Sub(ds.add_subparsers(dest="dataset_command", required=True, parser_class=_Parser))
    b = ds_sub.add_parser("build", help="build (or resume) the dataset of a profile with Dask")
    b.add_argument("--profile", default=None,
                   help="tiny, quick, paper, bremen2023 or a profile file (*.yaml, `agglib profiles write`) "
                        "(None: agglib.config['profile'], quick unless you changed it)")
    b.add_argument("--out", required=True, help="store directory, e.g. data/quick.zarr")
    b.add_argument("--seed", type=int, default=0, help="root seed (same seed, same store)")
    b.add_argument("--workers", type=int, default=None, help="local Dask worker processes (None: all cores)")
    b.add_argument("--scheduler", default=None, help="address of a running Dask scheduler, tcp://host:8786 "
                                                     "(None: a local cluster of --workers processes)")
    b.add_argument("--shard-size", type=int, default=None, help="samples per task (None: the profile's shard_size)")
    b.add_argument("--design", choices=["grid", "continuous"], default="grid",
                   help="the paper's grid of configurations, or θ drawn continuously (the new method's "
                        "posterior trains on those) (default: grid)")
    b.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a profile field, e.g. --set samples_per_config=40 (repeatable)")
    b.set_defaults(func=_cmd_dataset_build)
    i = ds_sub.add_parser("info", help="summary and provenance of a store")
    i.add_argument("path", help="a store folder (.zarr)")
    i.set_defaults(func=_cmd_dataset_info)

    t = sub.add_parser("train", help="train (or resume) one estimator network on a dataset store; "
                                     "for several GPUs launch with torchrun --nproc_per_node=K")
    t.add_argument("--store", required=True, help="dataset store built by `agglib dataset build`")
    t.add_argument("--target", required=True, choices=["df", "rho_reg", "rho_class", "theta0", "theta1"],
                   help="what the network estimates (paper §2.3: per-image D_f(A), ρ(A) as regression or class, "
                        "θ0 or θ1 from groups of --nu images)")
    t.add_argument("--out", required=True, help="checkpoint directory (resumed if it holds last.pt)")
    t.add_argument("--arch", default="compact", choices=["compact", "paper", "resnet18", "inception"],
                   help="network: the paper's architecture, a compact one for CPUs, or a torchvision-style baseline")
    t.add_argument("--epochs", type=int, default=10, help="passes over the training split")
    t.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (peak rate for onecycle)")
    t.add_argument("--schedule", choices=["constant", "onecycle"], default="constant",
                   help="learning-rate schedule (paper: constant)")
    t.add_argument("--repeats", type=int, default=1,
                   help="regroupings of each configuration per epoch (theta0, theta1)")
    t.add_argument("--init-features", default=None,
                   help="checkpoint whose feature extractor f initialises this network (None: random)")
    t.add_argument("--nu", type=int, default=12, help="images per group (theta0, theta1)")
    t.add_argument("--batch", type=int, default=None,
                   help="images per step (groups for theta0/theta1) (None: 16 images, 8 groups)")
    t.add_argument("--seed", type=int, default=0, help="seed of training (same seed, same weights)")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    t.add_argument("--num-workers", type=int, default=None,
                   help="DataLoader workers for a split that does not fit on the device "
                        "(None: 0 on a CPU, one per core up to 8 on a GPU)")
    t.add_argument("--bf16", action="store_true", help="bfloat16 autocast (faster on GPUs and AVX-512 CPUs)")
    t.add_argument("--val-share", type=float, default=1 / 6,
                   help="share of T's configurations held out (all their samples) as the validation split V that "
                        "picks best.pt; the network trains on the rest; E is only scored after the last epoch "
                        "(default: 1/6)")
    t.add_argument("--val-images", type=int, default=None,
                   help="validate on this many samples (groups) of V per epoch, all of V after the last (None: all)")
    t.add_argument("--bn-batches", type=int, default=0,
                   help="recompute the BatchNorm statistics over this many batches of T without V before each "
                        "validation (0: the running averages of training, as the paper)")
    t.add_argument("--checkpoint-every", type=int, default=None, metavar="STEPS",
                   help="also write last.pt every STEPS steps within an epoch (None: once per epoch)")
    t.add_argument("--time-budget-s", type=float, default=None,
                   help="stop after the epoch during which this many seconds passed (None: no limit)")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("train-estimator", help="train (or resume) the new method for a profile: the image encoder "
                                               "and the set-level posterior over θ (builds its datasets if missing; under "
                                               "torchrun build them first)")
    e.add_argument("--profile", default="quick", help="tiny, quick, paper, bremen2023 or a profile file (*.yaml, "
                                                      "`agglib profiles write`)")
    e.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a profile field (repeatable)")
    e.add_argument("--seed", type=int, default=0, help="seed of the datasets and of training")
    e.add_argument("--store", default=None, help="grid dataset store (None: <data>/datasets/<tag>-seed<seed>.zarr; "
                        "<data>: $AGGLIB_DATA_DIR, a checkout's data/ or the user data folder; <tag>: the "
                        "profile, with a digest of the --set changes to its datasets)")
    e.add_argument("--continuous-store", default=None, action="append",
                   help="continuous dataset store, once per posterior_datasets of the profile (None: "
                        "<data>/datasets/<tag>-seed<seed + k>-continuous.zarr, k = 0, 1, …)")
    e.add_argument("--encoder", default=None,
                   help="a trained encoder.pt to train only the posterior on (None: train the encoder too; the grid "
                        "dataset is then not built)")
    e.add_argument("--run-dir", default=None,
                   help="training folder (None: <data>/runs/<tag>-seed<seed>; <tag>: the profile, with a digest of "
                        "the --set changes)")
    e.add_argument("--out", default=None, help="also write encoder.pt and posterior.pt here (None: they stay in "
                                               "<run-dir>/sets/)")
    e.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    e.add_argument("--workers", type=int, default=None, help="dataset build processes (None: all cores)")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    e.set_defaults(func=_cmd_estimator)

    f = sub.add_parser("fit", help="estimate θ from measured images of one sample; export digital shadows")
    f.add_argument("paths", nargs="+", help="image files or folders (TIFF, DM3/DM4, EMD, SER, MRC, ...)")
    f.add_argument("--pixel-size", type=float, default=None,
                   help="pixel size [nm] of the images, overriding the files' own (None: each file's own); at "
                        "most twice the estimator's (6.8 nm for the shipped default's 3.4 nm)")
    f.add_argument("--units", choices=["counts", "fraction"], default="counts",
                   help="intensity units of the images: 'counts', detector counts [electrons] at --dose; "
                        "'fraction', detector-normalised fraction of the incident beam (vacuum 0, beam 1; "
                        "LeBeau & Stemmer 2008). A sample whose intensity scale is far from the training "
                        "images' is refused")
    f.add_argument("--dose", type=float, default=None, help="electron dose of images in counts [e/Å²], with --units "
                                                            "counts (None: the estimator's training dose; 149 for "
                                                            "the shipped ones)")
    f.add_argument("--intensity-scale", type=float, default=None,
                   help="your microscope's HAADF signal ÷ the simulator's for the same particles, where you know it "
                        "(notebook 2 measures 0.72 against published particles), with --wo3-contrast; the default "
                        "estimator then reads it, its intervals calibrated for a known acquisition (None: unknown; "
                        "the default estimator's training range is "
                        f"{trained.intensity_scale[0]:g}-{trained.intensity_scale[1]:g})")
    f.add_argument("--wo3-contrast", type=float, default=None,
                   help="your WO3/TiO2 signal ratio ÷ the simulator's, with --intensity-scale (notebook 2 measures "
                        f"0.69; None: unknown; the default estimator's training range is {trained.wo3_contrast[0]:g}-"
                        f"{trained.wo3_contrast[1]:g})")
    f.add_argument("--skip-intensity-check", action="store_true",
                   help="estimate even when the intensity scale is far from the training images' (warns)")
    f.add_argument("--calibration", default=None,
                   help="a calibration of the estimator for how these images were recorded, written by agglib "
                        "calibrate (None: the estimator's own, on average over its training acquisitions)")
    f.add_argument("--models", default=None, help="folder of a trained estimator: encoder.pt + posterior.pt "
                                                  "(new method) or the five networks of the paper method "
                                                  "(default: the shipped new-method estimator trained on a randomised acquisition, "
                                                  "agglib/data/models/sets-quick-robust, 435 nm fields of view; for "
                                                  "images of 80-435 nm, sets-bremen2023, and fit says so)")
    f.add_argument("--out", required=True, help="output folder for the shadows and summary.json (new, empty, "
                                                "or one agglib wrote)")
    f.add_argument("--shadows", type=int, default=200, help="digital shadows to draw (at least 1)")
    f.add_argument("--bootstrap", type=int, default=200,
                   help="bootstrap resamples of the images (at least 10; the intervals of the paper method — "
                        "the default estimator's come from its posterior)")
    f.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the shadows")
    f.add_argument("--skip-bad", action="store_true",
                   help="leave out images that cannot be used (unreadable, too small) with a warning naming "
                        "each, instead of stopping at the first")
    f.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    f.set_defaults(func=_cmd_fit)

    c = sub.add_parser("calibrate", help="calibrate an estimator's intervals for how your images were recorded "
                                         "(simulates samples with that acquisition; for agglib fit --calibration)")
    c.add_argument("--models", default=None, help="folder of a new-method estimator (encoder.pt + posterior.pt; "
                                                  "None: the shipped default, sets-quick-robust)")
    c.add_argument("--intensity-scale", type=float, default=None,
                   help="HAADF signal ÷ the simulator's (notebook 2 measures 0.72; None: unknown, drawn from the "
                        f"estimator's training range, {trained.intensity_scale[0]:g}-{trained.intensity_scale[1]:g} "
                        "for the default)")
    c.add_argument("--wo3-contrast", type=float, default=None,
                   help="WO3/TiO2 signal ratio ÷ the simulator's (notebook 2: 0.69; None: unknown; the default's "
                        f"training range {trained.wo3_contrast[0]:g}-{trained.wo3_contrast[1]:g}). With "
                        "--intensity-scale, fit may also be told both (the calibration covers both uses)")
    c.add_argument("--dose", type=float, default=None, help="electron dose [e/Å²] (None: unknown)")
    c.add_argument("--offset", type=float, default=None,
                   help="vacuum level left after normalisation [fraction of the beam] (None: unknown)")
    c.add_argument("--extra-blur", type=float, default=None,
                   help="σ of the blur beyond the simulator's probe [nm] (0: none; None: unknown)")
    c.add_argument("--pixel-size", type=float, default=None,
                   help="pixel size the images were recorded at [nm], at most twice the estimator's (fit resamples "
                        "them to it; None: unknown)")
    c.add_argument("--configs", type=int, default=400, help="simulated samples (at least 20)")
    c.add_argument("--images", type=int, default=24, help="images per simulated sample (1-24)")
    c.add_argument("--seed", type=int, default=0, help="seed of the simulated samples")
    c.add_argument("--workers", type=int, default=None, help="processes (None: all cores)")
    c.add_argument("--out", required=True, help="calibration file to write (JSON)")
    c.add_argument("--overwrite", action="store_true", help="replace --out if agglib calibrate wrote it")
    c.set_defaults(func=_cmd_calibrate)

    s = sub.add_parser("sweep", help="run a notebook with papermill over a grid of parameters, in parallel, "
                                     "one folder per parameter set; collect what it records into one table")
    s.add_argument("notebook", help="notebook path or name in notebooks/, e.g. 10_fit_your_images or 10")
    s.add_argument("-p", "--parameter", nargs="+", action="append", required=True, metavar=("NAME", "VALUE"),
                   help="a parameter and its values, e.g. -p dose_e_per_A2 40 149 600 (repeatable: the grid is "
                        "every combination; values are read as YAML, so lists work: -p true_theta "
                        "'[1.8, 0.6, 2, 3]' '[2.2, 0.3, 1, 4]')")
    s.add_argument("-f", "--fixed", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter set the same in every run (repeatable), e.g. -f robustness=false")
    s.add_argument("--profile", default="tiny", help="run-size profile of the notebooks")
    s.add_argument("--out", required=True, help="sweep folder (resumable: finished runs are skipped)")
    s.add_argument("--workers", type=int, default=2, help="notebooks executed at once")
    s.add_argument("--timeout", type=int, default=None, help="per-cell timeout [s] (None: no limit)")
    s.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("profiles", help="list the shipped profiles; `agglib profiles write` writes one for your "
                                        "images and particles")
    p.set_defaults(func=_cmd_profiles)
    p_sub = p.add_subparsers(dest="action", parser_class=_Parser)
    w = p_sub.add_parser("write", formatter_class=_HelpFormatter,
                         help="write a profile file from your images (field of view, pixel size) and measured radii",
                         description="Write a profile file for your microscope and your particles: the field of "
                                     "view of the smallest image, measured radii per material (CSV with columns "
                                     "material,radius_nm), optionally measured particles per aggregate (CSV with a "
                                     "column n_particles). Example: agglib profiles write my_sample.yaml --images "
                                     "images/ --radii radii.csv --n-particles counts.csv --pixel-size 0.1")
    w.add_argument("out", help="the profile file to write (*.yaml)")
    w.add_argument("--images", nargs="+", required=True, help="your image files or folders of them")
    w.add_argument("--radii", required=True, help="CSV of measured radii [nm]: columns radius_nm (or diameter_nm) "
                                                  "and material (WO3/TiO2; without it, one list for both)")
    w.add_argument("--n-particles", default=None, help="CSV with a column n_particles (measured particles per "
                                                       "aggregate) or a range LOW-HIGH (None: the paper's 20-80)")
    w.add_argument("--pixel-size", type=float, default=None,
                   help="pixel size [nm] of the images, overriding the files' own as in agglib fit (None: each "
                        "file's own; required for files without one, e.g. PNG)")
    w.add_argument("--dose", type=float, default=149.0, help="electron dose of your images [e/Å²]")
    w.add_argument("--base", default="quick", help="shipped profile whose run sizes the file keeps")
    w.add_argument("--image-size-px", type=int, default=None,
                   help="side of the estimator's images [px] (None: the base profile's, 128 for quick)")
    w.add_argument("--overwrite", action="store_true", help="replace a profile file agglib wrote")
    w.set_defaults(func=_cmd_profiles)
    return ap


def _show_warning(message, category, filename, lineno, file=None, line=None, *, others):
    """agglib's own warnings as ``agglib: warning: …`` lines on stderr (not Python's source-line format);
    others by ``others`` (the ``warnings.showwarning`` in place before)."""
    if Path(filename).resolve().is_relative_to(Path(agglib.__file__).resolve().parent):
        print(f"agglib: warning: {message}", file=sys.stderr if file is None else file)
    else:
        others(message, category, filename, lineno, file, line)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    command = " ".join(v for v in (args.command, getattr(args, "dataset_command", None)) if isinstance(v, str))
    with warnings.catch_warnings():
        warnings.showwarning = functools.partial(_show_warning, others=warnings.showwarning)
        try:
            return args.func(args)
        except (ValueError, FileNotFoundError, FileExistsError, agglib.AggregationError) as err:
            print(f"agglib {command}: error: {err}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())

"""`unet-ssl`: one subcommand per pipeline stage, plus data management and folder evaluation."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from unet_ssl.config import ParamsError, load_params
from unet_ssl.paths import PETS, RAW

FOLDER_BATCH_SIZE = 16  # `evaluate --checkpoint` images per forward pass unless --batch-size says otherwise

# Enumerated comma lists of `unet-ssl bench` (= unet_ssl.experiments.bench.workloads.WORKLOADS),
# named here so --help needs no torch.
BENCH_WORKLOADS = ("simclr", "mae", "finetune", "evaluate")
BENCH_PRECISIONS = ("fp32", "bf16")
TTA_MODES = ("none", "flip", "flip_scales")  # = unet_ssl.core.inference.TTA_MODES
TTA_HELP = ("test-time augmentation: average the logits over the mirror image (flip) and also 1.25x the side "
            "(flip_scales); `unet-ssl tta` measures each on validation (default none)")
PIPELINE_STAGES = ("prepare-pets", "prepare-pretrain", "validate", "pretrain", "finetune", "evaluate", "report")


def _stage(module: str, func: str = "run"):
    def call(args: argparse.Namespace) -> None:
        import importlib

        getattr(importlib.import_module(f"unet_ssl.stages.{module}"), func)(load_params(args.params))
    return call


def _data_import(args: argparse.Namespace) -> None:
    from unet_ssl.data import sources

    sources.copy_tree(Path(args.path))
    if not args.no_dvc:
        sources.dvc_add()
    print(f"imported {args.path} into {RAW}; commit data.dvc to version it")


def _data_sample(args: argparse.Namespace) -> None:
    from unet_ssl.data import sources

    copied = sources.use_sample(force=args.force)
    if not args.no_dvc:
        sources.dvc_add()
    print(f"{'copied the embedded sample to' if copied else 'kept the existing'} {RAW}")


def _data_download(args: argparse.Namespace) -> None:
    from unet_ssl.data import sources

    sources.download_pets()
    if not args.no_dvc:
        sources.dvc_add()
    print(f"Oxford-IIIT Pet is in {RAW}; commit data.dvc to version it")


def _evaluate(args: argparse.Namespace) -> None:
    """The test split (--batch-size overrides evaluate.batch_size), or folders with --checkpoint."""
    from unet_ssl.stages import evaluate

    if args.checkpoint is None:
        params = load_params(args.params)
        if args.batch_size is not None:
            params["evaluate"]["batch_size"] = args.batch_size
        return evaluate.run(params)
    missing = [n for n in ("images", "trimaps", "out") if getattr(args, n) is None]
    if missing:
        raise SystemExit(f"unet-ssl evaluate --checkpoint also needs {', '.join('--' + m for m in missing)}")
    evaluate.evaluate_folder(Path(args.checkpoint), Path(args.images), Path(args.trimaps), Path(args.out),
                             args.batch_size or FOLDER_BATCH_SIZE, tta=args.tta)


def _predict(args: argparse.Namespace) -> None:
    from unet_ssl.stages.evaluate import predict_photos

    predict_photos(args.checkpoint, [Path(p) for p in args.paths], Path(args.out), args.batch_size, args.on_bad_input,
                   args.tta)


def _tta(args: argparse.Namespace) -> None:
    from unet_ssl.experiments import tta

    tta.run(Path(args.checkpoint), Path(args.pets), Path(args.out))


def _tune(args: argparse.Namespace) -> None:
    from unet_ssl.stages.tune import compare, run

    params = load_params(args.params)
    overrides = {"seed": args.seed, "study_name": args.study_name, "storage": args.storage}
    params["tune"] |= {k: v for k, v in overrides.items() if v is not None}
    if args.compare:
        compare(params, args.compare)
    else:
        run(params, n_trials=args.n_trials, timeout=args.timeout)


def _bench(args: argparse.Namespace) -> None:
    from unet_ssl.experiments.bench.run import BenchRequest, run
    from unet_ssl.experiments.bench.workloads import BenchConfig

    params = load_params(args.params)
    config = BenchConfig(
        workloads=args.workloads, precisions=args.precisions,
        channels_last=tuple(v == "on" for v in args.channels_last), simclr_batch=args.simclr_batch,
        batch=args.batch, seconds=args.seconds, min_steps=args.min_steps, naive=not args.no_naive,
        compile=args.compile, device=args.device, threads=args.threads)
    request = BenchRequest(
        config=config, throughput=not args.no_throughput,
        numerics_seeds=list(args.numerics_seeds) if args.numerics else [],
        numerics_epochs=args.numerics_epochs or params["finetune"]["epochs"], numerics_stage=args.numerics_stage,
        stages=list(args.stages), stage_timeout=args.stage_timeout, label=args.label,
        out=Path(args.out) if args.out else None)
    run(request, params, args.params)


def _grid(args: argparse.Namespace) -> None:
    from unet_ssl.stages import grid, tables

    if args.action == "use":
        grid.use(Path(args.profile))
    elif args.action == "plan":
        grid.plan()
    elif args.action == "prepare":
        grid.prepare()
    elif args.action == "pretrain":
        grid.pretrain(args.key)
    elif args.action == "finetune":
        grid.finetune(args.key)
    elif args.action == "resolution":
        tables.resolution_study()
    else:
        tables.table(args.table)


def _release(args: argparse.Namespace) -> None:
    from unet_ssl.experiments import release

    release.run(load_params(args.params), Path(args.out), include_grid=args.from_grid)


def _comma_list(allowed: tuple[str, ...], aliases: dict[str, tuple[str, ...]] | None = None, empty: bool = False):
    """argparse type: 'a,b' -> ('a', 'b'), each one of `allowed` (or an alias standing for several)."""
    def parse(text: str) -> tuple[str, ...]:
        values = [v for x in text.split(",") if x.strip() for v in (aliases or {}).get(x.strip(), (x.strip(),))]
        unknown = [v for v in values if v not in allowed]
        if unknown or not (values or empty):
            alias_text = "".join(f"; {alias} = {','.join(meant)}" for alias, meant in (aliases or {}).items())
            names = ", ".join(allowed) + alias_text
            problem = "unknown " + ", ".join(map(repr, unknown)) if unknown else "empty list"
            raise argparse.ArgumentTypeError(f"{problem}; give a comma-separated list of {names}")
        return tuple(dict.fromkeys(values))
    return parse


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values:
        raise argparse.ArgumentTypeError("empty list; give comma-separated integers, e.g. 0,1,2")
    return values


def _at_least(low: float, kind: type = int):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low:g}, got {text}")
        return value
    return parse


def _params_after_command(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`--params` also after the subcommand (`unet-ssl finetune --params x.yaml`), for every subcommand
    that reads it (not `data`, not `grid`, which reads grid/params.json)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        has_subcommands = any(isinstance(a, argparse._SubParsersAction) for a in command._actions)
        if not has_subcommands and "--params" not in command._option_string_actions:
            command.add_argument("--params", default=argparse.SUPPRESS,
                                 help="params file (default: params.yaml); also accepted before the command")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unet-ssl", description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="bring data into data/raw and version it with DVC").add_subparsers(
        dest="action", required=True)
    p = data.add_parser("import", help="copy a folder in the shared layout (oxford-iiit-pet/, pretrain/) into data/raw")
    p.add_argument("path")
    p.add_argument("--no-dvc", action="store_true", help="do not run `dvc add`")
    p.set_defaults(func=_data_import)
    p = data.add_parser("sample", help="put the embedded real sample in data/raw (if empty)")
    p.add_argument("--force", action="store_true", help="replace data/raw even if it exists")
    p.add_argument("--no-dvc", action="store_true")
    p.set_defaults(func=_data_sample)
    p = data.add_parser("download", help="fetch Oxford-IIIT Pet with torchvision (needs the internet)")
    p.add_argument("--no-dvc", action="store_true")
    p.set_defaults(func=_data_download)

    stages = {
        "prepare-pets": ("prepare", "run_pets", "decode, resize and split the pets into data/prepared/pets"),
        "prepare-pretrain": ("prepare", "run_pretrain", "decode the pretraining shards into data/prepared/pretrain"),
        "validate": ("validate", "run", "great-expectations checks of the prepared data"),
        "pretrain": ("pretrain", "run", "self-supervised pretraining (pretrain.method)"),
        "finetune": ("finetune", "run", "Dice-loss fine-tuning on the pets"),
        "report": ("report", "run", "markdown report with figures in reports/"),
    }
    for name, (module, func, help_) in stages.items():
        sub.add_parser(name, help=help_).set_defaults(func=_stage(module, func))

    p = sub.add_parser("tune", help="Optuna study of tune.space (resumable; report in reports/tuning.md)")
    p.add_argument("--n-trials", type=_at_least(0),
                   help="trials to add (default tune.n_trials; 0 = only regenerate the report)")
    p.add_argument("--timeout", type=_at_least(0, float), help="stop starting new trials after this many seconds")
    p.add_argument("--seed", type=_at_least(0),
                   help="sampler seed (default tune.seed); give each parallel process its own")
    p.add_argument("--study-name", help="default tune.study_name")
    p.add_argument("--storage", help="journal file of the study (default tune.storage)")
    p.add_argument("--compare", nargs="+", metavar="EXP",
                   help="instead of trials: test scores of these DVC experiments "
                        "(pipeline runs of the tuned and baseline values) -> reports/tuning_test.md")
    p.set_defaults(func=_tune)

    p = sub.add_parser("bench", help="images/s of each workload: tensor data path vs compute vs naive PIL pipeline; "
                                     "optional bf16 numerics and per-stage peak memory")
    p.add_argument("--out", help="markdown report to write (its other sections are kept), e.g. reports/performance.md")
    p.add_argument("--workloads", type=_comma_list(BENCH_WORKLOADS), default=",".join(BENCH_WORKLOADS),
                   help=f"comma-separated, of {', '.join(BENCH_WORKLOADS)} (default all)")
    p.add_argument("--precisions", type=_comma_list(BENCH_PRECISIONS), default="fp32,bf16",
                   help="fp32, bf16 or fp32,bf16 (default fp32,bf16)")
    p.add_argument("--channels-last", type=_comma_list(("off", "on"), {"both": ("off", "on")}), default="off,on",
                   help="off, on, or both (= off,on, the default)")
    p.add_argument("--simclr-batch", type=_at_least(1), default=32, help="images per SimCLR step at 64 px (default 32)")
    p.add_argument("--batch", type=_at_least(1), default=8, help="images per step at 128 px (default 8)")
    p.add_argument("--seconds", type=_at_least(0, float), default=1.0,
                   help="least timed seconds per figure (default 1)")
    p.add_argument("--min-steps", type=_at_least(1), default=2, help="least timed steps per figure (default 2)")
    p.add_argument("--no-naive", action="store_true", help="skip the PIL + torchvision DataLoader baseline")
    p.add_argument("--compile", action="store_true", help="also time the compute step under torch.compile")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=_at_least(0), default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--no-throughput", action="store_true", help="only the sections asked for below")
    p.add_argument("--numerics", action="store_true",
                   help="fine-tune in fp32 and bf16 with the same seeds; compare scores")
    p.add_argument("--numerics-seeds", type=_int_list, default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--numerics-epochs", type=_at_least(0), default=0, help="default finetune.epochs")
    p.add_argument("--numerics-stage", choices=("finetune", "pretrain"), default="finetune",
                   help="whose precision differs: fine-tuning from scratch (default), or the pretraining "
                        "(then the same fine-tuning from each checkpoint)")
    p.add_argument("--stages", type=_comma_list(PIPELINE_STAGES, empty=True), default="",
                   help=f"comma-separated pipeline stages ({', '.join(PIPELINE_STAGES)}) to run as subprocesses here, "
                        "measuring peak RSS (writes the stages' outputs: use a scratch clone)")
    p.add_argument("--stage-timeout", type=_at_least(0, float), default=0,
                   help="interrupt a stage after this many seconds (its peak comes with the first training steps)")
    p.add_argument("--label", default="", help="names the memory section (e.g. 'paper batch sizes')")
    p.set_defaults(func=_bench)

    grid_parser = sub.add_parser("grid",
                                 help="the paper's tables as a grid of runs (grid/dvc.yaml; reads grid/params.json)")
    grid_sub = grid_parser.add_subparsers(dest="action", required=True)
    p = grid_sub.add_parser("use", help="write grid/params.json (profile + run plan) from a grid profile")
    p.add_argument("profile", help="e.g. profiles/grid-cpu.yaml or profiles/grid-paper.yaml")
    grid_sub.add_parser("plan", help="check grid/params.json and count its runs")
    grid_sub.add_parser("prepare", help="the grid's pets and pretraining photos at the profile's sizes, validated")
    for action in ("pretrain", "finetune"):
        grid_sub.add_parser(action, help=f"one {action} run of the plan").add_argument(
            "key", help="its name in plan.{action}")
    grid_sub.add_parser("table", help="write reports/<table>.md and its figures from the runs").add_argument(
        "table", choices=["table1", "table2", "levers"])
    grid_sub.add_parser("resolution", help="score every 90%% run at grid.resolutions; reports/resolution.md")
    grid_parser.set_defaults(func=_grid)

    p = sub.add_parser("release", help="publish the fine-tuned model as <out>/pets-unet.pt with a model card")
    p.add_argument("--out", default="models", help="folder for pets-unet.pt and README.md (default: models)")
    p.add_argument("--from-grid", action="store_true",
                   help="also consider every grid run; the best validation Jaccard wins "
                        "(the test split chooses nothing)")
    p.set_defaults(func=_release)

    p = sub.add_parser("evaluate", help="test-split scores (pipeline stage), or score any folder with --checkpoint")
    p.add_argument("--checkpoint",
                   help="a fine-tuned checkpoint (.pt); with it, evaluate folders instead of the test split")
    p.add_argument("--images", help="folder of images")
    p.add_argument("--trimaps", help="folder of trimaps with official values 1/2/3, matched to images by file stem")
    p.add_argument("--out", help="JSON file for the scores")
    p.add_argument("--batch-size", type=_at_least(1), help="images per forward pass (default: evaluate.batch_size "
                   f"for the test split, {FOLDER_BATCH_SIZE} for folders); scores do not depend on it")
    p.add_argument("--tta", choices=TTA_MODES, default="none", help=TTA_HELP)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("predict", help="mask (trimap values 1 pet, 2 background, 3 border) and overlay for each photo, "
                                       "at the photo's own size")
    p.add_argument("paths", nargs="+", metavar="PATH", help="photo files, or folders of photos")
    p.add_argument("--checkpoint", required=True,
                   help="a fine-tuned checkpoint (.pt) or an MLflow model URI (runs:/..., models:/pets-unet@champion)")
    p.add_argument("--out", required=True, help="folder for <stem>.png masks and <stem>_overlay.jpg overlays")
    p.add_argument("--batch-size", type=_at_least(1), default=16, help="photos per forward pass (default 16)")
    p.add_argument("--on-bad-input", choices=("error", "skip"), default="error",
                   help="error: write nothing and name every unusable photo; skip: write the others and list them")
    p.add_argument("--tta", choices=TTA_MODES, default="none", help=TTA_HELP)
    p.set_defaults(func=_predict)

    p = sub.add_parser("tta", help="score a fine-tuned model with each test-time augmentation on the validation "
                                   "and test pets; the best on validation is chosen (report: --out)")
    p.add_argument("--checkpoint", default="models/pets-unet.pt", help="fine-tuned checkpoint (default: the released)")
    p.add_argument("--pets", default=str(PETS),
                   help="prepared pets at the model's resolution (default: the main pipeline's)")
    p.add_argument("--out", default="reports/tta.md", help="markdown report (default: reports/tta.md)")
    p.set_defaults(func=_tta)
    return _params_after_command(parser)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "great_expectations", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        from unet_ssl.data.images import BadInputError

        if isinstance(e, (BadInputError, FileNotFoundError, ParamsError)) or type(e).__name__ in (
                "DataValidationError", "NonFiniteLossError", "CheckpointError", "ReleaseError", "GridPlanError",
                "ComparisonError"):
            print(f"unet-ssl {args.command}: error: {e}", file=sys.stderr)
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()

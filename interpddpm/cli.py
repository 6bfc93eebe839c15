"""The ``interpddpm`` command line (also ``python -m interpddpm.cli``).

Each subcommand is registered by one ``_add_<name>`` function listed in :data:`SUBCOMMANDS`;
it builds its parser and sets ``func``, the handler that receives the parsed arguments and
returns the exit status. To add a subcommand (``train``, ...), write such a function and append
it to :data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def _book(args: argparse.Namespace) -> int:
    """Execute the notebooks (unless ``--no-execute``), then build the book."""
    from . import book

    root = book.find_root(args.root) if args.root else book.find_root()
    out = args.out or root
    try:
        if not args.no_execute:
            book.execute(args.profile, args.notebooks, force=args.force, root=root, out=out)
        if not args.no_build:
            book.build(root=root, out=out)
    except (book.NotebookExecutionError, book.BookBuildError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _add_book(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "book",
        help="execute the notebooks with papermill and build the book",
        description="Execute the notebooks of _toc.yml into _build/staged (skipping those "
        "whose notebook, parameters and library code did not change), then build the book "
        "with jupyter-book -W into _build/html.",
    )
    parser.add_argument(
        "--profile",
        default="auto",
        help="smoke, cpu, gpu, paper or auto (default; INTERPDDPM_PROFILE overrides auto)",
    )
    parser.add_argument(
        "--notebooks",
        nargs="+",
        metavar="NAME",
        help="execute only these notebooks (e.g. 01_shapley_values); default: all",
    )
    parser.add_argument("--force", action="store_true", help="execute even if unchanged")
    parser.add_argument("--no-execute", action="store_true", help="only build the book")
    parser.add_argument("--no-build", action="store_true", help="only execute the notebooks")
    parser.add_argument("--root", type=Path, help="the repository (default: found from cwd)")
    parser.add_argument(
        "--out", type=Path, help="the folder that receives _build/ (default: the repository)"
    )
    parser.set_defaults(func=_book)


def _parse_value(text: str):
    """A ``--set`` value: YAML scalars and lists (``true``, ``2e-4``, ``[eyes, nose]``)."""
    import yaml

    return yaml.safe_load(text)


def _train(args: argparse.Namespace) -> int:
    """Train or fine-tune from a config file and/or ``--set key=value`` overrides."""
    from .training import CheckpointError, ConfigError, TrainConfig, train

    try:
        data = TrainConfig.from_file(args.config).to_dict() if args.config else {}
        for item in args.set or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--set expects key=value, got {item!r}.")
            data[key.strip()] = _parse_value(value)
        config = TrainConfig.from_dict(data)
        result = train(config, stop_after=args.stop_after, progress=not args.quiet)
    except (ConfigError, CheckpointError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{result.output_dir}: step {result.step} ({result.seconds:.0f} s this call)")
    return 0


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a DDPM or fine-tune it into an interpretable one",
        description="Train (or resume) the run in output_dir. Keys are those of "
        "interpddpm.training.TrainConfig; unknown keys are rejected. Use `accelerate launch "
        "-m interpddpm.cli train ...` for several GPUs.",
    )
    parser.add_argument("--config", type=Path, help="a YAML or JSON file of TrainConfig keys")
    parser.add_argument(
        "--set",
        nargs="+",
        metavar="KEY=VALUE",
        help="override keys, e.g. --set interpretable=true concepts=[nose] steps=500",
    )
    parser.add_argument("--stop-after", type=int, help="stop this call after N steps")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_train)


def _ablations(args: argparse.Namespace) -> int:
    """Run every ablation variant of chapter 12 and record the sweep."""
    from . import ablations

    out = ablations.record_sweep(args.profile, path=args.out, progress=not args.quiet)
    print(f"recorded {out}")
    return 0


def _add_ablations(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ablations",
        help="run chapter 12's ablation variants and record the sweep",
        description="Fine-tune (or load) every variant of interpddpm.ablations.VARIANTS, score "
        "locality and FID, and write book/data/ablations-<profile>.json (the record chapter 12 "
        "shows on the CPU). About 30 minutes on 2 cores for the cpu profile.",
    )
    parser.add_argument("--profile", default="auto", help="smoke, cpu, gpu, paper or auto")
    parser.add_argument("--out", type=Path, help="where to write the record (default: book/data)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_ablations)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_book,
    _add_train,
    _add_ablations,
]


def make_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="interpddpm",
        description="Interpretable diffusion models through game theory.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the chosen subcommand."""
    args = make_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

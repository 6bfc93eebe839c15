"""The ``interpddpm`` command line (also ``python -m interpddpm.cli``).

Each subcommand is registered by one ``_add_<name>`` function listed in :data:`SUBCOMMANDS`;
it builds its parser and sets ``func``, the handler that receives the parsed arguments and
returns the exit status. To add a subcommand (``train``, ...), write such a function and append
it to :data:`SUBCOMMANDS`.

Errors: a handler raises; :func:`main` turns every user error (a subclass of
:class:`interpddpm.errors.UserError`, the ``OSError`` of a path, or safetensors' error) into
one line ``error: ...`` on stderr and exit status 2. ``interpddpm --debug ...`` shows tracebacks
instead. Ctrl-C, SIGTERM and SIGHUP stop a command alike: one line, exit status 130, 143 or 129.

Serves every chapter: `interpddpm book`, `train`, `ablations`, `artifacts`, `hub`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
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
            book.build(root=root, out=out, edition=args.edition)
    except (
        book.NotebookExecutionError,
        book.BookBuildError,
        book.SolutionDependencyError,
        book.slides.SlidesError,
        FileNotFoundError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _add_book(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "book",
        help="execute the notebooks with papermill and build the book",
        description="Execute the notebooks of _toc.yml into _build/staged (skipping those "
        "whose notebook, parameters and library code did not change), then build the book "
        "with jupyter-book -W into _build/html (the teacher edition) or, with --edition "
        "student, without any solution into _build/student/html (and the chapters without "
        "solutions, to hand out, into _build/student/notebooks).",
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
    parser.add_argument(
        "--edition",
        choices=("teacher", "student"),
        default="teacher",
        help="teacher (default: solutions folded on the page) or student (no solution: "
        "_build/student/html and _build/student/notebooks)",
    )
    parser.add_argument("--no-execute", action="store_true", help="only build the book")
    parser.add_argument("--no-build", action="store_true", help="only execute the notebooks")
    parser.add_argument("--root", type=Path, help="the repository (default: found from cwd)")
    parser.add_argument(
        "--out", type=Path, help="the folder that receives _build/ (default: the repository)"
    )
    parser.set_defaults(func=_book)


def _parse_value(key: str, text: str):
    """A ``--set`` value: YAML scalars and lists (``true``, ``2e-4``, ``[eyes, nose]``)."""
    import yaml

    from .training import ConfigError

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(
            f"--set {key}={text}: the value is not a YAML scalar or list (e.g. 2e-4, true, "
            f"[eyes, nose]): {' '.join(str(err).split())}"
        ) from err


def _train(args: argparse.Namespace) -> int:
    """Train or fine-tune from a config file and/or ``--set key=value`` overrides."""
    from .training import ConfigError, TrainConfig, interruption_report, train

    if args.stop_after is not None and args.stop_after <= 0:
        raise ConfigError(
            f"--stop-after must be a positive number of steps, got {args.stop_after}."
        )
    data = TrainConfig.from_file(args.config).to_dict() if args.config else {}
    given: dict[str, str] = {}  # key -> the --set item that gave it
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}.")
        key = key.strip()
        if key in given:  # which one was meant? (the last one used to win silently)
            raise ConfigError(
                f"--set gives {key} twice ({given[key]!r} and {item!r}); give each key once."
            )
        given[key] = item
        data[key] = _parse_value(key, value)
    config = TrainConfig.from_dict(data)
    # (the trainer chooses its torch threads from the load: interpddpm.threads)
    try:
        if config.autoencoder is not None:  # a latent run: the trainer gets its codec
            from .latent import train
        result = train(config, stop_after=args.stop_after, progress=not args.quiet)
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM/SIGHUP (Terminated)
        if args.debug:
            raise
        print(interruption_report(interrupt, config), file=sys.stderr)
        return _interrupt_status(interrupt)
    if int(os.environ.get("RANK", "0")) == 0:  # one line per run, not one per process
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
        action="extend",  # --set a=1 --set b=2 keeps both
        metavar="KEY=VALUE",
        help="override keys, e.g. --set interpretable=true concepts=[nose] steps=500",
    )
    parser.add_argument("--stop-after", type=int, help="stop this call after N steps")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_train)


def _ablations(args: argparse.Namespace) -> int:
    """Run every ablation variant of chapter 12 and record the sweep."""
    from . import ablations

    out = ablations.record_sweep(
        args.profile, path=args.out, progress=not args.quiet, names=args.variants
    )
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
    parser.add_argument(
        "--out",
        type=Path,
        help="the record file, or a folder for ablations-<profile>.json (default: book/data); "
        "checked for writing before the sweep starts",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        metavar="NAME",
        help="measure only these variants now and keep the record's other rows that still "
        "match their recipes (variants missing from the record are measured too)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_ablations)


def _artifacts(args: argparse.Namespace) -> int:
    """Pack a profile's artifact cache into an archive, or unpack one."""
    from . import archive

    if args.action == "pack":
        out = archive.pack(args.profile, args.file)
        print(f"packed {out}; on another machine: interpddpm artifacts unpack {out.name}")
    else:
        if args.file is None:
            raise archive.ArchiveError("say which archive to unpack: artifacts unpack FILE")
        print(f"unpacked into {archive.unpack(args.file)}")
    return 0


def _add_artifacts(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "artifacts",
        help="share trained models: pack a profile's cache, or unpack an archive",
        description="pack: write the artifact cache of --profile (the newest verified "
        "checkpoint of every run, samples, tables) to FILE (default "
        "dist/interpddpm-artifacts-<profile>.tar.gz). unpack: extract FILE into the cache, "
        "so chapters load those models instead of training them; files that differ are never "
        "overwritten.",
    )
    parser.add_argument("action", choices=["pack", "unpack"])
    parser.add_argument("file", nargs="?", type=Path, help="the archive")
    parser.add_argument("--profile", default="auto", help="smoke, cpu, gpu, paper or auto")
    parser.set_defaults(func=_artifacts)


def _record_measurements(args: argparse.Namespace) -> int:
    """Keep the cache's measurements of the recorded runs with them
    (:func:`interpddpm.runs.record_measurements`)."""
    from . import runs

    made = runs.record_measurements(args.profile)
    for path in made:
        print(f"recorded {path.parent.name}/{path.name}")
    print(f"{len(made)} new measurement(s) recorded")
    return 0


def _add_record_measurements(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "record-measurements",
        help="keep the cached measurements of the recorded runs with them",
        description="Copy the cache's sample sets and locality results of the --profile's "
        "recorded runs and recorded face parser (only entries that depend on nothing else) "
        "into book/data/<recorded_runs>/measurements, from where a cold book loads them "
        "instead of measuring them again. Run it after a book build that measured them.",
    )
    parser.add_argument("--profile", default="cpu", help="a profile with recorded runs")
    parser.set_defaults(func=_record_measurements)


def _publish(args: argparse.Namespace) -> int:
    """Upload a finished run to a hub repo (:func:`interpddpm.hub.publish_run`)."""
    from . import hub

    run = hub.resolve_run(args.run, args.profile)
    if args.folder is not None:
        kept = hub.record_run(run, args.folder)
        print(
            f"recorded {run.name} in {kept}; elsewhere: {hub.ENV_RUNS_FROM}={args.folder} "
            "(or name the folder in a profile's recorded_runs)"
        )
        return 0
    done = hub.publish_run(run, args.repo_id, private=args.private, revision=args.revision)
    source = done.repo_id + (f"@{done.revision}" if done.revision else "")
    print(
        f"published {done.path_in_repo} (step {done.step}, {len(done.files)} files) to "
        f"{done.repo_id}; elsewhere: {hub.ENV_RUNS_FROM}={source}"
    )
    if done.init_from:
        print(f"it starts from {done.init_from}: publish that run too, or loading it trains it")
    return 0


def _add_publish(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "publish",
        help="upload a finished run to a Hugging Face Hub repo, for others to load",
        description="Upload the newest checkpoint of the finished run RUN (a run folder, or "
        "the name of one in the --profile's cache, runs/) and its training log to "
        "runs/<RUN folder name>/ of the hub repo --repo-id (created if missing), plus a model "
        "card README.md if the repo has none. Elsewhere, INTERPDDPM_RUNS_FROM=<repo id> makes "
        "the chapters fetch it instead of training it. Needs a hub login (hf auth login). "
        "With --folder DIR instead, the same files go to DIR/runs/<RUN folder name>/ "
        "(how the book records its cpu baseline in book/data/runs-cpu).",
    )
    parser.add_argument("run", help="a run folder, or its name in <cache>/runs")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--repo-id", help="the hub repo, owner/name")
    target.add_argument("--folder", type=Path, help="a local folder of recorded runs instead")
    parser.add_argument("--profile", default="auto", help="smoke, cpu, gpu, paper or auto")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", metavar="BRANCH", help="publish to this branch")
    parser.set_defaults(func=_publish)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_book,
    _add_train,
    _add_ablations,
    _add_artifacts,
    _add_publish,
    _add_record_measurements,
]


class _UsageError(Exception):
    """A command line argparse refused (its message is printed by :func:`main`)."""

    def __init__(self, message: str, prog: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors reach :func:`main` (one ``error:`` line, status 2)
    instead of printing the usage block and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise _UsageError(message, self.prog)


class Terminated(KeyboardInterrupt):
    """SIGTERM (what ``timeout``, containers and batch schedulers send) or SIGHUP (a closed
    terminal or ssh session), raised in the main thread like Ctrl-C's ``KeyboardInterrupt``:
    the command stops the same way (``train`` prints where the run stopped; nothing
    half-written is kept as a checkpoint) and exits with ``128 + signal number`` (143, 129),
    the status of a process ended by that signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt_status(interrupt: BaseException) -> int:
    """The exit status of an interrupted command: 130 for Ctrl-C (SIGINT), 143 for SIGTERM,
    129 for SIGHUP."""
    return 128 + (interrupt.signum if isinstance(interrupt, Terminated) else signal.SIGINT)


#: The signals that stop a command like Ctrl-C (SIGHUP does not exist on Windows).
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


@contextlib.contextmanager
def _sigterm_interrupts():
    """While the block runs, SIGTERM and SIGHUP raise :class:`Terminated` (the default would
    end the process at once, silently). A signal the process was started with ignored stays
    ignored: ``nohup`` ignores SIGHUP so that the job outlives its terminal. Only the main
    thread may install a handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated(signum)

    previous = {}
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, terminate)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions :func:`main` reports as ``error: <message>`` (exit 2): every
    :class:`interpddpm.errors.UserError` (ConfigError, CheckpointError, RunDirError, ...), the
    ``OSError`` of a path that is missing, unreadable or unwritable (a full disk included), or
    of a model or dataset that cannot be fetched, and safetensors' ``SafetensorError`` (not an
    ``OSError``: its writer reports a full disk as one, its reader a truncated file)."""
    from safetensors import SafetensorError

    from .errors import UserError

    return (UserError, OSError, SafetensorError)


def make_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    parser = _Parser(
        prog="interpddpm",
        description="Interpretable diffusion models through game theory.",
    )
    debug_help = "show the full traceback of an error instead of one line"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    for sub in subparsers.choices.values():  # also accepted after the subcommand
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the chosen subcommand.

    A user error (a bad argument, config value or path: :func:`user_errors`) prints one line
    ``error: ...`` on stderr and returns 2; ``--debug`` shows the traceback instead. Ctrl-C
    returns 130, SIGTERM 143 and SIGHUP 129 (:class:`Terminated`); ``train`` first says where
    the run stopped and how to resume it.
    """
    try:
        args = make_parser().parse_args(argv)
    except _UsageError as error:
        print(f"error: {_one_line(error)} (see `{error.prog} --help`)", file=sys.stderr)
        return 2
    try:
        with _sigterm_interrupts():
            return args.func(args)
    except KeyboardInterrupt as interrupt:
        if args.debug:
            raise
        what = (
            f"terminated ({signal.Signals(interrupt.signum).name})"
            if isinstance(interrupt, Terminated)
            else "interrupted"
        )
        print(f"error: {what}", file=sys.stderr)
        return _interrupt_status(interrupt)
    except user_errors() as error:
        if args.debug:
            raise
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

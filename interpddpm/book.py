"""Execute the book's notebooks with papermill and build the book with Jupyter Book.

The notebooks in ``notebooks/`` are stored without outputs. :func:`execute` runs each notebook
listed in ``_toc.yml`` with a profile into a staging copy of the book, ``_build/staged/``, and
skips a notebook whose cache key (its source, its parameters, the library's source and the keys
of the notebooks before it, :func:`chained_keys`) did not change since its last successful run.
A chapter whose run contradicts a sentence of its prose (a false ``claims.expect``, on any
profile but ``smoke``) stops the book with :class:`FalseClaimError`.
:func:`build` then renders the staged copy with ``jupyter-book build -W`` (warnings are errors)
into ``_build/html``: the teacher edition, whose solutions are folded on the page, with one
slide deck per chapter in ``_build/html/slides`` (:mod:`interpddpm.slides`). With
``edition="student"`` it copies the staged book into ``_build/student/staged`` without any
solution (:func:`strip_solutions`: the ``:::{admonition} Solution`` blocks and the code cells
tagged ``solution``) and renders that into ``_build/student/html``; the chapters without
solutions and outputs, to hand out, go to ``_build/student/notebooks``. Both lock the staging
folder (:mod:`interpddpm.locks`): a second build of
the same folder waits for the first, saying so.

``python -m interpddpm.cli book [--edition student]`` (used by ``make book [EDITION=student]``)
does both.

Serves every chapter: it executes them and builds the book.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import __version__, claims, slides
from .locks import locked
from .profiles import ENV_CACHE, ENV_PROFILE, resolve_profile_name
from .threads import ENV_LOG as ENV_THREAD_LOG

KERNEL_NAME = "python3"
STAGED = "staged"  # the staging folder, under <out>/_build/
PARTIAL = "partial"  # where a notebook is executed before it replaces its staged copy
KEYS_FILE = "execution.json"
TIMINGS_FILE = "timings.json"
BOOK_FILES = ("_config.yml", "_toc.yml")  # copied to the root of the staged book
STATIC = "_static"  # the book's own CSS (Jupyter Book includes every .css file in it)
REMOVE_TAG = "remove-cell"  # Jupyter Book drops cells with this tag from the page


class NotebookExecutionError(RuntimeError):
    """A notebook of the book failed; the message names the notebook, the cell and the copy."""


class FalseClaimError(NotebookExecutionError):
    """An executed chapter recorded a ``claims.expect`` claim that its own outputs contradict
    (:func:`interpddpm.claims.failed_claims`; never on the ``smoke`` profile, whose barely
    trained models carry no qualitative claim)."""


class BookBuildError(RuntimeError):
    """``jupyter-book build`` failed (with ``-W``, any warning fails it)."""


#: The environment variable that says where a notebook's install cell takes interpddpm from.
SOURCE_VARIABLE = "INTERPDDPM_SOURCE"

_INSTALL_CELL = """\
# Colab or a fresh kernel: install interpddpm when it is missing, from
# ${variable} (a wheel from `make dist`, on Drive say, or a
# clone) or else the book's own version, tag v{version} of the book's
# repository (_config.yml). On Colab, Drive keeps the runs across
# disconnects; MOUNT_DRIVE = False keeps them on the runtime's disk.
MOUNT_DRIVE = True
try:
    import interpddpm
except ImportError:
    import importlib.util
    import os
    import subprocess
    import sys

    src = os.environ.get("{variable}") or (
        "git+{url}@v{version}"
    )
    if os.path.exists(src):
        src = "file://" + os.path.abspath(src)
    # with torchvision already there (Colab), add Inception FID
    gpu = importlib.util.find_spec("torchvision") is not None
    extras = "colab,gpu" if gpu else "colab"
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    spec = f"interpddpm[{{extras}}] @ {{src}}"
    if subprocess.run([*pip, spec]).returncode:
        raise RuntimeError(
            f"could not install interpddpm from {{src}}: set"
            " {variable} to a wheel built by `make dist` (on"
            " Drive, say), a clone of the repository or a git URL"
        ) from None
    import interpddpm
from interpddpm.colab import setup

setup(mount_drive=MOUNT_DRIVE)"""


def repository_url(root: Path) -> str:
    """The book's repository (``repository.url`` of ``_config.yml``): where the Colab button
    and every notebook's install cell take the code from."""
    import yaml

    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))
    return str(config["repository"]["url"]).rstrip("/")


def install_cell(root: Path) -> str:
    """The source of the install cell every notebook starts with (its second cell)."""
    return _INSTALL_CELL.format(
        variable=SOURCE_VARIABLE, url=repository_url(root), version=__version__
    )


def _is_install_cell(source: str) -> bool:
    return "import interpddpm\nexcept ImportError" in source


def sync_install_cells(root: Path | None = None) -> list[Path]:
    """Rewrite each chapter's install cell from ``_config.yml`` (after its repository URL
    changed); returns the notebooks changed."""
    import nbformat

    root = find_root(root)
    changed = []
    for notebook in toc_notebooks(root):
        nb = nbformat.read(root / notebook, as_version=4)
        cell = next(c for c in nb.cells if c.cell_type == "code" and _is_install_cell(c.source))
        if cell.source != install_cell(root):
            cell.source = install_cell(root)
            nbformat.write(nb, root / notebook)
            changed.append(notebook)
    return changed


def find_root(start: Path | None = None) -> Path:
    """The repository root: the first folder at or above ``start`` (default: the working
    directory, then this package's folder) that holds ``_toc.yml`` and ``interpddpm/``."""
    candidates = [start] if start is not None else [Path.cwd(), Path(__file__).parent]
    for candidate in candidates:
        for folder in (candidate.resolve(), *candidate.resolve().parents):
            if (folder / "_toc.yml").is_file() and (folder / "interpddpm").is_dir():
                return folder
    raise FileNotFoundError(
        f"No book found at or above {candidates[0]}: expected _toc.yml next to interpddpm/."
    )


def build_dir(out: Path) -> Path:
    """The ``_build`` folder that Jupyter Book fills when called with ``--path-output out``."""
    return out / "_build"


def staging_dir(out: Path) -> Path:
    """The staged copy of the book (executed notebooks, prose, configuration)."""
    return build_dir(out) / STAGED


def _toc_entries(node: Any) -> Iterator[str]:
    """Every ``file:`` of a parsed ``_toc.yml``, in reading order (depth first)."""
    if isinstance(node, dict):
        if isinstance(node.get("root"), str):
            yield node["root"]
        if isinstance(node.get("file"), str):
            yield node["file"]
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key) or []:
                yield from _toc_entries(child)
    elif isinstance(node, list):
        for child in node:
            yield from _toc_entries(child)


def toc_documents(root: Path) -> list[Path]:
    """The documents of ``_toc.yml`` as paths relative to ``root``, with their extension.

    A ``file:`` entry names a document without its extension; the file on disk is a ``.md``
    or an ``.ipynb``. A missing document raises :class:`FileNotFoundError`.
    """
    import yaml  # local: keep ``import interpddpm.book`` light

    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    documents = []
    for entry in _toc_entries(toc):
        entry_path = Path(entry)
        options = (
            [entry_path]
            if entry_path.suffix in {".md", ".ipynb"}
            else [
                entry_path.with_suffix(".ipynb"),
                entry_path.with_suffix(".md"),
            ]
        )
        found = [p for p in options if (root / p).is_file()]
        if not found:
            raise FileNotFoundError(f"_toc.yml lists {entry!r} but {root / options[0]} is missing.")
        documents.append(found[0])
    return documents


def toc_notebooks(root: Path) -> list[Path]:
    """The notebooks of ``_toc.yml``, relative to ``root``, in reading order."""
    return [doc for doc in toc_documents(root) if doc.suffix == ".ipynb"]


def library_sources(root: Path) -> list[Path]:
    """The library's Python files whose change invalidates every executed notebook: those of
    its subpackages too (``interpddpm/training/losses.py``)."""
    return sorted((root / "interpddpm").rglob("*.py"))


def cache_key(
    notebook: Path,
    parameters: dict[str, Any],
    library: Sequence[Path],
    upstream: Sequence[str] = (),
) -> str:
    """sha256 of the notebook's bytes, its parameters, the library's source files and the keys
    of the notebooks it depends on (``upstream``: see :func:`chained_keys`)."""
    digest = hashlib.sha256()
    digest.update(notebook.read_bytes())
    digest.update(json.dumps(parameters, sort_keys=True).encode())
    # each file by its path below the library's top folder (training/__init__.py is not
    # __init__.py), which is the bare name for a top-level module
    top = min((source.parent for source in library), key=lambda p: len(p.parts), default=None)
    for source in library:
        digest.update(source.relative_to(top).as_posix().encode())
        digest.update(source.read_bytes())
    for key in upstream:
        digest.update(key.encode())
    return digest.hexdigest()


def chained_keys(
    root: Path, notebooks: Sequence[Path], parameters: dict[str, Any], library: Sequence[Path]
) -> dict[Path, str]:
    """The cache key of every notebook of ``notebooks`` (all of ``_toc.yml``, in its order):
    each key includes the key of the notebook before it, hence of ALL the notebooks before it.

    Chapters share runs and caches (chapter 06 reads the runs chapter 05 trains), so a change
    to one chapter re-executes it and every chapter after it; the ones before stay cached.
    """
    keys: dict[Path, str] = {}
    previous: list[str] = []
    for rel in notebooks:
        keys[rel] = cache_key(root / rel, parameters, library, upstream=previous)
        previous = [keys[rel]]
    return keys


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from .artifacts import atomic_write  # a crash never leaves half a file

    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _thread_report(log: Path) -> str:
    """What a chapter's long jobs chose (:func:`interpddpm.threads.choose_threads` appends each
    decision to ``log``), e.g. ``threads 2 x7, 1 x1 (other jobs kept 0.00-0.90 of 2 cores
    busy)``."""
    user = os.environ.get("OMP_NUM_THREADS", "").strip()
    if user.isdigit():
        return f"threads {user} (OMP_NUM_THREADS)"
    try:
        records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    except (OSError, json.JSONDecodeError):
        records = []
    if not records:
        return "threads: torch's default (no long job)"
    counts: dict[int, int] = {}
    for record in records:
        counts[record["threads"]] = counts.get(record["threads"], 0) + 1
    text = "threads " + ", ".join(f"{t} x{n}" for t, n in sorted(counts.items(), reverse=True))
    loads = [r["others"] for r in records if r.get("others") is not None]
    if loads:
        span = f"{min(loads):.2f}" + ("" if min(loads) == max(loads) else f"-{max(loads):.2f}")
        text += f" (other jobs kept {span} of {records[0]['cores']} cores busy)"
    return text


def _kernel_manager_class() -> type | None:
    """The kernel manager of each chapter's kernel: local IPC sockets in a private temporary
    folder instead of TCP ports on localhost (which other users of the machine could reach).

    Over TCP, ipykernel logs "Kernel is running over TCP without encryption" once per kernel,
    a dozen times per book; over IPC there is nothing to warn about, and every other warning
    still shows. None (papermill's default, TCP) where there is no IPC transport (Windows).
    """
    if os.name != "posix":
        return None
    import tempfile

    from jupyter_client import AsyncKernelManager
    from traitlets import default

    class LocalKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self) -> str:
            return "ipc"

        @default("ip")
        def _default_ip(self) -> str:  # short: a socket path has at most ~100 characters
            return os.path.join(tempfile.mkdtemp(prefix="interpddpm-kernel-"), "k")

        def cleanup_ipc_files(self) -> None:
            super().cleanup_ipc_files()
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(self.ip))

    return LocalKernelManager


@contextlib.contextmanager
def _environment(**variables: str) -> Iterator[None]:
    """Set environment variables (inherited by the papermill kernels), restore them after."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def hide_injected_parameters(notebook: Path) -> None:
    """Tag papermill's ``injected-parameters`` cell ``remove-cell`` so the page omits it."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    changed = False
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and REMOVE_TAG not in tags:
            tags.append(REMOVE_TAG)
            changed = True
    if changed:
        nbformat.write(nb, notebook)


def _failure_message(name: Path, error: BaseException, partial: Path) -> str:
    """Name the notebook, the failing cell and where the partially executed copy is."""
    cell = getattr(error, "cell_index", None)
    count = getattr(error, "exec_count", None)
    source = getattr(error, "source", None)
    ename, evalue = getattr(error, "ename", None), getattr(error, "evalue", None)
    lines = [f"Notebook {name} failed"]
    if cell is not None:
        lines[0] += f" in cell {cell} (execution count {count})"
    lines[0] += "."
    if ename is not None:
        lines.append(f"  error: {ename}: {evalue}")
    else:
        lines.append(f"  error: {type(error).__name__}: {error}")
    if source:
        excerpt = str(source).strip().splitlines()
        shown = "\n    ".join(excerpt[:8]) + ("\n    ..." if len(excerpt) > 8 else "")
        lines.append(f"  cell source:\n    {shown}")
    lines.append(f"  partially executed copy: {partial}")
    return "\n".join(lines)


def execute(
    profile: str = "auto",
    notebooks: Iterable[str | Path] | None = None,
    force: bool = False,
    *,
    root: Path | None = None,
    out: Path | None = None,
    cache: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Execute the book's notebooks with papermill into the staging copy.

    Args:
        profile: the profile name passed to every notebook (``"auto"`` resolved here, so the
            cache key records the concrete profile).
        notebooks: a subset of the ``_toc.yml`` notebooks (paths relative to the root, or bare
            names such as ``01_shapley_values``); ``None`` executes all of them, in order.
        force: execute even when the cache key did not change.
        root: the repository (default: found from the working directory).
        out: the folder that receives ``_build/`` (default: ``root``).
        cache: the artifact folder shared by the chapters (default: ``$INTERPDDPM_CACHE``,
            else ``<root>/_artifacts``).

    Returns:
        Per notebook (relative path): ``seconds`` (wall time of the last execution) and
        ``cached`` (True when this call skipped it).

    Raises:
        NotebookExecutionError: a notebook failed; the message says where and why.
        FalseClaimError: a notebook ran, but a sentence its prose states whatever the run
            (``claims.expect``) is false in this run; one line names the notebook, the claim
            and its evidence. The executed copy stays in ``_build/partial`` and the chapter is
            not staged, so the next build runs it again.
    """
    import papermill

    root = find_root() if root is None else root.resolve()
    out = root if out is None else out.resolve()
    name = resolve_profile_name(profile)
    cache = Path(os.environ.get(ENV_CACHE) or root / "_artifacts") if cache is None else cache
    stage, partial_dir = staging_dir(out), build_dir(out) / PARTIAL
    available = toc_notebooks(root)
    selected = _select(available, notebooks)
    parameters = {"profile": name}
    library = library_sources(root)
    # each key chains through the keys of all notebooks before it in _toc.yml
    chain = chained_keys(root, available, {**parameters, "kernel": KERNEL_NAME}, library)

    report: dict[str, dict[str, Any]] = {}
    # The kernels inherit this environment: the profile, one artifact cache for all chapters,
    # and this checkout's library ahead of any installed copy.
    python_path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    variables = {ENV_PROFILE: name, ENV_CACHE: str(cache.resolve()), "PYTHONPATH": python_path}
    # One execution per staging folder at a time: a second `make book` waits here (it prints
    # "waiting for .../_build/staged (held by pid N ...)"), then skips what the first executed.
    what = f"book execution (profile {name})"
    with locked(stage, wait=True, what=what), _environment(**variables):
        keys = _read_json(stage / KEYS_FILE)  # read under the lock: the other build's updates
        timings = _read_json(stage / TIMINGS_FILE)
        for index, rel in enumerate(selected, start=1):
            source, target = root / rel, stage / rel
            key = chain[rel]
            progress = f"[{index}/{len(selected)}] {rel.as_posix()} (profile {name})"
            if not force and keys.get(rel.as_posix()) == key and target.is_file():
                print(f"{progress}: unchanged, skipped", flush=True)
                report[rel.as_posix()] = {
                    "seconds": timings.get(rel.as_posix(), {}).get("seconds"),
                    "cached": True,
                }
                continue
            partial = partial_dir / rel
            partial.parent.mkdir(parents=True, exist_ok=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy_assets(source.parent, target.parent)
            # the kernel's long jobs choose their threads and report them here
            thread_log = partial.with_suffix(".threads.jsonl")
            thread_log.unlink(missing_ok=True)
            manager = _kernel_manager_class()
            start = time.perf_counter()
            with (
                _environment(**{ENV_THREAD_LOG: str(thread_log)}),
                _cell_progress(source, rel.stem) as on_cell_executed,
            ):
                try:
                    # cwd: the staged folder, so files a chapter writes never land in notebooks/.
                    papermill.execute_notebook(
                        str(source),
                        str(partial),
                        parameters=parameters,
                        kernel_name=KERNEL_NAME,
                        cwd=str(target.parent),
                        progress_bar=False,  # papermill's bar is tqdm.auto (a widget in Jupyter)
                        on_cell_executed=on_cell_executed,
                        **({} if manager is None else {"kernel_manager_class": manager}),
                    )
                except Exception as error:
                    message = _failure_message(rel, error, partial)
                    raise NotebookExecutionError(message) from error
            seconds = time.perf_counter() - start
            threads = _thread_report(thread_log)
            thread_log.unlink(missing_ok=True)
            hide_injected_parameters(partial)
            false = claims.failed_claims(partial)
            if false:  # the prose states what this run contradicts: not a page to publish
                more = f" (and {len(false) - 1} more)" if len(false) > 1 else ""
                raise FalseClaimError(
                    f"{rel.as_posix()}: {false[0]}{more}; executed copy: {partial}"
                )
            shutil.move(partial, target)
            keys[rel.as_posix()] = key
            timings[rel.as_posix()] = {
                "seconds": round(seconds, 2),
                "profile": name,
                "threads": threads,
            }
            _write_json(stage / KEYS_FILE, keys)
            _write_json(stage / TIMINGS_FILE, timings)
            report[rel.as_posix()] = {"seconds": round(seconds, 2), "cached": False}
            print(f"{progress}: {seconds:.1f} s, {threads}", flush=True)
    return report


@contextlib.contextmanager
def _cell_progress(notebook: Path, label: str) -> Iterator[Any]:
    """A plain tqdm bar over the code cells (a terminal only: ``disable=None`` hides it in logs).

    Yields the ``on_cell_executed`` hook that nbclient calls after each code cell.
    """
    import nbformat
    from tqdm import tqdm

    cells = nbformat.read(notebook, as_version=4).cells
    total = sum(cell.cell_type == "code" for cell in cells) + 1  # + papermill's parameters
    bar = tqdm(total=total, desc=label, unit="cell", file=sys.stderr, disable=None, leave=False)
    try:
        yield lambda **_: bar.update()
    finally:
        bar.close()


def _select(available: list[Path], wanted: Iterable[str | Path] | None) -> list[Path]:
    """The notebooks to execute, in toc order; unknown names fail with the valid ones."""
    if wanted is None:
        return available
    chosen = set()
    for item in wanted:
        text = Path(item).as_posix()
        matches = [
            nb
            for nb in available
            if text in {nb.as_posix(), nb.with_suffix("").as_posix(), nb.name, nb.stem}
        ]
        if not matches:
            valid = ", ".join(nb.stem for nb in available)
            raise ValueError(f"{item!r} is not a notebook of _toc.yml. Valid: {valid}.")
        chosen.update(matches)
    return [nb for nb in available if nb in chosen]


def _ignore_for_staging(folder: str, names: list[str]) -> set[str]:
    """Notebooks are staged by :func:`execute`; caches and checkpoints are not staged."""
    skip = {".ipynb_checkpoints", "__pycache__", "_build"}
    return {n for n in names if n in skip or n.endswith(".ipynb")}


def _copy_assets(source: Path, target: Path) -> None:
    """Copy a folder's files except notebooks (images, data a chapter reads) into ``target``.

    ``copy2`` keeps modification times, so Sphinx does not see unchanged files as new.
    """
    if source.is_dir():
        shutil.copytree(
            source,
            target,
            ignore=_ignore_for_staging,
            dirs_exist_ok=True,
            copy_function=shutil.copy2,
        )


def stage(root: Path, out: Path) -> Path:
    """Refresh the staged book's prose and configuration; check every notebook was executed.

    Removes staged documents that ``_toc.yml`` no longer lists (they would be warnings).
    """
    staged = staging_dir(out)
    staged.mkdir(parents=True, exist_ok=True)
    documents = toc_documents(root)
    for name in BOOK_FILES:
        shutil.copy2(root / name, staged / name)
    _copy_assets(root / STATIC, staged / STATIC)  # CSS Jupyter Book adds to every page
    for folder in sorted({doc.parts[0] for doc in documents if len(doc.parts) > 1}):
        _copy_assets(root / folder, staged / folder)
    for doc in documents:
        if doc.suffix == ".md":
            (staged / doc).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / doc, staged / doc)
    wanted = {staged / doc for doc in documents}
    for path in [*staged.rglob("*.md"), *staged.rglob("*.ipynb")]:
        if path not in wanted:
            path.unlink()
    missing = [doc for doc in documents if doc.suffix == ".ipynb" and not (staged / doc).is_file()]
    if missing:
        names = ", ".join(doc.as_posix() for doc in missing)
        raise FileNotFoundError(f"Not executed yet: {names}. Run execute() (make book) first.")
    return staged


def jupyter_book_command() -> list[str]:
    """The ``jupyter-book`` executable of this Python environment (or the one on PATH)."""
    local = Path(sys.executable).parent / "jupyter-book"
    found = str(local) if local.is_file() else shutil.which("jupyter-book")
    if found is None:
        raise FileNotFoundError("jupyter-book is not installed: pip install -e '.[book]'")
    return [found]


def build(*, root: Path | None = None, out: Path | None = None, edition: str = "teacher") -> Path:
    """Render the staged book with ``jupyter-book build -W``: the teacher edition (solutions
    folded on the page) into ``<out>/_build/html``, the student edition (no solution:
    :func:`stage_student`) into ``<out>/_build/student/html``, with the hand-out notebooks in
    ``<out>/_build/student/notebooks``.

    Both editions get a slide deck per chapter in ``html/slides`` (:func:`slides.write_decks`).

    Returns the path of ``index.html``. Raises :class:`BookBuildError` on any warning, and when
    a page of the student edition still shows a solution.
    """
    if edition not in EDITIONS:
        raise ValueError(f"edition {edition!r}: choose one of {', '.join(EDITIONS)}")
    root = find_root() if root is None else root.resolve()
    out = root if out is None else out.resolve()
    with locked(staging_dir(out), wait=True, what=f"book build (jupyter-book, {edition})"):
        if edition == "teacher":
            staged = stage(root, out)
            index = _render(staged, out)
            slides.write_decks(staged, index.parent)
            print(f"Book built: {index}", flush=True)
            return index
        student = student_dir(out)
        staged = stage_student(root, out)
        index = _render(staged, student)
        html = student / "html"  # jupyter-book writes <path-output>/_build/html
        if html.exists():
            shutil.rmtree(html)
        os.replace(build_dir(student) / "html", html)
        slides.write_decks(staged, html)
        shown = solutions_in_html(html)
        if shown:
            raise BookBuildError(
                "the student edition shows solutions (mark each with ':::{admonition} Solution' "
                "or the cell tag 'solution'): " + "; ".join(shown[:5])
            )
        print(f"Student edition: {html / index.name}; notebooks: {student / 'notebooks'}")
        print("(jupyter-book's own message above names _build/student/_build/html, moved.)")
        return html / index.name


def _render(staged: Path, out: Path) -> Path:
    """``jupyter-book build -W`` of the folder ``staged`` into ``<out>/_build/html``."""
    command = [
        *jupyter_book_command(),
        "build",
        str(staged),
        "--path-output",
        str(out),
        "--builder",
        "html",
        "-W",
        "--keep-going",
        "--all",
    ]
    print("Building the book:", " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=staged, check=False)
    if completed.returncode != 0:
        raise BookBuildError(
            f"jupyter-book build failed (exit {completed.returncode}); with -W every warning is "
            "an error: see the messages above."
        )
    index = build_dir(out) / "html" / "index.html"
    print(f"Rendered in {time.perf_counter() - start:.1f} s", flush=True)
    return index


# --------------------------------------------------------------------------- the student edition

#: The editions of the book: the teacher's (solutions folded on the page) and the student's.
EDITIONS = ("teacher", "student")
STUDENT = "student"  # the student edition's folder, under <out>/_build/
#: Code cells with this tag are an exercise's runnable solution (``tests/test_course.py``).
SOLUTION_TAG = "solution"
#: What the student edition puts where an exercise's solution code was.
STUB_TAG = "exercise-stub"
#: The titles of the admonitions that answer an exercise: the solution, and the explanation
#: that follows a runnable solution's output (chapters 5 to 7).
ANSWER_TITLES = ("Solution", "Explanation", "Model answer", "Answer")
#: The opening line of an answer admonition (a MyST colon fence): group 1 is the fence.
_SOLUTION_OPEN = re.compile(
    r"^(:{3,})\{admonition\}\s*(?:" + "|".join(ANSWER_TITLES) + r")\b.*$", re.I
)
#: The heading of an exercise, ``### Exercise 5.2 (hands-on)``: group 1 is its number.
_EXERCISE = re.compile(r"^#{2,4}\s*Exercise\s+(\d+\.\d+)", re.M)
#: What a page shows of a solution: an admonition titled like one (its title paragraph; the
#: class ``admonition-solution`` only when the admonition has no ``:class:``), or a cell with
#: the tag ``solution``. Group 1 says which.
_SOLUTION_IN_HTML = re.compile(
    r'class="[^"]*\badmonition-title\b[^"]*">\s*((?:'
    + "|".join(ANSWER_TITLES)
    + r')\b)|class="[^"]*\b(tag_solution|'
    + "|".join("admonition-" + t.lower().replace(" ", "-") for t in ANSWER_TITLES)
    + r')(?=[\s"])',
    re.I,
)


class SolutionDependencyError(ValueError):
    """A cell kept in the student edition uses a name that only a removed solution defines."""


def strip_solution_text(markdown: str, where: str = "markdown") -> str:
    """``markdown`` without its answers: the ``:::{admonition} Solution`` blocks (and those
    titled by the other :data:`ANSWER_TITLES`), each from its fence to its closing fence.

    A closing fence has at least as many colons as the opening one and nothing after them (the
    MyST rule, so a nested ``:::{note}`` inside a ``::::`` solution stays inside it). Blank
    lines left at the end are dropped. An unclosed solution raises :class:`ValueError` naming
    ``where``.
    """
    lines = markdown.split("\n")
    kept: list[str] = []
    index = 0
    while index < len(lines):
        opening = _SOLUTION_OPEN.match(lines[index])
        if opening is None:
            kept.append(lines[index])
            index += 1
            continue
        closing = re.compile(rf"^{opening.group(1)}:*\s*$")
        end = next((j for j in range(index + 1, len(lines)) if closing.match(lines[j])), None)
        if end is None:
            raise ValueError(
                f"{where}: the solution admonition opened by {lines[index]!r} is never closed "
                f"(add a line {opening.group(1)!r} after it)"
            )
        index = end + 1
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join(kept)


def _names(source: str) -> tuple[set[str], set[str]]:
    """The names a code cell binds and the names it reads (IPython magics left out); two empty
    sets when it is not Python."""
    import ast

    code = "\n".join(
        line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))
    )
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set(), set()
    bound, read = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (bound if isinstance(node.ctx, ast.Store | ast.Del) else read).add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return bound, read


def strip_solutions(nb: Any, name: str = "notebook") -> Any:
    """A copy of the notebook ``nb`` (an ``nbformat`` node) with no solution in it.

    - every ``:::{admonition} Solution`` block (or ``Explanation``: :data:`ANSWER_TITLES`)
      leaves its markdown cell, and a cell left empty is dropped (the exercise statement
      before the block stays);
    - every code cell tagged ``solution`` is dropped; each exercise that had solution code gets
      one empty code cell instead, ``# Exercise N.k: your code here`` (tagged ``exercise-stub``),
      for the student to work in;
    - every other cell is kept as it is, outputs included.

    A kept code cell that reads a name which only a dropped solution cell binds would fail in
    the student's notebook: :class:`SolutionDependencyError` names the cell and the names.
    """
    import copy

    stripped = copy.deepcopy(nb)
    cells, exercise, stubbed = [], None, set()
    removed: dict[str, int] = {}  # a name bound by a dropped solution cell -> its cell index
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            found = _EXERCISE.findall(cell.source)
            exercise = found[-1] if found else exercise
            if not any(_SOLUTION_OPEN.match(line) for line in cell.source.split("\n")):
                cells.append(copy.deepcopy(cell))
                continue
            text = strip_solution_text(cell.source, f"{name}, cell {index}")
            if text.strip():  # else the cell was a solution only
                kept = copy.deepcopy(cell)
                kept.source = text
                cells.append(kept)
            continue
        bound, read = _names(cell.source) if cell.cell_type == "code" else (set(), set())
        if cell.cell_type == "code" and SOLUTION_TAG in cell.metadata.get("tags", []):
            removed.update(dict.fromkeys(bound, index))
            if exercise not in stubbed:
                stubbed.add(exercise)
                cells.append(_stub(exercise, with_id=nb.get("nbformat_minor", 0) >= 5))
            continue
        # a name the cell binds itself is taken as bound before it is read (x = 0; print(x))
        missing = sorted(n for n in read - bound if n in removed)
        if missing:
            raise SolutionDependencyError(
                f"{name}, cell {index} uses {', '.join(missing)}, defined only by the solution "
                f"cell {removed[missing[0]]}: a student's notebook without solutions would fail "
                "there. Define it in a cell without the 'solution' tag."
            )
        for bound_name in bound:
            removed.pop(bound_name, None)
        cells.append(copy.deepcopy(cell))
    stripped.cells = cells
    return stripped


def _stub(exercise: str | None, *, with_id: bool) -> Any:
    """The empty code cell that takes the place of an exercise's solution code."""
    import nbformat

    label = f"Exercise {exercise}" if exercise else "The exercise"
    stub = nbformat.v4.new_code_cell(f"# {label}: your code here")
    stub.metadata["tags"] = [STUB_TAG]
    stub.pop("id", None)
    if with_id:  # deterministic (nbformat's own ids are random)
        stub["id"] = "exercise-stub-" + (exercise or "0").replace(".", "-")
    return stub


def student_dir(out: Path) -> Path:
    """The student edition: ``staged/`` (the book without solutions), ``html/`` (its pages) and
    ``notebooks/`` (the chapters without solutions and without outputs, to hand out)."""
    return build_dir(out) / STUDENT


def solutions_in_html(html_dir: Path) -> list[str]:
    """What the pages under ``html_dir`` show of solutions (an admonition titled
    ``Solution`` or another of :data:`ANSWER_TITLES`, a cell tagged ``solution``): one line
    per page and kind, ``page: what``; empty when there is none."""
    found = []
    for page in sorted(html_dir.rglob("*.html")):
        text = page.read_text(encoding="utf-8", errors="replace")
        kinds = {
            m.group(2) or f"an admonition titled {m.group(1)!r}": None
            for m in _SOLUTION_IN_HTML.finditer(text)
        }
        found += [f"{page.relative_to(html_dir).as_posix()}: {kind}" for kind in kinds]
    return found


def _student_config(text: str) -> str:
    """The student edition's ``_config.yml``: its title says so, and no launch button opens the
    repository's notebook (which has the solutions) on Colab."""
    import yaml

    config = yaml.safe_load(text)
    config["title"] = f"{config.get('title', 'The book')} (student edition)"
    config.pop("launch_buttons", None)
    header = "# The student edition's configuration, written by interpddpm.book.\n"
    return header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def write_student_notebooks(root: Path, target: Path) -> list[Path]:
    """Each chapter of ``_toc.yml`` without solutions and without outputs (the repository's own
    notebooks, so they run anywhere, on Colab too) into ``target``; returns the files written."""
    import nbformat

    written = []
    for rel in toc_notebooks(root):
        nb = strip_solutions(nbformat.read(root / rel, as_version=4), rel.as_posix())
        path = target / rel.name
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, path)
        written.append(path)
    return written


def stage_student(root: Path, out: Path) -> Path:
    """Copy the staged (executed) book into the student edition's ``staged/`` with every
    solution taken out of its notebooks (:func:`strip_solutions`), and write the hand-out
    notebooks; returns the student's staged folder.

    The notebooks are stripped after their execution, which is sound because the exercises are
    the last section of every chapter (``tests/test_course.py``): no kept code cell runs after
    a solution, so the kept cells' outputs are those a run without the solutions gives. A
    chapter where one does (it could read what the solution left: a name, a file, the random
    state) fails here with :class:`SolutionDependencyError`.
    """
    import nbformat

    staged, student = stage(root, out), student_dir(out)
    target = student / STAGED
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(
        staged, target, ignore=shutil.ignore_patterns(PARTIAL), copy_function=shutil.copy2
    )
    for rel in toc_notebooks(root):
        nb = nbformat.read(target / rel, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        tagged = [SOLUTION_TAG in c.metadata.get("tags", []) for c in code]
        if True in tagged and not all(tagged[tagged.index(True) :]):
            raise SolutionDependencyError(
                f"{rel.as_posix()}: a code cell without the 'solution' tag runs after a "
                "solution, so its executed output may depend on it; move the solutions to the "
                "end (the Exercises section) or tag that cell 'solution'"
            )
        nbformat.write(strip_solutions(nb, rel.as_posix()), target / rel)
    config = target / "_config.yml"
    config.write_text(_student_config(config.read_text(encoding="utf-8")), encoding="utf-8")
    handout = student / "notebooks"
    if handout.exists():
        shutil.rmtree(handout)
    write_student_notebooks(root, handout)
    return target

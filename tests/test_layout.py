"""The library's layout: the trainer package keeps every name the single module had (that the
wheel ships every module of the library, subpackages included, is in ``test_wheel.py``)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import interpddpm
from interpddpm import training

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = Path(interpddpm.__file__).parent

#: Every public name of ``interpddpm/training.py`` before it became a package (its re-exports
#: of other modules' names included).
OLD_TRAINING_NAMES = (
    "BETA_SCHEDULES BOOKKEEPING CHECKPOINT_PREFIX IE_CONSTRAINTS IE_T_WEIGHTS MAX_EXACT_REGIONS "
    "TRAINABLE CheckpointError Codec ConfigError LockedError MetricsLogError PixelCodec "
    "RunDirError StepLosses TrainConfig TrainResult batch_indices check_codec check_init_from "
    "check_init_size check_precision check_preset_size check_startable drop_later_defaults "
    "ie_design ie_sample_weights interruption_report json_digest lambda_at "
    "latest_verified_checkpoint list_checkpoints load_run_model lr_at min_snr_weights "
    "native_bf16 precision_label read_checkpoint read_metrics read_verified_record "
    "resolve_mixed_precision save_checkpoint select_cuda_device step_seed train "
    "trainable_parameters training_dataset training_losses"
).split()
#: The private names of the old module that other modules imported, and what replaced them
#: (no private name is imported across modules: test_no_private_name_crosses_a_module).
RENAMED = {
    "_HUB_MODEL_ID": "HUB_MODEL_ID",
    "_fetch": "fetch_batch",
    "_noise_scheduler": "run_noise_scheduler",
}

#: Where each part of the trainer lives now.
HOMES = {
    "config": ("TrainConfig", "ConfigError", "BOOKKEEPING", "drop_later_defaults"),
    "losses": ("training_losses", "lambda_at", "lr_at", "step_seed", "ie_design"),
    "checkpoints": ("save_checkpoint", "read_checkpoint", "read_metrics", "CheckpointError"),
    "codec": ("Codec", "PixelCodec", "load_run_model", "check_startable", "training_dataset"),
    "loop": ("train", "TrainResult", "interruption_report"),
}


def test_every_name_of_the_old_module_imports_from_the_package() -> None:
    missing = [name for name in OLD_TRAINING_NAMES if not hasattr(training, name)]
    assert not missing, f"interpddpm.training lost {missing}"
    assert set(training.__all__) <= set(dir(training))
    assert set(OLD_TRAINING_NAMES) | set(RENAMED.values()) <= set(training.__all__)


@pytest.mark.parametrize("module", sorted(HOMES))
def test_the_package_re_exports_the_objects_of_their_home_module(module: str) -> None:
    home = getattr(training, module)
    for name in HOMES[module]:
        obj = getattr(home, name)
        if callable(obj):  # a function or class: defined there, not imported there
            assert obj.__module__ == f"interpddpm.training.{module}", name
        assert getattr(training, name) is getattr(home, name), name


# ------------------------------------------------------------------------------------------
# The design's rules (docs/architecture.md), read from the source with ast: nothing imported
# ------------------------------------------------------------------------------------------
ARCHITECTURE = ROOT / "docs" / "architecture.md"
THEORY = {"games", "shapley", "theorem", "complexity", "reference_engines"}
#: Third-party packages of the diffusion side and the data, which the theory never imports.
NOT_THEORY = {"diffusers", "accelerate", "datasets", "safetensors", "huggingface_hub", "PIL"}
NOT_THEORY |= {"matplotlib"}


def module_name(path: Path, library: Path = LIBRARY) -> str:
    """``training.losses`` for ``interpddpm/training/losses.py``; a package is its folder."""
    parts = path.relative_to(library).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_modules(library: Path = LIBRARY) -> dict[str, Path]:
    return {module_name(p, library): p for p in sorted(library.rglob("*.py"))}


def imports(path: Path, name: str, modules: dict[str, Path]) -> list[tuple[str, str | None, int]]:
    """``(module, imported name or None, line)`` of every import in the file, lazy ones too,
    relative imports resolved to library names (``""`` is the top package ``interpddpm``)."""
    out = []
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name
                if target == "interpddpm" or target.startswith("interpddpm."):
                    target = "lib:" + target.removeprefix("interpddpm").lstrip(".")
                out.append((target, None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = "lib:" + ".".join([*base, *([node.module] if node.module else [])])
            elif node.module == "interpddpm" or (node.module or "").startswith("interpddpm."):
                target = "lib:" + node.module.removeprefix("interpddpm").lstrip(".")
            else:
                target = node.module or ""
            out.extend((target, alias.name, node.lineno) for alias in node.names)
    return out


def library_imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """The library modules each module imports (``from . import runs`` names ``runs``)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for target, imported, _ in imports(path, name, modules):
            if not target.startswith("lib:"):
                continue
            target = target[4:]
            sub = f"{target}.{imported}".lstrip(".") if imported else None
            deps.add(sub if sub in modules else target)
        graph[name] = deps - {name, ""}
    return graph


def closure(graph: dict[str, set[str]], start: set[str]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    return seen


def layers(text: str) -> dict[str, int]:
    """Module -> layer number, from the layer table of docs/architecture.md."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"\| (\d) \| \w+ \| (.*?) \|", line)
        if match:
            for module in re.findall(r"`([\w.]+)`", match.group(2)):
                assert module not in out, f"{module} is in two layers"
                out[module] = int(match.group(1))
    return out


def layer_of(module: str, table: dict[str, int]) -> int:
    return table[module.split(".")[0]]


def theory_violations(modules: dict[str, Path]) -> list[str]:
    graph = library_imports(modules)
    reached = closure(graph, {m for m in THEORY if m in modules})
    bad = [f"theory reaches {m}" for m in sorted(reached - THEORY)]
    for name in sorted(reached & set(modules)):
        for target, _, line in imports(modules[name], name, modules):
            if target.split(".")[0] in NOT_THEORY:
                bad.append(f"{name}.py:{line} imports {target}")
    return bad


def trainer_violations(modules: dict[str, Path], table: dict[str, int]) -> list[str]:
    graph = library_imports(modules)
    trainer = {m for m in modules if m.split(".")[0] == "training"}
    reached = closure(graph, trainer) - trainer
    return [
        f"the trainer reaches {m} (layer {layer_of(m, table)})"
        for m in sorted(reached)
        if m.split(".")[0] == "latent" or layer_of(m, table) >= 5
    ]


def private_violations(modules: dict[str, Path]) -> list[str]:
    bad = []
    for name, path in modules.items():
        for target, imported, line in imports(path, name, modules):
            same = target == f"lib:{name}"
            dunder = bool(imported) and imported.startswith("__") and imported.endswith("__")
            # __version__ and the like are public
            private = bool(imported) and imported.startswith("_") and not dunder
            if target.startswith("lib:") and private and not same:
                bad.append(f"{name or 'interpddpm'}:{line} imports {imported} from {target[4:]}")
    return bad


def defined_names(path: Path) -> set[str]:
    """Names a module's top level defines (not those it imports)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def home_violations(modules: dict[str, Path]) -> list[str]:
    """Names imported through a module that re-exports them. A package is the home of what
    its own modules define, for importers outside it."""
    defined = {name: defined_names(path) for name, path in modules.items()}
    bad = []
    for name, path in modules.items():
        for target, imported, line in imports(path, name, modules):
            if not (target.startswith("lib:") and imported) or imported == "*":
                continue
            target = target[4:]
            if f"{target}.{imported}".lstrip(".") in modules:
                continue  # a module (from . import runs)
            inside = name == target or name.startswith(f"{target}.")
            homes = (
                [target]
                if inside or not target
                else [m for m in modules if m == target or m.startswith(f"{target}.")]
            )
            if not any(imported in defined.get(h, ()) for h in homes):
                bad.append(
                    f"{name or 'interpddpm'}:{line} imports {imported} from "
                    f"{target or 'interpddpm'}, which does not define it"
                )
    return bad


def test_the_map_lists_every_module_once_and_only_modules() -> None:
    text = ARCHITECTURE.read_text()
    table = layers(text)
    tops = {m.split(".")[0] for m in library_modules() if m}
    assert set(table) == tops, f"unlisted: {tops - set(table)}, gone: {set(table) - tops}"
    named = set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)?)`", text.split("## Where each chapter")[1]))
    named = {n for n in named if not n[:2].isdigit()}
    assert named <= set(library_modules()), named - set(library_modules())
    tree = text.split("```text")[1].split("```")[0]
    files = {p.relative_to(LIBRARY).as_posix() for p in LIBRARY.rglob("*.py")}
    listed, folder = set(), ""
    for line in tree.splitlines()[2:]:
        entry = line.split()[0] if line.strip() else ""
        if entry.endswith("/"):
            folder = entry
        elif entry:
            listed.add(folder + entry if line.startswith("    ") else entry)
    assert listed == files, f"the tree lacks {files - listed}, lists {listed - files}"


def test_no_module_imports_a_higher_layer() -> None:
    table = layers(ARCHITECTURE.read_text())
    graph = library_imports(library_modules())
    bad = [
        f"{m} (layer {layer_of(m, table)}) imports {d} (layer {layer_of(d, table)})"
        for m, deps in graph.items()
        if m
        for d in sorted(deps)
        if layer_of(d, table) > layer_of(m, table)
    ]
    assert not bad, bad


def test_the_theory_imports_nothing_of_the_diffusion_side() -> None:
    bad = theory_violations(library_modules())
    assert not bad, bad


def test_the_trainer_imports_no_chapter_module() -> None:
    bad = trainer_violations(library_modules(), layers(ARCHITECTURE.read_text()))
    assert not bad, bad


def test_no_private_name_crosses_a_module() -> None:
    bad = private_violations(library_modules())
    assert not bad, bad


def test_names_come_from_their_home_module() -> None:
    bad = home_violations(library_modules())
    assert not bad, bad


def test_each_rule_catches_its_violation(tmp_path: Path) -> None:
    """The checks above on a small library that breaks each rule once (lazily, where a reader
    would not see it), so that a check that silently passes everything fails here."""
    files = {
        "artifacts.py": "def json_digest(x):\n    return x\n",
        "regions.py": "_private = 1\n",
        "games.py": "def f():\n    from .regions import _private\n\n    return _private\n",
        "runs.py": "import diffusers\n",
        "realism.py": "from .training import json_digest\n",
        "training/__init__.py": "from ..artifacts import json_digest\nfrom .loop import train\n",
        "training/loop.py": "def train():\n    from .. import runs\n\n    return runs\n",
        "training/codec.py": "from ..regions import _private\n",
    }
    for rel, text in {"__init__.py": "", **files}.items():
        (tmp_path / "interpddpm" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "interpddpm" / rel).write_text(text)
    modules = library_modules(tmp_path / "interpddpm")
    assert set(modules) == {"", "artifacts", "regions", "games", "runs", "realism", "training"} | {
        "training.loop",
        "training.codec",
    }
    table = {"artifacts": 1, "games": 2, "regions": 3, "training": 4, "runs": 5, "realism": 5}
    assert theory_violations(modules) == ["theory reaches regions"]
    assert trainer_violations(modules, table) == ["the trainer reaches runs (layer 5)"]
    assert private_violations(modules) == [
        "games:2 imports _private from regions",
        "training.codec:1 imports _private from regions",
    ]
    assert home_violations(modules) == [
        "realism:1 imports json_digest from training, which does not define it"
    ]
    assert library_imports(modules)["training.loop"] == {"runs"}


@pytest.mark.parametrize("module", sorted(library_modules()))
def test_each_module_names_the_chapters_it_serves(module: str) -> None:
    doc = ast.get_docstring(ast.parse(library_modules()[module].read_text())) or ""
    assert re.search(r"\b[Cc]hapters? \d|\bevery chapter\b", doc), (
        f"the docstring of interpddpm.{module} names no chapter: add a line such as "
        "'Serves chapters 6 and 7.'"
    )

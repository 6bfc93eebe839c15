"""Faults injected into real training processes, and every bad input: each ends in an exact
resume or in one clear line (issue 31).

A *fork server* (one Python process that imports torch and interpddpm once) forks one child per
command; a child runs ``interpddpm.cli.main`` with a fault armed by monkeypatching the library
in the child only: SIGKILL inside a checkpoint's file write, before and right after its
rename, in the middle of pruning an old checkpoint; SIGTERM at a step; a full disk raised as
safetensors' real error. Forking saves the 6 s import of each fresh process, so each scenario
costs its tiny run only. Every child runs one torch thread (``OMP_NUM_THREADS=1``), so runs are
bitwise comparable: "exact resume" means the final checkpoint's model, EMA and optimizer files
have the sha256 of an uninterrupted run's. A real full disk (a 4 MiB tmpfs in a private mount
namespace, ``unshare``) runs where the platform allows it and is skipped elsewhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from interpddpm import artifacts
from interpddpm.errors import UserError
from interpddpm.training import ConfigError, TrainConfig, list_checkpoints, read_metrics, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["preset=tiny", "image_size=16", "batch_size=2", "dataset_length=8", "log_every=1"]
PLAIN = [*TINY, "checkpoint_every=2", "steps=8"]
INTERP = [*PLAIN, "interpretable=true", "concepts=[nose]", "ie_sub_batch=2"]
TENSOR_FILES = ("model.safetensors", "ema.safetensors", "optimizer.safetensors")

SERVER = r"""
import json, os, signal, sys, traceback
from pathlib import Path

import torch  # imported once: every forked child shares it
import interpddpm.cli
import interpddpm.training  # noqa: F401 (and its modules: patched in the children)


def everywhere(name, replacement):
    # the library imports some names into its modules: patch each binding of the original
    for module in list(sys.modules.values()):
        if (module.__name__ or "").startswith("interpddpm") and hasattr(module, name):
            setattr(module, name, replacement)


def kill(sig=signal.SIGKILL):
    sys.stdout.flush(), sys.stderr.flush()
    os.kill(os.getpid(), sig)


def arm(fault):
    kind = fault["kind"]
    if kind in ("kill_in_write", "disk_full"):
        import safetensors.torch

        real = safetensors.torch.save_file

        def save_file(tensors, filename, *args, **kwargs):
            path = Path(filename)
            if path.name == fault["file"] and path.parent.name.endswith(f"-{fault['step']:07d}"):
                if kind == "disk_full":  # what safetensors raises on a full disk
                    from safetensors import SafetensorError

                    raise SafetensorError(
                        "Error while serializing: I/O error: No space left on device (os error 28)"
                    )
                real(tensors, filename, *args, **kwargs)
                os.truncate(path, path.stat().st_size // 2)  # the file half written
                kill()
            return real(tensors, filename, *args, **kwargs)

        everywhere("save_file", save_file)
    elif kind in ("kill_before_rename", "kill_after_rename"):
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            hit = Path(src).name == f".tmp-checkpoint-{fault['step']:07d}"
            if hit and kind == "kill_before_rename":
                kill()
            real_replace(src, dst, *args, **kwargs)
            if hit:
                kill()

        os.replace = replace
    elif kind == "kill_in_prune":
        import shutil

        real_rmtree = shutil.rmtree

        def rmtree(path, *args, **kwargs):
            if Path(path).name == f"checkpoint-{fault['victim']:07d}":
                (Path(path) / "model.safetensors").unlink()  # deletion half done
                kill()
            return real_rmtree(path, *args, **kwargs)

        shutil.rmtree = rmtree
    elif kind == "signal_at_step":
        from interpddpm.training import batch_indices as real_indices

        # a job started in the background (nohup, some CI runners) inherits SIGINT ignored, and
        # Python then installs no KeyboardInterrupt handler: restore it, as a terminal has it
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)  # nohup leaves SIGHUP ignored likewise

        def batch_indices(step, *args, **kwargs):
            if step == fault["step"]:
                kill(getattr(signal, fault["signal"]))  # the handler runs right here
            return real_indices(step, *args, **kwargs)

        everywhere("batch_indices", batch_indices)
    else:
        raise ValueError(kind)


# a warm-up run: the imports and first calls a training makes are then paid once, not in each
# child (one torch thread, so the forks inherit no thread pool)
sys.stdout = open(os.devnull, "w")
interpddpm.cli.main(json.loads(sys.argv[1]))
sys.stdout = sys.__stdout__

for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:  # the child: one command, its output in two files
        code = 99
        try:
            out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(out, 1), os.dup2(err, 2)
            os.chdir(request["cwd"])
            if request.get("fault"):
                arm(request["fault"])
            code = interpddpm.cli.main(request["argv"])
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)
"""


def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    # one torch thread: runs bitwise equal whatever the load (interpddpm.threads obeys it)
    # and the CPU: the files compared are the CPU's, and CUDA cannot be used in forked children
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "INTERPDDPM_DEVICE": "cpu"}


@dataclasses.dataclass
class Outcome:
    status: int  # the exit status, or -N when signal N ended the process
    out: str
    err: str

    def error_lines(self) -> list[str]:
        """stderr without warnings (a warning is a line and the source line below it)."""
        lines, skip = [], False
        for line in self.err.splitlines():
            if skip:
                skip = False
                continue
            if "Warning: " in line:
                skip = True
                continue
            lines.append(line)
        return lines


class Server:
    """The fork server: ``run(argv, fault)`` runs ``interpddpm <argv>`` in a forked child."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.count = 0
        warm_up = ["train", "--quiet", "--set", *TINY, "steps=2", f"output_dir={workdir}/warm-up"]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, json.dumps(warm_up)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=workdir,
            env=_env(),
        )

    def run(self, argv: list[str], fault: dict | None = None) -> Outcome:
        self.count += 1
        logs = self.workdir / f"command-{self.count}"
        request = {
            "argv": argv,
            "fault": fault,
            "cwd": str(self.workdir),
            "stdout": f"{logs}.out",
            "stderr": f"{logs}.err",
        }
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        assert reply, "the fork server died"
        status = json.loads(reply)["status"]
        return Outcome(status, Path(f"{logs}.out").read_text(), Path(f"{logs}.err").read_text())

    def train(self, out: Path, recipe: list[str], *extra: str, fault: dict | None = None):
        return self.run(["train", "--quiet", *extra, "--set", *recipe, f"output_dir={out}"], fault)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.kill()  # its children have all been reaped; skip torch's slow exit
        self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("fork-server"))
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def reference(server, tmp_path_factory):
    """Uninterrupted runs of each recipe: the digests of their final model, EMA, optimizer."""
    base = tmp_path_factory.mktemp("reference")
    digests = {}
    for name, recipe in (("plain", PLAIN), ("interp", INTERP)):
        outcome = server.train(base / name, recipe)
        assert outcome.status == 0, outcome.err
        digests[name] = final_digests(base / name)
    return digests


def final_digests(run: Path) -> dict[str, str]:
    """sha256 of the final checkpoint's tensor files (its state.json lists them; checked)."""
    checkpoint = list_checkpoints(run)[-1]
    table = json.loads((checkpoint / "state.json").read_text())["sha256"]
    assert {name: artifacts.sha256_file(checkpoint / name) for name in table} == table
    return {name: table[name] for name in TENSOR_FILES}


def assert_exact(run: Path, digests: dict[str, str], steps: int = 8) -> None:
    """The run ended at ``steps`` with the uninterrupted run's files and a log with each step
    once; no temporary folder or file is left behind."""
    assert json.loads((list_checkpoints(run)[-1] / "state.json").read_text())["step"] == steps
    assert final_digests(run) == digests
    assert [r["step"] for r in read_metrics(run)] == list(range(1, steps + 1))
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------- killed at a chosen moment
KILLS = [
    ("plain", {"kind": "kill_in_write", "file": "model.safetensors", "step": 4}),
    ("plain", {"kind": "kill_in_write", "file": "optimizer.safetensors", "step": 4}),
    ("plain", {"kind": "kill_before_rename", "step": 4}),
    ("plain", {"kind": "kill_after_rename", "step": 4}),
    ("plain", {"kind": "kill_in_prune", "victim": 2}),
    ("interp", {"kind": "kill_in_write", "file": "ema.safetensors", "step": 6}),
    ("interp", {"kind": "kill_in_prune", "victim": 2}),
]


@pytest.mark.parametrize(
    ("recipe", "fault"), KILLS, ids=lambda v: str(v.get("kind", v)) if isinstance(v, dict) else v
)
def test_a_run_killed_at_any_moment_resumes_exactly(server, reference, tmp_path, recipe, fault):
    run = tmp_path / "run"
    recipe_args = PLAIN if recipe == "plain" else INTERP
    killed = server.train(run, recipe_args, fault=fault)
    assert killed.status == -9, f"the fault did not fire: {killed.err}"
    resumed = server.train(run, recipe_args)
    assert resumed.status == 0, resumed.err
    assert resumed.error_lines() == []
    if fault["kind"] in ("kill_in_write", "kill_before_rename"):  # its temp folder was left
        assert f".tmp-checkpoint-{fault['step']:07d}" in resumed.err  # removed, with a warning
    assert_exact(run, reference[recipe])
    assert [c.name for c in list_checkpoints(run)] == ["checkpoint-0000006", "checkpoint-0000008"]
    assert not list(run.glob("corrupt-*"))


def test_sigterm_stops_like_ctrl_c_and_resumes_exactly(server, reference, tmp_path):
    run = tmp_path / "run"
    for signal_name, status in (("SIGTERM", 143), ("SIGHUP", 129), ("SIGINT", 130)):
        fault = {"kind": "signal_at_step", "step": 5, "signal": signal_name}
        stopped = server.train(run, PLAIN, fault=fault)
        assert stopped.status == status, stopped.err
        assert stopped.err.strip().splitlines() == [
            f"stopped at step 5, last checkpoint {run / 'checkpoint-0000004'} "
            "(run the same command again to resume from it)"
        ]
    resumed = server.train(run, PLAIN)
    assert resumed.status == 0, resumed.err
    assert_exact(run, reference["plain"])


def test_an_ignored_sighup_stays_ignored():
    """``nohup`` starts a job with SIGHUP ignored so that it outlives its terminal: the
    command must not turn a closed terminal back into a stop; SIGTERM still stops it."""
    from interpddpm import cli

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with cli._sigterm_interrupts():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, signal.SIG_DFL)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        with cli._sigterm_interrupts():
            handler = signal.getsignal(signal.SIGHUP)
            assert callable(handler)
            with pytest.raises(cli.Terminated) as stop:
                handler(signal.SIGHUP, None)
            assert cli._interrupt_status(stop.value) == 129
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, before)


# ---------------------------------------------------------------- a full disk
def test_a_full_disk_mid_write_is_one_line_and_resumes_exactly(server, reference, tmp_path):
    """safetensors reports a full disk as its own SafetensorError (not an OSError)."""
    run = tmp_path / "run"
    fault = {"kind": "disk_full", "file": "optimizer.safetensors", "step": 4}
    full = server.train(run, PLAIN, fault=fault)
    assert full.status == 2, full.err
    (line,) = full.err.strip().splitlines()
    assert line.startswith(f"error: cannot write checkpoint {run / 'checkpoint-0000004'}"), line
    assert "No space left on device" in line
    assert f"resumes from {run / 'checkpoint-0000002'}" in line
    assert not (run / ".tmp-checkpoint-0000004").exists()  # the partial write freed its space
    resumed = server.train(run, PLAIN)
    assert resumed.status == 0, resumed.err
    assert_exact(run, reference["plain"])


DISK = r"""
import contextlib, io, json, shutil, subprocess, sys
from pathlib import Path

import interpddpm.cli

disk, logs, recipe = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "interpddpm-test", disk], check=True)
outcomes = {}


def train(name):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        argv = ["train", "--quiet", "--set", *recipe, f"output_dir={disk / 'run'}"]
        outcomes[name] = [interpddpm.cli.main(argv), err.getvalue()]


train("full")  # 4 MiB: one checkpoint of the tiny run fits, not two
subprocess.run(["mount", "-o", "remount,size=64m", disk], check=True)
train("resumed")
shutil.copytree(disk / "run", logs / "run")
shutil.rmtree(disk / "run")
with contextlib.suppress(OSError), open(disk / "filler", "wb") as f:
    while True:
        f.write(bytes(1 << 20))
train("already-full")
(logs / "outcomes.json").write_text(json.dumps(outcomes))
"""


@pytest.mark.slow
def test_a_real_full_disk(reference, tmp_path):
    """A 4 MiB tmpfs (in a private mount namespace: nothing leaks to the host) holds one
    checkpoint of the tiny run, not two: the second write fails with one line, exit 2; after
    the disk grows, the run resumes exactly. A disk full at the start is named at once."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        pytest.skip("needs Linux and unshare (a tmpfs in a private mount namespace)")
    disk, logs = tmp_path / "disk", tmp_path / "logs"
    disk.mkdir(), logs.mkdir()
    userns = ["unshare", "--user", "--map-root-user", "--mount"]
    probe = subprocess.run([*userns, "mount", "-t", "tmpfs", "x", str(disk)], capture_output=True)
    if probe.returncode != 0:
        why = probe.stderr.decode(errors="replace").strip()
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {why}")
    done = subprocess.run(
        [*userns, sys.executable, "-c", DISK, str(disk), str(logs), *PLAIN],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    outcomes = json.loads((logs / "outcomes.json").read_text())

    status, err = outcomes["full"]
    (line,) = err.strip().splitlines()
    assert status == 2
    assert line.startswith(f"error: cannot write checkpoint {disk / 'run' / 'checkpoint-0000004'}")
    assert "No space left on device" in line
    assert line.endswith(f"it resumes from {disk / 'run' / 'checkpoint-0000002'}.")
    status, err = outcomes["resumed"]
    assert status == 0, err
    assert_exact(logs / "run", reference["plain"])
    status, err = outcomes["already-full"]
    assert status == 2
    assert err.strip().splitlines() == [
        f"error: output_dir '{disk / 'run'}' has no space left (No space left on device); "
        "free some space there, or choose another folder."
    ]


# ---------------------------------------------------------------- each file a run keeps, damaged
def flip_byte(path: Path, offset: int = -10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def edit_state(path: Path, change, *, reseal: bool = False) -> None:
    state = json.loads(path.read_text())
    change(state)
    path.write_text(artifacts.seal_record(state) if reseal else json.dumps(state, indent=1))


def unsealed_step(step: int):
    def change(state: dict) -> None:
        state.pop(artifacts.RECORD_DIGEST)
        state["step"] = step

    return change


DAMAGES = {
    "model flipped": ("model.safetensors", flip_byte),
    "ema flipped": ("ema.safetensors", flip_byte),
    "optimizer truncated": ("optimizer.safetensors", truncate),
    "model deleted": ("model.safetensors", Path.unlink),
    "state.json flipped": ("state.json", lambda p: flip_byte(p, 20)),
    "state.json truncated": ("state.json", truncate),
    "state.json step edited": ("state.json", lambda p: edit_state(p, lambda s: s.update(step=3))),
    # the digest key removed (an "older record") AND the step edited: used to be trusted, and
    # the resume deleted the original checkpoint-0000004 when it saved step 4 again
    "state.json unsealed, step edited": ("state.json", lambda p: edit_state(p, unsealed_step(3))),
}


@pytest.fixture(scope="module")
def half_run(server, tmp_path_factory):
    """The plain recipe stopped after 4 steps (checkpoints 2 and 4), to copy and damage."""
    run = tmp_path_factory.mktemp("half") / "run"
    outcome = server.train(run, PLAIN, "--stop-after", "4")
    assert outcome.status == 0, outcome.err
    return run


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_checkpoint_is_kept_aside_and_the_run_resumes_exactly(
    server, reference, half_run, tmp_path, damage
):
    run = tmp_path / "run"
    shutil.copytree(half_run, run)
    name, hurt = DAMAGES[damage]
    hurt(run / "checkpoint-0000004" / name)
    before = sorted(p.name for p in (run / "checkpoint-0000004").iterdir())
    resumed = server.train(run, PLAIN)
    assert resumed.status == 0, resumed.err
    assert "checkpoint-0000004 is unusable" in resumed.err
    assert "using checkpoint-0000002 instead; renamed to corrupt-checkpoint-0000004" in resumed.err
    assert_exact(run, reference["plain"])
    # nothing the user had is deleted: the damaged folder is kept, as it was
    assert sorted(p.name for p in (run / "corrupt-checkpoint-0000004").iterdir()) == before


def test_damaged_logs_and_lock_info_are_repaired(server, reference, half_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(half_run, run)
    log = run / "metrics.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], "#garbage", *lines[1:], '{"step": 5, "lo']) + "\n")
    info = run.with_name(run.name + ".lock.info")
    info.write_text("{not json")
    resumed = server.train(run, PLAIN)
    assert resumed.status == 0, resumed.err
    assert "line 2: dropping an undecodable line" in resumed.err
    assert "line 6: dropping an undecodable line" in resumed.err
    assert_exact(run, reference["plain"])


def test_pruning_never_deletes_what_a_user_put_there(server, reference, half_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(half_run, run)
    (run / "checkpoint-0000001").mkdir()  # older than the run's: pruning reaches it first
    (run / "checkpoint-0000001" / "notes.txt").write_text("mine")
    shutil.copytree(run / "checkpoint-0000002", run / "checkpoint-best")  # not a step: ignored
    resumed = server.train(run, PLAIN)
    assert resumed.status == 0, resumed.err
    assert "holds files a checkpoint does not (notes.txt); renamed to corrupt-" in resumed.err
    assert (run / "corrupt-checkpoint-0000001" / "notes.txt").read_text() == "mine"
    assert (run / "checkpoint-best" / "state.json").is_file()
    assert_exact(run, reference["plain"])


def test_a_diverging_run_is_one_line(server, tmp_path):
    run = tmp_path / "run"
    outcome = server.train(run, [*TINY, "steps=4", "lr=1e30"])
    assert outcome.status == 2
    (line,) = outcome.err.strip().splitlines()
    assert re.fullmatch(
        rf"error: loss became (nan|inf) at step \d; lower lr or lambda_start \(no checkpoint yet "
        rf"in {re.escape(str(run))}\)\.",
        line,
    ), line


# ---------------------------------------------------------------- checkpoint order past 10^7 steps
def test_checkpoint_order_is_numeric_past_ten_million_steps(server, tmp_path):
    """A run at step 9,999,998 (its checkpoint renamed and resealed) trains on past 10^7:
    the new checkpoint-10000000 sorts after checkpoint-9999998, pruning removes the old one."""
    run = tmp_path / "run"
    recipe = [*TINY, "checkpoint_every=2", "steps=10000004"]
    assert server.train(run, [*TINY, "steps=2", "checkpoint_every=2"]).status == 0
    old = run / "checkpoint-9999998"
    (run / "checkpoint-0000002").rename(old)

    def to_step(state: dict) -> None:
        state["step"], state["config"]["steps"] = 9999998, 10000004

    edit_state(old / "state.json", to_step, reseal=True)
    log = run / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": 9999998 - i}) + "\n" for i in (1, 0)))
    first = server.train(run, recipe, "--stop-after", "4")
    assert first.status == 0, first.err
    assert "resuming" in first.out and "from step 9999998" in first.out
    assert [c.name for c in list_checkpoints(run)] == ["checkpoint-10000000", "checkpoint-10000002"]
    again = server.train(run, recipe)
    assert again.status == 0, again.err
    assert "from step 10000002" in again.out
    assert [r["step"] for r in read_metrics(run)][-3:] == [10000002, 10000003, 10000004]


def test_list_checkpoints_sorts_by_step_and_ignores_other_names(tmp_path) -> None:
    for name in (
        "checkpoint-10000000",
        "checkpoint-9999995",
        "checkpoint-0000002",
        "checkpoint-best",
    ):
        (tmp_path / name).mkdir()
    assert [c.name for c in list_checkpoints(tmp_path)] == [
        "checkpoint-0000002",
        "checkpoint-9999995",
        "checkpoint-10000000",
    ]


# ---------------------------------------------------------------- every field, wrong type or range
#: One wrong-type value per TrainConfig field, refused by TrainConfig with this phrase.
WRONG_TYPES = {
    "dataset": (7, "dataset: expected a string"),
    "image_size": ("big", "image_size: expected an int, got 'big'"),
    "dataset_length": (1.5, "dataset_length: expected an int (a whole number), got 1.5"),
    "data_seed": ([1], "data_seed: expected an int, got [1]"),
    "preset": (3, "preset: expected a string"),
    "init_from": (3, "init_from: expected a string or null"),
    "autoencoder": (True, "autoencoder: expected a string or null"),
    "steps": ("many", "steps: expected an int, got 'many'"),
    "batch_size": (True, "batch_size: expected an int, got True"),
    "lr": ("fast", "lr: expected a float (a number like 2e-4), got 'fast'"),
    "lr_warmup_steps": ("x", "lr_warmup_steps: expected an int"),
    "weight_decay": (None, "weight_decay: expected a float"),
    "adam_betas": ([0.9], "adam_betas: expected two numbers, e.g. [0.9, 0.999]"),
    "grad_clip": ("off", "grad_clip: expected a float"),
    "ema_decay": ([0.9], "ema_decay: expected a float"),
    "ema_warmup": ("yes", "ema_warmup: expected a bool (true or false), got 'yes'"),
    "snr_gamma": ("x", "snr_gamma: expected a float or null"),
    "mixed_precision": (16, "mixed_precision: expected a string"),
    "num_train_timesteps": (1e3 + 0.5, "num_train_timesteps: expected an int (a whole number)"),
    "beta_schedule": (1, "beta_schedule: expected a string"),
    "seed": (1.5, "seed: expected an int (a whole number), got 1.5"),
    "interpretable": (1, "interpretable: expected a bool (true or false), got 1"),
    "concepts": ([1], "concepts: expected a list of names, e.g. [eyes, nose]"),
    "dilation": ("wide", "dilation: expected an int"),
    "baseline": (0, "baseline: expected a string"),
    "game_value": (0, "game_value: expected a string"),
    "lambda_start": ("big", "lambda_start: expected a float"),
    "lambda_floor": ([], "lambda_floor: expected a float"),
    "lambda_decay_steps": ("x", "lambda_decay_steps: expected an int"),
    "ie_sub_batch": (2.5, "ie_sub_batch: expected an int (a whole number)"),
    "ie_exact_max_players": ("all", "ie_exact_max_players: expected an int"),
    "ie_samples": (None, "ie_samples: expected an int"),
    "ie_rows": ("some", "ie_rows: expected an int"),
    "ie_constraint": (2, "ie_constraint: expected a string"),
    "ie_outside": (1, "ie_outside: expected a string"),
    "ie_t_min": ("x", "ie_t_min: expected an int"),
    "ie_t_weight": (1, "ie_t_weight: expected a string"),
    "teacher_weight": ("x", "teacher_weight: expected a float"),
    "trainable": (["all"], "trainable: expected a string"),
    "output_dir": (7, "output_dir: expected a string (quote it in YAML)"),
    "checkpoint_every": ("x", "checkpoint_every: expected an int"),
    "checkpoint_minutes": ("x", "checkpoint_minutes: expected a float or null"),
    "keep_checkpoints": ("all", "keep_checkpoints: expected an int"),
    "log_every": (0.5, "log_every: expected an int (a whole number)"),
}

#: Values of the right type out of their field's range, refused by TrainConfig.
OUT_OF_RANGE = [
    ({"dataset": "imagenet"}, "unknown dataset 'imagenet'; valid: toyfaces"),
    ({"image_size": 0}, "image_size must be a positive int, got 0"),
    ({"image_size": 8}, "toy faces are drawn at 16 px or more"),
    ({"dataset_length": -1}, "dataset_length must be a positive int, got -1"),
    ({"data_seed": -1}, "data_seed must be an int >= 0, got -1"),
    ({"data_seed": 2**64}, "data_seed must be an int in [0, 2**64)"),
    ({"steps": 0}, "steps must be a positive int, got 0"),
    ({"steps": 1e30}, "steps=1e+30 is more than the limit of 1,000,000,000 steps"),
    ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
    ({"lr": 0}, "lr must be a positive finite number, got 0"),
    ({"lr": "inf"}, "lr must be a positive finite number, got inf"),
    ({"lr_warmup_steps": -5}, "lr_warmup_steps must be an int >= 0, got -5"),
    ({"lr_warmup_steps": 1e21}, "lr_warmup_steps=1e+21 is more than the limit of 1,000,000,000"),
    ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0, got -0.1"),
    ({"adam_betas": [0.9, 1.0]}, "adam_betas must be two numbers in [0, 1)"),
    ({"grad_clip": "nan"}, "grad_clip must be a finite number >= 0, got nan"),
    ({"ema_decay": 1}, "ema_decay must be in (0, 1), got 1.0"),
    ({"snr_gamma": 0}, "snr_gamma must be positive or None, got 0.0"),
    ({"mixed_precision": "fp8"}, "mixed_precision must be no, fp16 or bf16, got 'fp8'"),
    ({"num_train_timesteps": 0}, "num_train_timesteps must be a positive int, got 0"),
    ({"num_train_timesteps": 10**12}, "num_train_timesteps=1e+12 is more than the limit"),
    ({"beta_schedule": "cos"}, "unknown beta_schedule 'cos'"),
    ({"seed": -1}, "seed must be an int >= 0, got -1"),
    ({"seed": 2**64}, "seed must be an int in [0, 2**64)"),
    ({"concepts": ["nsoe"]}, "unknown concept(s) 'nsoe'"),
    ({"concepts": ["nose", "nose"]}, "concepts lists 'nose' more than once"),
    ({"interpretable": True, "concepts": []}, "interpretable training needs at least one concept"),
    ({"dilation": -1}, "dilation must be an int >= 0, got -1"),
    ({"baseline": "black"}, "baseline must be one of"),
    ({"game_value": "max"}, "game_value must be 'region_mean' or 'pixel'"),
    ({"lambda_start": -1}, "lambda_start must be a finite number >= 0, got -1.0"),
    ({"lambda_floor": "inf"}, "lambda_floor must be a finite number >= 0, got inf"),
    ({"lambda_decay_steps": 0}, "lambda_decay_steps must be a positive int, got 0"),
    ({"lambda_decay_steps": 10**10}, "lambda_decay_steps=1e+10 is more than the limit"),
    ({"ie_sub_batch": 0}, "ie_sub_batch must be a positive int, got 0"),
    ({"ie_exact_max_players": 11}, "ie_exact_max_players=11: the exact L_IE needs 2**K"),
    ({"ie_samples": -3}, "ie_samples must be a positive int, got -3"),
    ({"ie_rows": 1}, "ie_rows must be None or at least 2"),
    ({"interpretable": True, "ie_rows": 4}, "have only 2**K - 1 = 3 coalitions"),
    ({"ie_constraint": "both"}, "ie_constraint must be one of"),
    ({"ie_outside": "many"}, "ie_outside must be one of"),
    ({"ie_outside": "split"}, "set ie_constraint='one_sided' too"),
    ({"ie_t_min": 1000}, "ie_t_min must be in [0, num_train_timesteps=1000), got 1000"),
    ({"ie_t_weight": "snr"}, "ie_t_weight must be one of"),
    ({"teacher_weight": -1}, "teacher_weight must be a finite number >= 0, got -1.0"),
    ({"teacher_weight": 1}, "teacher_weight > 0 needs init_from"),
    ({"trainable": "encoder"}, "trainable must be one of"),
    ({"checkpoint_every": 0}, "checkpoint_every must be a positive int, got 0"),
    ({"checkpoint_every": 10**10}, "checkpoint_every=1e+10 is more than the limit"),
    ({"checkpoint_minutes": 0}, "checkpoint_minutes must be a positive number or None, got 0"),
    ({"keep_checkpoints": 0}, "keep_checkpoints must be a positive int, got 0"),
    ({"log_every": -1}, "log_every must be a positive int, got -1"),
    ({"log_every": 10**10}, "log_every=1e+10 is more than the limit"),
]

#: Values TrainConfig takes but the machine or the files cannot: train() refuses them before it
#: allocates or writes anything (``{tmp}``: the test's folder).
REFUSED_AT_START = [
    ({"preset": "huge"}, "unknown preset 'huge'; valid presets: tiny"),
    ({"init_from": "{tmp}/no-such-run"}, "init_from '{tmp}/no-such-run' is neither"),
    ({"autoencoder": "{tmp}/ae"}, "train it with interpddpm.latent.train(config)"),
    ({"output_dir": "{tmp}/a-file"}, "is an existing file, not a folder"),
    ({"batch_size": 10**12}, "batch_size=1000000000000 at image_size=16 needs at least"),
    ({"dataset_length": 10**12}, "dataset_length=1000000000000 needs at least"),
    ({"image_size": 2**20}, "at image_size=1048576 needs at least"),
    ({"ie_samples": 10**9, "interpretable": True, "ie_exact_max_players": 1}, "needs at least"),
    ({"mixed_precision": "fp16"}, "mixed_precision='fp16' asks for fp16 autocast, which"),
]


def _fill(value, tmp: Path):
    return value.replace("{tmp}", str(tmp)) if isinstance(value, str) else value


def test_the_bad_input_table_covers_every_field() -> None:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(WRONG_TYPES) == fields
    ranged = {k for changes, _ in OUT_OF_RANGE + REFUSED_AT_START for k in changes}
    # every field but a bool has a range row
    assert fields - ranged == {"ema_warmup"}


@pytest.mark.parametrize("field", list(WRONG_TYPES))
def test_a_wrong_type_is_refused(field) -> None:
    value, phrase = WRONG_TYPES[field]
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({field: value})
    assert phrase in str(info.value)


@pytest.mark.parametrize(("changes", "phrase"), OUT_OF_RANGE, ids=lambda v: str(v)[:40])
def test_an_out_of_range_value_is_refused(changes, phrase) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(changes)
    assert phrase in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("changes", "phrase"), REFUSED_AT_START, ids=lambda v: str(v)[:40])
def test_what_the_machine_or_the_files_cannot_hold_is_refused_at_start(
    tmp_path, changes, phrase
) -> None:
    (tmp_path / "a-file").write_text("mine")
    small = dict(preset="tiny", image_size=16, batch_size=2, dataset_length=8, steps=2)
    changes = {k: _fill(v, tmp_path) for k, v in changes.items()}
    config = TrainConfig.from_dict({**small, "output_dir": str(tmp_path / "run"), **changes})
    with pytest.raises(UserError) as info:
        train(config, progress=False, device="cpu")
    message = str(info.value)
    assert _fill(phrase, tmp_path) in message and "\n" not in message
    assert list_checkpoints(config.output_dir) == []

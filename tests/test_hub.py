"""Published runs: ``interpddpm publish`` uploads only what loading a finished run needs, and
``runs.ensure`` fetches a missing run from a source (a local folder laid out like the hub repo,
or the hub through ``snapshot_download``, here from a fake offline cache), verifies it and loads
it without training. Nothing here touches the network."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
import torch
from huggingface_hub.utils import filter_repo_objects
from test_training import TINY  # the tiny run of the training tests

from interpddpm import cli, hub, runs, training
from interpddpm.errors import UserError
from interpddpm.profiles import ENV_CACHE, cache_dir
from interpddpm.training import TrainConfig, list_checkpoints, load_run_model, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def tiny(steps: int = 4) -> TrainConfig:
    return TrainConfig(**TINY, steps=steps)


def run_name(config: TrainConfig) -> str:
    return f"tiny-{config.fingerprint()}"


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_run_model(a).state_dict(), load_run_model(b).state_dict()
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


class FakeHub:
    """Stands for ``HfApi``: records the calls and keeps what ``upload_folder`` would commit in
    a local folder laid out like the repo (``remote/<revision>/...``)."""

    def __init__(self, remote: Path) -> None:
        self.remote = remote
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def root(self, revision: str | None) -> Path:
        return self.remote / (revision or "main")

    def create_repo(self, repo_id: str, **kw: Any) -> None:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kw}))

    def create_branch(self, repo_id: str, **kw: Any) -> None:
        self.calls.append(("create_branch", {"repo_id": repo_id, **kw}))

    def upload_folder(self, **kw: Any) -> None:
        self.calls.append(("upload_folder", kw))
        folder = Path(kw["folder_path"])
        rel = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        # the selection rule of the real upload_folder
        for f in filter_repo_objects(rel, allow_patterns=kw["allow_patterns"]):
            target = self.root(kw.get("revision")) / kw["path_in_repo"] / f
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / f, target)

    def file_exists(self, repo_id: str, filename: str, **kw: Any) -> bool:
        return (self.root(kw.get("revision")) / filename).is_file()

    def upload_file(self, **kw: Any) -> None:
        self.calls.append(("upload_file", kw))
        target = self.root(kw.get("revision")) / kw["path_in_repo"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(kw["path_or_fileobj"])

    def called(self, name: str) -> list[dict[str, Any]]:
        return [kw for n, kw in self.calls if n == name]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run (checkpoints at steps 2 and 4), never modified by the tests."""
    run = tmp_path_factory.mktemp("trained") / "runs" / run_name(tiny())
    train(tiny().replace(output_dir=str(run)), progress=False)
    assert [c.name for c in list_checkpoints(run)] == ["checkpoint-0000002", "checkpoint-0000004"]
    return run


@pytest.fixture
def published(trained: Path, tmp_path: Path) -> Path:
    """A folder laid out like a hub repo holding the published run (what publish_run sent)."""
    fake = FakeHub(tmp_path / "remote")
    hub.publish_run(trained, "me/runs", api=fake)
    return fake.root(None)


@pytest.fixture(autouse=True)
def no_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No source of published runs unless a test sets one, and a fresh empty smoke cache."""
    monkeypatch.setattr(runs, "_published", runs._FROM_ENV)
    monkeypatch.delenv(hub.ENV_RUNS_FROM, raising=False)
    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cache"))
    return cache_dir("smoke") / "runs"


def assert_portable(copy: Path, run: Path, optimizer: bool = True) -> None:
    """``copy`` of ``run`` names no path of this machine: its state.json (sealed again, so it
    verifies) gives the run folder as ``runs/<name>``, and the config is the same run's; with
    ``optimizer=False`` (a record) the optimizer state is left out, everything else kept."""
    newest = list_checkpoints(copy)[-1].name
    text = (copy / newest / "state.json").read_text()
    assert str(run.parent) not in text and str(Path.cwd()) not in text
    saved = training.read_verified_record(copy / newest, "state.json", "")
    assert saved["config"]["output_dir"] == f"runs/{run.name}"
    original = training.read_verified_record(run / newest, "state.json", "")
    if not optimizer:
        original.pop("optimizer")
        original["sha256"].pop("optimizer.safetensors")
    assert {k: v for k, v in saved.items() if k != "config"} == {
        k: v for k, v in original.items() if k != "config"
    }
    assert TrainConfig.from_dict(saved["config"]).fingerprint() == (
        TrainConfig.from_dict(original["config"]).fingerprint()
    )


def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any training step from now on fails the test."""

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a training step ran")

    monkeypatch.setattr(training.loop, "training_losses", boom)


# ------------------------------------------------------------------------------------------
# publish
# ------------------------------------------------------------------------------------------
def test_publish_uploads_the_final_checkpoint_under_runs_name(trained: Path, tmp_path) -> None:
    fake = FakeHub(tmp_path / "remote")
    done = hub.publish_run(trained, "me/runs", private=True, api=fake)
    name = trained.name
    assert fake.called("create_repo") == [
        {"repo_id": "me/runs", "repo_type": "model", "private": True, "exist_ok": True}
    ]
    assert not fake.called("create_branch")
    (upload,) = fake.called("upload_folder")
    assert upload["repo_id"] == "me/runs" and upload["path_in_repo"] == f"runs/{name}"
    assert Path(upload["folder_path"]).name == name  # a portable copy of the run
    assert upload["delete_patterns"] == ["checkpoint-*"]  # a stale checkpoint of this run
    newest = "checkpoint-0000004"
    want = {f"{newest}/{f}" for f in ("state.json", "model.safetensors", "ema.safetensors")}
    want |= {f"{newest}/optimizer.safetensors", "metrics.jsonl"}
    remote_run = fake.root(None) / "runs" / name
    assert set(files_of(remote_run)) == want == set(done.files)  # no older checkpoint, no lock
    state = f"{newest}/state.json"
    assert all(files_of(remote_run)[f] == (trained / f).read_bytes() for f in want - {state})
    assert_portable(remote_run, trained)
    # a model card at the root, saying what the run is and how to load it
    (card,) = fake.called("upload_file")
    text = card["path_or_fileobj"].decode()
    assert card["path_in_repo"] == "README.md"
    assert name in text and "INTERPDDPM_RUNS_FROM=me/runs" in text and "steps: 4" in text
    assert str(trained.parent) not in text  # no path of this machine
    # a second publish keeps the card the repo already has
    hub.publish_run(trained, "me/runs", api=fake)
    assert len(fake.called("upload_file")) == 1 and len(fake.called("upload_folder")) == 2


def test_publish_to_a_branch_creates_it(trained: Path, tmp_path) -> None:
    fake = FakeHub(tmp_path / "remote")
    hub.publish_run(trained, "me/runs", revision="v1", api=fake)
    assert fake.called("create_branch") == [
        {"repo_id": "me/runs", "branch": "v1", "repo_type": "model", "exist_ok": True}
    ]
    assert fake.called("upload_folder")[0]["revision"] == "v1"
    card = (fake.root("v1") / "README.md").read_text()
    assert "INTERPDDPM_RUNS_FROM=me/runs@v1" in card and 'revision="v1"' in card


def test_publish_refuses_an_unfinished_or_unverified_run(tmp_path) -> None:
    run = tmp_path / "runs" / run_name(tiny())
    train(tiny().replace(output_dir=str(run)), stop_after=2, progress=False)
    fake = FakeHub(tmp_path / "remote")
    with pytest.raises(hub.PublishError, match=r"unfinished \(step 2 of 4\).*finish the run"):
        hub.publish_run(run, "me/runs", api=fake)
    state = list_checkpoints(run)[-1] / "state.json"
    state.write_text(state.read_text().replace('"step": 2', '"step": 4'))  # edited: unsealed
    with pytest.raises(hub.PublishError, match="newest checkpoint of .* does not verify"):
        hub.publish_run(run, "me/runs", api=fake)
    with pytest.raises(hub.PublishError, match="holds no checkpoint"):
        hub.publish_run(tmp_path, "me/runs", api=fake)
    with pytest.raises(hub.PublishError, match="not a hub repo id"):
        hub.publish_run(run, "no-owner", api=fake)
    assert fake.calls == [], "nothing is sent for a refused run"


def test_cli_publish_finds_a_run_by_name(trained, no_source, monkeypatch, capsys, tmp_path) -> None:
    shutil.copytree(trained, no_source / trained.name)
    fake = FakeHub(tmp_path / "remote")
    monkeypatch.setattr(hub, "_hub_api", lambda: fake)
    argv = ["publish", trained.name, "--repo-id", "me/runs", "--profile", "smoke"]
    assert cli.main([*argv, "--revision", "v1"]) == 0
    out = capsys.readouterr().out
    assert f"published runs/{trained.name} (step 4, 5 files)" in out
    assert "INTERPDDPM_RUNS_FROM=me/runs@v1" in out
    assert cli.main(["publish", "nope", "--repo-id", "me/runs", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no run 'nope'") and trained.name in err and err.count("\n") == 1
    # --folder records the run locally instead (book/data/runs-cpu is made this way)
    folder = tmp_path / "recorded"
    assert cli.main(["publish", trained.name, "--folder", str(folder), "--profile", "smoke"]) == 0
    assert f"recorded {trained.name} in {folder / 'runs' / trained.name}" in capsys.readouterr().out
    assert files_of(folder / "runs" / trained.name).keys() == {
        f"checkpoint-0000004/{f}" for f in ("state.json", "model.safetensors", "ema.safetensors")
    } | {"metrics.jsonl"}  # a record is for loading: no optimizer state
    assert cli.main(["publish", trained.name, "--profile", "smoke"]) == 2  # no target


# ------------------------------------------------------------------------------------------
# fetch, from a local folder laid out like the repo
# ------------------------------------------------------------------------------------------
def test_ensure_fetches_a_published_run_and_does_not_train_it(
    trained: Path, published: Path, no_source: Path, monkeypatch, capsys
) -> None:
    runs.use_published(published)
    name = trained.name
    no_training(monkeypatch)
    result = runs.ensure(tiny().replace(output_dir=str(no_source / name)), progress=False)
    assert capsys.readouterr().out.splitlines() == [f"fetched {name} from {published}"]
    local = no_source / name
    assert result.step == 4 and result.output_dir == local
    assert [c.name for c in list_checkpoints(local)] == ["checkpoint-0000004"]
    assert files_of(local) == files_of(published / "runs" / name)  # not a line of log added
    assert same_weights(local, trained)
    assert sorted(p.name for p in no_source.iterdir() if not p.name.endswith(".lock")) == [name]
    # the second time the local run is loaded: nothing is fetched
    runs.ensure(tiny().replace(output_dir=str(local)), progress=False)
    assert "fetched" not in capsys.readouterr().out


def test_a_started_run_folder_without_checkpoints_is_kept_aside(
    trained: Path, published: Path, no_source: Path, capsys
) -> None:
    local = no_source / trained.name
    local.mkdir(parents=True)
    (local / "metrics.jsonl").write_text('{"step": 1}\n')  # a start interrupted before step 2
    runs.use_published(published)
    assert runs.ensure(tiny().replace(output_dir=str(local)), progress=False).step == 4
    assert f"fetched {trained.name}" in capsys.readouterr().out
    assert (no_source / f"replaced-{trained.name}" / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_a_source_without_the_run_trains_it_here(tmp_path, no_source: Path, capsys) -> None:
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    runs.use_published(tmp_path / "empty")
    config = tiny(2)
    result = runs.ensure(config.replace(output_dir=str(no_source / run_name(config))))
    out = capsys.readouterr().out
    assert f"{tmp_path / 'empty'} has no runs/{run_name(config)}; training it here" in out
    assert result.step == 2 and list_checkpoints(result.output_dir)


def test_local_checkpoints_are_never_replaced(published: Path, no_source: Path, capsys) -> None:
    config = tiny()
    local = no_source / run_name(config)
    train(config.replace(output_dir=str(local)), stop_after=2, progress=False)
    mine = files_of(local / "checkpoint-0000002")
    runs.use_published(published)
    capsys.readouterr()
    runs.ensure(config.replace(output_dir=str(local)), progress=False)  # resumes its own run
    assert "fetched" not in capsys.readouterr().out
    assert files_of(local / "checkpoint-0000002") == mine  # the published run has no step 2


def test_a_published_run_of_another_config_is_refused(
    trained: Path, published: Path, no_source: Path
) -> None:
    wanted = tiny(6)  # another fingerprint, under whose name the source holds the 4-step run
    (published / "runs" / trained.name).rename(published / "runs" / run_name(wanted))
    runs.use_published(published)
    local = no_source / run_name(wanted)
    with pytest.raises(hub.PublishedRunsError) as caught:
        runs.ensure(wanted.replace(output_dir=str(local)), progress=False)
    message = str(caught.value)
    assert f"fingerprint {tiny().fingerprint()}, wanted {wanted.fingerprint()}" in message
    assert "steps: 4 -> 6" in message
    assert not local.exists() or not any(local.iterdir())
    assert not [p for p in no_source.iterdir() if p.name.startswith(".fetch-")]


def test_a_corrupted_published_run_is_refused(trained: Path, published: Path, no_source) -> None:
    weights = published / "runs" / trained.name / "checkpoint-0000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"corrupt!")
    runs.use_published(published)
    with pytest.raises(hub.PublishedRunsError, match="model.safetensors does not match"):
        runs.ensure(tiny().replace(output_dir=str(no_source / trained.name)), progress=False)
    assert not list_checkpoints(no_source / trained.name)


def test_bad_sources_fail_when_set(tmp_path) -> None:
    with pytest.raises(UserError, match="neither an existing folder nor a hub repo id"):
        runs.use_published(str(tmp_path / "missing" / "folder"))
    assert hub.parse_source("me/runs@v1") == hub.Source("me/runs@v1", "me/runs", "v1")
    assert hub.parse_source(tmp_path).folder == tmp_path


# ------------------------------------------------------------------------------------------
# fetch, through snapshot_download from a fake Hugging Face cache (offline)
# ------------------------------------------------------------------------------------------
@pytest.fixture
def offline_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache that snapshot_download reads, with the network off."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variables once, when imported
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def cache_repo(cache: Path, repo_id: str, files: Path, ref: str = "main") -> Path:
    """Lay ``files`` out as huggingface_hub caches commit :data:`COMMIT` of ``repo_id``:
    ``models--owner--name/{blobs/<sha>, snapshots/<commit>/<path> -> blob, refs/<ref>}``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    for rel, data in files_of(files).items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(COMMIT)
    return snapshot


def test_ensure_fetches_through_snapshot_download_offline(
    trained: Path, published: Path, offline_hf_cache: Path, no_source, monkeypatch, capsys
) -> None:
    snapshot = cache_repo(offline_hf_cache, "me/runs", published, ref="v1")
    name = trained.name
    got = huggingface_hub.snapshot_download(
        "me/runs", revision="v1", allow_patterns=[f"runs/{name}/*"], local_files_only=True
    )
    assert Path(got) == snapshot  # the fake cache is the one huggingface_hub reads
    monkeypatch.setenv(hub.ENV_RUNS_FROM, "me/runs@v1")
    no_training(monkeypatch)
    result = runs.ensure(tiny().replace(output_dir=str(no_source / name)), progress=False)
    assert f"fetched {name} from me/runs@v1" in capsys.readouterr().out
    local = no_source / name
    assert result.step == 4 and not any(p.is_symlink() for p in local.rglob("*"))
    assert files_of(local) == files_of(published / "runs" / name)
    assert same_weights(local, trained)


def test_an_unreachable_hub_source_names_the_variable_and_the_fix(
    offline_hf_cache: Path, no_source: Path, monkeypatch
) -> None:
    monkeypatch.setenv(hub.ENV_RUNS_FROM, "me/elsewhere")
    no_training(monkeypatch)
    with pytest.raises(hub.PublishedRunsError) as caught:
        runs.ensure(tiny().replace(output_dir=str(no_source / run_name(tiny()))), progress=False)
    message = str(caught.value)
    for part in ("INTERPDDPM_RUNS_FROM=me/elsewhere", "hub repo me/elsewhere", "network", "unset"):
        assert part in message, part
    assert "local folder" in message


def test_a_failed_upload_says_what_to_check(trained: Path, tmp_path) -> None:
    class Down(FakeHub):
        def create_repo(self, repo_id: str, **kw: Any) -> None:
            raise ConnectionError("[Errno 101] Network is unreachable")

    with pytest.raises(hub.PublishError, match=r"ConnectionError: .*unreachable.*hf auth login"):
        hub.publish_run(trained, "me/runs", api=Down(tmp_path / "remote"))


# ------------------------------------------------------------------------------------------
# recorded runs: a local folder kept with the book (runs.recorded_source)
# ------------------------------------------------------------------------------------------
def test_record_run_keeps_a_portable_copy_that_ensure_loads(
    trained: Path, tmp_path: Path, no_source: Path, monkeypatch, capsys
) -> None:
    kept = hub.record_run(trained, tmp_path / "recorded")
    assert kept == tmp_path / "recorded" / "runs" / trained.name
    assert [c.name for c in list_checkpoints(kept)] == ["checkpoint-0000004"]
    assert_portable(kept, trained, optimizer=False)
    assert not list((tmp_path / "recorded" / "runs").glob(".record-*"))  # no temporary left
    with pytest.raises(hub.PublishError, match="already exists; remove it first"):
        hub.record_run(trained, tmp_path / "recorded")  # a record is never overwritten
    # ensure loads the recorded run, quietly, without a training step
    no_training(monkeypatch)
    local = no_source / trained.name
    result = runs.ensure(
        tiny().replace(output_dir=str(local)), progress=False, recorded=kept.parent.parent
    )
    assert capsys.readouterr().out.splitlines() == [
        f"fetched {trained.name} from {tmp_path / 'recorded'}"
    ]
    assert result.step == 4 and files_of(local) == files_of(kept)  # the log is the record's
    assert same_weights(local, trained)
    assert "checkpoint-0000004/optimizer.safetensors" not in files_of(kept)
    # without optimizer state it loads, but it cannot train on past its steps (refused before
    # any training step: no_training is still in force)
    with pytest.raises(training.CheckpointError, match="without optimizer state"):
        train(tiny(6).replace(output_dir=str(local)), progress=False)
    assert [c.name for c in list_checkpoints(local)] == ["checkpoint-0000004"]  # untouched


def test_record_run_refuses_an_unfinished_run(tmp_path: Path) -> None:
    run = tmp_path / "runs" / run_name(tiny())
    train(tiny().replace(output_dir=str(run)), stop_after=2, progress=False)
    with pytest.raises(hub.PublishError, match="unfinished"):
        hub.record_run(run, tmp_path / "recorded")
    assert not (tmp_path / "recorded" / "runs" / run.name).exists()


def test_recorded_runs_name_the_keys_of_another_config(
    trained: Path, tmp_path: Path, no_source: Path, capsys
) -> None:
    recorded = tmp_path / "recorded"
    hub.record_run(trained, recorded)
    wanted = tiny(2)  # the same run name, another fingerprint (steps)
    result = runs.ensure(
        wanted.replace(output_dir=str(no_source / run_name(wanted))),
        progress=False,
        recorded=recorded,
    )
    out = capsys.readouterr().out
    assert (
        f"{recorded} records {trained.name}, trained with another config (steps: 4 -> 2); "
        f"training {run_name(wanted)} here"
    ) in out
    assert result.step == 2 and "fetched" not in out
    # a folder holding no run of that name says nothing: it records only some runs
    other = TrainConfig(**{**TINY, "lr": 3e-4}, steps=2)
    runs.ensure(
        other.replace(output_dir=str(no_source / f"other-{other.fingerprint()}")),
        progress=False,
        recorded=recorded,
    )
    assert "records" not in capsys.readouterr().out


def test_none_turns_off_published_and_recorded_runs(monkeypatch, tmp_path: Path) -> None:
    assert runs.recorded_source("cpu") is not None  # this checkout records the cpu baseline
    assert runs.recorded_source("smoke") is None  # a profile without recorded runs
    monkeypatch.setenv(hub.ENV_RUNS_FROM, "none")
    assert runs.published_source() is None and runs.recorded_source("cpu") is None
    monkeypatch.setenv(hub.ENV_RUNS_FROM, str(tmp_path))
    assert runs.published_source() == str(tmp_path) and runs.recorded_source("cpu") is not None
    runs.use_published(None)  # off for this process, whatever the variable says
    assert runs.published_source() is None and runs.recorded_source("cpu") is None
    runs.use_published("none")
    assert runs.published_source() is None and runs.recorded_source("cpu") is None


def test_is_recorded_matches_the_record_s_files_only(
    trained: Path, tmp_path: Path, monkeypatch
) -> None:
    """The run a record was made from (optimizer state and all) counts as the record; a run
    with other weights does not."""
    hub.record_run(trained, tmp_path / "recorded")
    monkeypatch.setattr(runs, "recorded_source", lambda profile: tmp_path / "recorded")
    assert runs.is_recorded("smoke", trained)
    other = tmp_path / "other" / trained.name
    train(tiny(2).replace(output_dir=str(other), steps=4, lr=3e-4), progress=False)
    assert not runs.is_recorded("smoke", other)

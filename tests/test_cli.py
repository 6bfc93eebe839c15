"""The command line: user errors end in ONE line ``error: ...`` and exit status 2, tracebacks
only with ``--debug``; Ctrl-C during ``train`` says where the run stopped (exit 130)."""

from __future__ import annotations

import pytest
import torch

from interpddpm import training
from interpddpm.cli import main
from interpddpm.training import ConfigError, list_checkpoints, load_run_model, read_checkpoint

TINY = ["preset=tiny", "image_size=16", "batch_size=2", "dataset_length=8", "log_every=1"]


def one_error_line(capsys) -> str:
    """The single stderr line of a failed command (no traceback, no usage block)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return lines[0]


def test_set_takes_floats_in_exponent_form(tmp_path) -> None:
    """`--set lr=2e-4`, the parser's own example, used to crash (YAML reads it as a string)."""
    out = tmp_path / "run"
    args = ["train", "--quiet", "--set", *TINY, "steps=1", "lr=2e-4", f"output_dir={out}"]
    assert main(args) == 0
    assert read_checkpoint(list_checkpoints(out)[-1])["config"]["lr"] == 2e-4


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--set", "seed=1.5"], "seed: expected an int (a whole number), got 1.5"),
        (["--set", "lr=.nan"], "lr must be a positive finite number, got nan"),
        (["--set", "concepts=[nose, nose]"], "concepts lists 'nose' more than once"),
        (["--set", "concepts=nsoe"], "unknown concept(s) 'nsoe'"),
        (["--set", "adam_betas=[0.9, 2]"], "adam_betas must be two numbers in [0, 1)"),
        (["--set", "dataset=imagenet"], "unknown dataset 'imagenet'; valid: toyfaces"),
        (["--set", "beta_schedule=cos"], "unknown beta_schedule 'cos'"),
        (["--set", "concepts=[nose"], "--set concepts=[nose: the value is not a YAML scalar"),
        (["--set", "steps"], "--set expects key=value, got 'steps'"),
        (["--set", "stepz=2"], "unknown config keys: stepz"),
        (["--stop-after", "0"], "--stop-after must be a positive number of steps, got 0"),
        (["--stop-after", "x"], "argument --stop-after: invalid int value: 'x'"),
        (["--config", "missing.yaml"], "config file 'missing.yaml' does not exist"),
        (["--set", "preset=huge"], "unknown preset 'huge'; valid presets: tiny"),
        (["--set", "preset=smoke", "image_size=18"], "nearest valid sizes: 16 or 20"),
        (["--set", "init_from=runs/baselin"], "did you mean runs/baseline?"),
        (
            ["--set", "steps=2", "seed=1", "steps=3"],
            "--set gives steps twice ('steps=2' and 'steps=3'); give each key once.",
        ),
        (["--config", "empty.yaml"], "empty.yaml holds no config keys (it is empty or only"),
        (["--config", "comments.yaml"], "comments.yaml holds no config keys"),
    ],
)
def test_train_user_errors_are_one_line(tmp_path, monkeypatch, capsys, args, phrase) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "baseline").mkdir(parents=True)
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "comments.yaml").write_text("# steps: 500\n\n")  # not a default run
    assert main(["train", "--quiet", *args]) == 2
    assert phrase in one_error_line(capsys)
    assert list_checkpoints(tmp_path / "runs" / "default") == []


def test_bad_config_file_and_output_dir_are_one_line(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "is not valid YAML or JSON" in one_error_line(capsys)
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    assert main(["train", "--quiet", "--set", *TINY, f"output_dir={a_file}"]) == 2
    assert f"output_dir {str(a_file)!r} is an existing file" in one_error_line(capsys)


def test_usage_errors_are_one_line(capsys) -> None:
    assert main(["trian"]) == 2
    assert "invalid choice: 'trian'" in one_error_line(capsys)
    assert main(["train", "--stpo-after", "3"]) == 2
    assert "unrecognized arguments: --stpo-after 3" in one_error_line(capsys)


def test_debug_shows_the_traceback(tmp_path) -> None:
    for args in (["--debug", "train"], ["train", "--debug"]):
        with pytest.raises(ConfigError, match="seed: expected an int"):
            main([*args, "--quiet", "--set", "seed=1.5", f"output_dir={tmp_path}"])


def test_ctrl_c_during_train_reports_the_step_and_resumes_exactly(
    tmp_path, monkeypatch, capsys
) -> None:
    """Ctrl-C at step 3 (checkpoints every 2): one line naming step 3 and checkpoint 2, exit 130;
    running the same command again ends with the weights of an uninterrupted run."""
    real = training.loop.batch_indices  # patched where the loop looks it up

    def interrupt_at_step_3(step, *args, **kwargs):
        if step == 3:
            raise KeyboardInterrupt
        return real(step, *args, **kwargs)

    common = ["train", "--quiet", "--set", *TINY, "steps=4", "checkpoint_every=2"]
    monkeypatch.setattr(training.loop, "batch_indices", interrupt_at_step_3)
    assert main([*common, f"output_dir={tmp_path / 'b'}"]) == 130
    lines = capsys.readouterr().err.strip().splitlines()
    checkpoint = list_checkpoints(tmp_path / "b")[-1]
    assert lines == [
        f"stopped at step 3, last checkpoint {checkpoint} "
        "(run the same command again to resume from it)"
    ]
    assert read_checkpoint(checkpoint)["step"] == 2
    with pytest.raises(KeyboardInterrupt):  # --debug: the interrupt propagates
        main(["--debug", *common, f"output_dir={tmp_path / 'c'}"])
    monkeypatch.setattr(training.loop, "batch_indices", real)
    assert main([*common, f"output_dir={tmp_path / 'b'}"]) == 0
    assert main([*common, f"output_dir={tmp_path / 'a'}"]) == 0
    for ema in (False, True):
        a = load_run_model(tmp_path / "a", ema=ema).state_dict()
        b = load_run_model(tmp_path / "b", ema=ema).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_ablations_out_is_checked_before_the_sweep(tmp_path, monkeypatch, capsys) -> None:
    import interpddpm.errors as errors
    from interpddpm import ablations

    def no_sweep(*args, **kwargs):
        raise AssertionError("the sweep must not start")

    monkeypatch.setattr(ablations, "run_all", no_sweep)
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    out = a_file / "ablations.json"
    assert main(["ablations", "--profile", "smoke", "--out", str(out), "--quiet"]) == 2
    assert f"{str(a_file)!r} is an existing file, not a folder" in one_error_line(capsys)

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(errors.tempfile, "mkstemp", read_only)
    assert main(["ablations", "--profile", "smoke", "--out", str(tmp_path), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert f"{str(tmp_path)!r} is not writable (Permission denied)" in line


def test_set_may_be_given_several_times() -> None:
    """`--set a=1 --set b=2` keeps both (argparse's nargs="+" alone kept only the last)."""
    from interpddpm import cli

    args = cli.make_parser().parse_args(["train", "--set", "steps=3", "lr=1e-3", "--set", "seed=4"])
    assert args.set == ["steps=3", "lr=1e-3", "seed=4"]


def test_a_safetensors_error_is_one_line(monkeypatch, capsys) -> None:
    """safetensors raises its own SafetensorError (not an OSError) for a full disk or a file it
    cannot parse: one line, exit 2, like any other file error."""
    from safetensors import SafetensorError

    def unreadable(*args, **kwargs):
        raise SafetensorError("Error while deserializing header: HeaderTooLarge")

    monkeypatch.setattr(training, "train", unreadable)
    assert main(["train", "--quiet", "--set", *TINY]) == 2
    assert one_error_line(capsys) == "error: Error while deserializing header: HeaderTooLarge"

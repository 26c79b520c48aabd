"""One config: every option of a run is written once, in core.config, and the command line
and the training form are made from it."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from core.cli import build_parser
from core.config import (
    MODEL_OPTIONS,
    PRESETS,
    TRAIN_OPTIONS,
    FlowConfig,
    TrainConfig,
    dataset_geometry,
    geometry_problem,
    option,
)


def train_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def test_every_field_has_its_option_and_its_help():
    for cls, opts in ((TrainConfig, TRAIN_OPTIONS), (FlowConfig, MODEL_OPTIONS)):
        assert set(opts) == {f.name for f in fields(cls)}, cls.__name__
        assert all(o.help and not o.help.endswith(".") for o in opts.values())


def test_every_field_has_a_command_line_option():
    actions = {a.dest: a for a in train_parser()._actions}
    for name, opt in {**TRAIN_OPTIONS, **MODEL_OPTIONS}.items():
        assert name in actions, f"TrainConfig/FlowConfig.{name} has no option of realnvp train"
        action = actions[name]
        assert opt.flag in action.option_strings, (name, action.option_strings)
        assert action.help.replace("%%", "%").startswith(opt.help[:40]), name
        if opt.choices is not None:
            assert tuple(action.choices) == tuple(opt.choices), name


def test_the_command_lines_defaults_are_the_configs():
    args = train_parser().parse_args([])
    from core.cli import _train_config

    assert _train_config(args) == TrainConfig(out="runs/run")
    values = _train_config(
        train_parser().parse_args(
            ["--lr-schedule", "constant", "--ema", "0", "--time-limit", "90m", "--class-limit", "0"]
        )
    )
    assert (values.lr_schedule, values.ema, values.time_limit) == ("constant", 0.0, 5400.0)
    assert values.class_stats_per_class == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ema", "1.5"], "must be a number in [0, 1)"),
        (["--time-limit", "soon"], "not a duration"),
        (["--batch-size", "0"], "must be a positive integer"),
        (["--lr-schedule", "linear"], "invalid choice"),
    ],
)
def test_bad_values_are_one_sentence_from_the_fields_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        train_parser().parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_every_field_has_a_form_control_or_a_word_on_why_not(qtbot, tmp_path):
    from explorer.training.form import TrainingForm

    form = TrainingForm(runs_dir=tmp_path, probe_devices=False)
    qtbot.addWidget(form)
    for name, opt in {**TRAIN_OPTIONS, **MODEL_OPTIONS}.items():
        if opt.form is not None:
            assert hasattr(form, opt.form), f"{name}: the form has no control {opt.form!r}"
        else:
            assert len(opt.no_form.split()) >= 4, f"{name}: say why the form has no control"
    # Ranges, defaults and tooltips come from the fields.
    batch = TRAIN_OPTIONS["batch_size"]
    assert (form.batch_size.minimum(), form.batch_size.maximum()) == (1, batch.maximum)
    assert form.batch_size.value() == batch.default
    assert form.batch_size.toolTip().lower().startswith(batch.help.lower())
    assert form.ema.value() == pytest.approx(TRAIN_OPTIONS["ema"].default)
    assert form.lr_schedule.currentData() == TRAIN_OPTIONS["lr_schedule"].default
    assert form.num_blocks.maximum() == MODEL_OPTIONS["num_blocks"].maximum


def test_the_forms_new_options_reach_the_command(qtbot, tmp_path):
    from explorer.training.form import TrainingForm

    form = TrainingForm(runs_dir=tmp_path, probe_devices=False)
    qtbot.addWidget(form)
    form.lr_schedule.setCurrentIndex(form.lr_schedule.findData("constant"))
    form.ema.setValue(0.99)
    form.time_limit.setText("45m")
    form.init_from.setText("bundled")
    argv = form.settings().command("python")
    assert argv[argv.index("--lr-schedule") + 1] == "constant"
    assert argv[argv.index("--ema") + 1] == "0.99"
    assert argv[argv.index("--time-limit") + 1] == "45m"
    assert argv[argv.index("--init-from") + 1] == "bundled"
    assert "--preset" not in argv and "--num-scales" not in argv  # the checkpoint's size
    assert not form.num_scales.isEnabled()
    parsed = train_parser().parse_args(argv[argv.index("train") + 1 :])
    assert (parsed.lr_schedule, parsed.ema, parsed.time_limit) == ("constant", 0.99, 2700.0)
    form.time_limit.setText("soon")
    assert any(p.startswith("time limit:") for p in form.problems())


def test_the_pages_command_parses_back_to_the_forms_config(qtbot, tmp_path):
    """The page's command line, read by ``realnvp train``'s own parser, gives the run the
    form describes: every option the form sets, and those it leaves to the command line."""
    from core.cli import _train_config
    from explorer.training.form import TrainingForm

    form = TrainingForm(runs_dir=tmp_path, probe_devices=False)
    qtbot.addWidget(form)
    form.dataset.setCurrentIndex(form.dataset.findData("folder"))
    form.data_dir.setText(str(tmp_path / "images"))
    form.channels.setCurrentIndex(form.channels.findData(1))
    form.image_size.setValue(16)
    form.num_scales.setValue(2)
    form.mid_channels.setValue(24)
    form.batch_size.setValue(48)
    form.lr.setText("3e-4")
    form.lr_schedule.setCurrentIndex(form.lr_schedule.findData("constant"))
    form.ema.setValue(0.99)
    form.time_limit.setText("1h30m")
    form.length_unit.setCurrentIndex(form.length_unit.findData("steps"))
    form.length.setValue(700)
    form.eval_every.setValue(50)
    form.eval_limit.setValue(100)
    form.log_every.setValue(5)
    form.seed.setValue(7)
    form.flip.setChecked(True)
    form.compile.setChecked(True)
    form.out.setText(str(tmp_path / "run"))
    # Options without a control come from a reopened run's own config.
    settings = form.settings().with_values(
        weight_norm_l2=1e-4, precision="float32", cuda_graph=False, class_stats_per_class=0
    )
    assert settings.train != TrainConfig(data_dir="", out="")
    argv = settings.command("python")
    parsed = train_parser().parse_args(argv[argv.index("train") + 1 :])
    assert _train_config(parsed) == settings.train
    model = (parsed.in_channels, parsed.image_size, parsed.num_scales, parsed.mid_channels)
    assert (*model, parsed.num_blocks, parsed.preset) == (1, 16, 2, 24, 2, None)
    form.apply(settings)
    assert form.settings() == settings  # the form shows every value it reads back


def test_a_resumed_runs_command_gives_only_what_a_resume_takes_from_it(tmp_path):
    from core.cli import _train_config
    from core.config import RESUME_OPTIONS
    from explorer.training.process import RunSettings

    resume = str(tmp_path / "run" / "latest.pt")
    settings = RunSettings().with_values(
        resume=resume, out=str(tmp_path / "run"), max_steps=900, batch_size=8, seed=3
    )
    argv = settings.command("python")
    assert "--batch-size" not in argv and "--seed" not in argv  # the checkpoint's
    parsed = train_parser().parse_args(argv[argv.index("train") + 1 :])
    assert parsed.resume == resume
    back = _train_config(parsed)
    assert all(getattr(back, n) == getattr(settings.train, n) for n in RESUME_OPTIONS)


def test_an_option_says_its_form_control_or_why_it_has_none():
    with pytest.raises(ValueError, match="form control"):
        option(1, "a number", parse="int")
    with pytest.raises(ValueError, match="form control"):
        option(1, "a number", parse="int", form="x", no_form="y")


def test_presets_and_geometry():
    assert {"mnist-small", "mnist", "cifar10"} <= set(PRESETS)
    for name, config in PRESETS.items():
        assert geometry_problem(config.image_size, config.num_scales) is None, name
    assert dataset_geometry("mnist", 3, 64) == (1, 28)
    assert dataset_geometry("folder", None, None) == (3, 32)
    assert "do not fit 3 scales" in geometry_problem(30, 3)
    from explorer.training.process import PRESETS as FORM_PRESETS

    assert {
        k: (c.num_scales, c.mid_channels, c.num_blocks) for k, c in PRESETS.items()
    } == FORM_PRESETS

"""The scripts' flags: -h shows every default (per data set where it differs), on/off flags take --flag, --no-flag
and the original's True/False words, and a run writes only under the folders it is given (the original's
tmp.monitor kept for its own CIFAR-10 run)."""
import os
import re

import numpy as np
import pytest
from conftest import run_main
from PIL import Image

import args as cli
import datasets
from imagefolder import OWN_DATA

PARSERS = {"train.py": cli.train_parser, "calculate_score.py": cli.score_parser,
           "mislabel_analysis.py": cli.analysis_parser}
# the on/off flags, with their defaults (None: decided by the data set or the mode)
SWITCHES = {"train.py": {"--shuffle_label": None, "--augmentation": True, "--precise_bn": True},
            "calculate_score.py": {"--lr_weight": True, "--save_every_epoch": False, "--save_matrix": None},
            "mislabel_analysis.py": {"--ckpt_analysis": False, "--save_extracted": False}}
REQUIRED = {"train.py": [], "calculate_score.py": ["--input", "in", "--checkpoint", "ck"], "mislabel_analysis.py": []}


def help_text(parser):
    """-h as printed, with the lines of one flag joined (argparse wraps them)."""
    return re.sub(r"\s+", " ", parser.format_help())


@pytest.mark.parametrize("script", sorted(PARSERS))
def test_help_shows_every_default(script):
    p = PARSERS[script]()
    formatter = p._get_formatter()
    for action in p._actions:
        if action.required or action.dest == "help":
            continue
        text = formatter._get_help_string(action)
        assert action.help, f"{script} {action.option_strings[0]}: not in -h (no help text)"
        assert "default" in text, f"{script} {action.option_strings[0]}: no default in -h: {text!r}"
        if action.default not in (None, False, True) and "default:" in text and "%" not in text:
            assert str(action.default) in text


def test_help_shows_the_recipe_of_every_data_set():
    text = help_text(cli.train_parser())
    recipes = {**{n: s.train_defaults for n, s in datasets.SPECS.items()}, "imagefolder": OWN_DATA.train_defaults}
    assert recipes["cifar10"]["train_epochs"] == 270 and recipes["cifar10"]["train_batch_size"] == 500  # original's
    for key in ("train_epochs", "train_batch_size", "learning_rate", "lr_schedule", "weight_decay", "nmaps"):
        shown = ", ".join(f"{name} {'from the data' if r[key] is None else r[key]}" for name, r in recipes.items())
        assert f"default per data set: {shown}" in text, key


def test_help_shows_on_off_flags_both_ways():
    text = help_text(cli.train_parser())
    assert "--augmentation [True|False], --no-augmentation " in text


@pytest.mark.parametrize("script,flag", [(s, f) for s in sorted(SWITCHES) for f in SWITCHES[s]])
def test_on_off_flags(script, flag):
    def parse(*argv):
        return vars(PARSERS[script]().parse_args(REQUIRED[script] + list(argv)))
    dest = flag[2:]
    assert parse()[dest] is SWITCHES[script][flag]
    assert parse(flag)[dest] is True
    assert parse("--no-" + flag[2:])[dest] is False
    for word, value in (("True", True), ("False", False), ("true", True), ("0", False), ("yes", True)):
        assert parse(flag, word)[dest] is value
    # the flag alone, followed by another flag
    assert parse(flag, "--output", "o")[dest] is True and parse("--no-" + flag[2:], "--output", "o")[dest] is False


@pytest.mark.parametrize("argv,fragment", [(["--augmentation", "maybe"], "expected True or False, got 'maybe'"),
                                           (["--no-augmentation", "True"], "--no-augmentation: takes no value")])
def test_bad_on_off_value_is_one_line(argv, fragment, capsys):
    with pytest.raises(SystemExit) as e:
        cli.train_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and fragment in err


# (flags, --model_save_path, --monitor-path)
FOLDERS = [
    ([], "tmp.monitor", "tmp.monitor"),  # the original's defaults
    (["--output", "d", "--model_save_path", "c"], "c", "tmp.monitor"),  # the original: cifar10 keeps tmp.monitor
    (["--monitor-path", "m"], "m", "m"),
    (["--dataset", "digits"], "tmp.monitor", "tmp.monitor"),  # no folder named
    (["--dataset", "imagefolder", "--output", "d", "--model_save_path", "c"], "c", os.path.join("c", "monitor")),
    (["--dataset", "digits", "--output", "d"], "d", os.path.join("d", "monitor")),
    (["--input", "d", "--model_save_path", "c"], "c", os.path.join("c", "monitor")),
    (["--dataset", "digits", "--monitor-path", "m", "--output", "d"], "m", "m"),
]


@pytest.mark.parametrize("argv,ckpt,monitor", FOLDERS)
def test_folder_defaults(argv, ckpt, monitor):
    a = cli.parse_train_args(argv)
    assert (a.model_save_path, a.monitor_path) == (ckpt, monitor)


def test_own_data_commands_write_only_under_the_named_folders(tmp_path):
    """The README's three own-data commands, run from a fresh folder, leave nothing beside what they were given."""
    rng = np.random.RandomState(0)
    for c, name in enumerate(("dark", "light")):
        os.makedirs(tmp_path / "images" / name)
        for i in range(8):
            pixels = (rng.randint(0, 60, (8, 8, 3)) + 190 * c).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / name / f"{i}.png")
    tiny = ("--nmaps", 2, "--train_epochs", 1, "--train_batch_size", 4)
    run_main("train.py", "--dataset", "imagefolder", "--data-dir", "images", "--output", "out/data",
             "--model_save_path", "out/ckpt", "-c", "cpu", *tiny, cwd=tmp_path)
    run_main("calculate_score.py", "--input", "out/data", "--checkpoint", "out/ckpt", "--output", "out/data", "-c",
             "cpu", cwd=tmp_path)
    run_main("mislabel_analysis.py", "--input", "out/data", "--output", "out/review", cwd=tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["images", "out"]
    assert sorted(os.listdir(tmp_path / "out")) == ["ckpt", "data", "review"]
    assert os.path.isfile(tmp_path / "out" / "ckpt" / "monitor" / "Training-loss.series.txt")

"""The entry scripts' flags: one parser per script, the converters that validate each flag. Only the scripts import it.

Spellings follow the original nnabla-examples TracIn example (`--model_save_path`, `-o`, `--shuffle_label True`,
`-c cudnn`, ...); an on/off flag also takes `--flag` and `--no-flag`. Defaults that depend on the data set are None
here, resolved from the data set's recipe (`datasets.SPECS`, `imagefolder.OWN_DATA`) and shown from it in `-h`.
"""
import argparse
import math
import os
import sys

import datasets
from imagefolder import OWN_DATA, parse_image_size
from models import MODELS
from noise import MODELS as NOISE_MODELS
from tracin import defaults
from tracin.errors import InputError
from tracin.manifest import SCHEDULES
from tracin.normalize import NORMALIZATIONS

DATASETS = ("cifar10", "digits", "imagefolder")
ORIGINAL_MONITOR = "tmp.monitor"  # the original's --monitor-path, and so its --model_save_path


class CliError(InputError):
    """A mistake in the command line: reported as one line on stderr, exit code 2, no traceback. Its message may
    name flags (library errors, InputError, do not)."""


class Switch(argparse.Action):
    """An on/off flag: `--flag` or `--flag True` turns it on, `--no-flag` or `--flag False` off (the original's
    spelling: a True/False word)."""

    def __init__(self, option_strings, dest, default=None, help=None):
        off = [f"--no-{s[2:]}" for s in option_strings if s.startswith("--")]
        super().__init__(list(option_strings) + off, dest, nargs="?", const=None, default=default, type=str2bool,
                         help=help, metavar="True|False")

    def __call__(self, parser, namespace, values, option_string=None):
        off = option_string.startswith("--no-")
        if off and values is not None:  # None: the flag alone (the const)
            parser.error(f"argument {option_string}: takes no value (use {option_string} alone, or "
                         f"--{option_string[5:]} {values})")
        setattr(namespace, self.dest, not off if values is None else values)


class HelpFormatter(argparse.HelpFormatter):
    """-h shows every flag's default (a help text naming no default gets '(default: X)'), an on/off flag as
    `--flag [True|False], --no-flag`."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS) or action.required:
            return text
        return f"{text} (default: {action.default})"

    def _format_action_invocation(self, action):
        if not isinstance(action, Switch):
            return super()._format_action_invocation(action)
        on = [s for s in action.option_strings if not s.startswith("--no-")]
        off = [s for s in action.option_strings if s.startswith("--no-")]
        return ", ".join([f"{s} [True|False]" for s in on] + off)


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (no usage block), exit code 2, and shows every default."""

    def __init__(self, **kw):
        super().__init__(formatter_class=HelpFormatter, **kw)

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


# the recipes train.py falls back on, by --dataset (imagefolder's also for --input arrays of another shape)
RECIPES = {**{name: spec.train_defaults for name, spec in datasets.SPECS.items()}, "imagefolder": OWN_DATA.train_defaults}


def per_dataset(key):
    """'default per data set: cifar10 270, digits 30, imagefolder 30' for a key of the recipes."""
    return "default per data set: " + ", ".join(f"{name} {'from the data' if r[key] is None else r[key]}"
                                                for name, r in RECIPES.items())


def str2bool(value):
    """Accept the original's True/False spellings (it used distutils.strtobool, gone in Python 3.12)."""
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in ("true", "t", "yes", "y", "1", "on"):
        return True
    if v in ("false", "f", "no", "n", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got '{value}'")


def _bounded(convert, what, ok, bound):
    """An argparse type: `convert` the text (else 'expected <what>'), then check `ok` (else the `bound` message)."""
    def parse(value):
        try:
            v = convert(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got '{value}'") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"{bound}, got {v}")
        return v
    return parse


INT64_MAX = 2 ** 63 - 1  # counts and indices end up in numpy's int64
positive_int = _bounded(int, "a whole number", lambda v: 1 <= v <= INT64_MAX,
                        f"must be at least 1 and at most {INT64_MAX}")
# training batches: batch normalisation over one sample has no variance (the running variance becomes NaN)
train_batch = _bounded(int, "a whole number", lambda v: 2 <= v <= INT64_MAX,
                       f"must be at least 2 and at most {INT64_MAX}")
rate = _bounded(float, "a number between 0 and 1", lambda v: 0.0 <= v <= 1.0, "must be between 0 and 1")
open_rate = _bounded(float, "a number between 0 and 1", lambda v: 0.0 < v < 1.0, "must be above 0 and below 1")
positive_float = _bounded(float, "a number", lambda v: math.isfinite(v) and v > 0, "must be a finite number above 0")
non_negative_float = _bounded(float, "a number", lambda v: math.isfinite(v) and v >= 0,
                              "must be a finite number of at least 0")
seed = _bounded(int, "a whole number", lambda v: 0 <= v < 2 ** 32, f"must be between 0 and {2 ** 32 - 1}")
# resnet23's width: its blocks split the maps in two
width = _bounded(int, "a whole number", lambda v: v >= 2 and v % 2 == 0, "expected an even width (nmaps) of at least 2")


def top_value(value):
    from tracin.review import parse_top
    try:
        return parse_top(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def image_size(value):
    try:
        return parse_image_size(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def int_list(value):
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers like 29,59,89, got '{value}'") from None
    if not out:
        raise argparse.ArgumentTypeError("expected at least one number")
    return out


def float_list(value):
    """Comma-separated finite numbers above 0 (learning rates)."""
    try:
        out = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.1,0.1,0.01, got '{value}'") \
            from None
    if not out or not all(math.isfinite(v) and v > 0 for v in out):
        raise argparse.ArgumentTypeError(f"expected finite numbers above 0, got '{value}'")
    return out


def resume_value(value):
    """`--resume` alone or True: newest checkpoint; an integer: that epoch; False: no resume."""
    try:
        return str2bool(value)
    except argparse.ArgumentTypeError:
        pass
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected True, False or an epoch number, got '{value}'") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"epoch must be 0 or more, got {v}")
    return v


def add_context_args(p):
    p.add_argument("--context", "-c", default="auto", choices=["auto", "cpu", "cudnn"],
                   help="compute extension; auto = cudnn when nnabla-ext-cuda is installed, else cpu")
    p.add_argument("--device_id", "--device-id", "-d", default="0", help="GPU id for -c cudnn")
    p.add_argument("--type_config", "-t", default="float", choices=["float", "half"],
                   help="computation type (half needs a GPU)")


def train_parser():
    p = Parser(prog="train.py", description="Train a ResNet on labels with a shuffled fraction, "
                                            "saving the arrays and a checkpoint every epoch.")
    _add_train_data_args(p)
    _add_train_run_args(p)
    add_context_args(p)
    return p


def _add_train_data_args(p):
    """The data, the output folders, the model and the label noise."""
    p.add_argument("--dataset", default="cifar10", choices=DATASETS,
                   help="cifar10 (default, as the original): the official archive, downloaded once; digits: "
                        "scikit-learn's bundled 8x8 digits (offline, seconds); imagefolder: your own images in "
                        "--data-dir, one sub-folder per class (labels kept as given, to audit them)")
    p.add_argument("--data-dir", "--data_dir", dest="data_dir", default=None,
                   help="cifar10: folder holding (or to cache) cifar-10-python.tar.gz (default: nnabla's data "
                        "cache); imagefolder: the image folder (PNG/JPEG in one sub-folder per class)")
    p.add_argument("--image_size", type=image_size, default=None,
                   help="imagefolder: size of every image, S or HxW (default: the most common size, shrunk to at "
                        "most 64 pixels a side; others are centre-cropped to its aspect and resized)")
    p.add_argument("--val_fraction", type=open_rate, default=None,
                   help="imagefolder: fraction of each class held out for validation, seeded by --seed (default 0.1)")
    p.add_argument("--input", default=None, help="train from a folder of arrays written by an earlier run (default: "
                                                "none; the arrays are made from --dataset)")
    p.add_argument("--output", default=None,
                   help="folder for x_train.npy, y_train.npy, y_shuffle_train.npy, x_val.npy, y_val.npy "
                        "(default: --model_save_path)")
    p.add_argument("--monitor-path", "--monitor_path", "-m", dest="monitor_path", default=None,
                   help=f"folder for nnabla Monitor series (default: {ORIGINAL_MONITOR} for --dataset cifar10, as "
                        "the original; otherwise MODEL_SAVE_PATH/monitor, so that a run writes only under the "
                        f"folders it is given; {ORIGINAL_MONITOR} when it is given none)")
    p.add_argument("--model_save_path", "-o", default=None,
                   help="folder for checkpoints and checkpoints.json; -o is the original's short flag (default: "
                        "--monitor-path, as the original; for --dataset other than cifar10 or with --input, given no "
                        "--monitor-path: --output)")
    p.add_argument("--model_save_interval", type=positive_int, default=None,
                   help="save a checkpoint every K epochs (default 1; own data: at most 30 checkpoints)")
    p.add_argument("--model", default="resnet23", choices=sorted(MODELS), help="the network (models/)")
    p.add_argument("--nmaps", type=width, default=None, help="resnet23 width (" + per_dataset("nmaps") + ")")
    p.add_argument("--shuffle_label", action=Switch,
                   help="shuffle --shuffle_rate of each class (default: True, except for imagefolder)")
    p.add_argument("--shuffle_rate", type=rate, default=None,
                   help="fraction of each class given another label (default 0.1; not with --input, whose labels "
                        "are taken as given)")
    p.add_argument("--noise", default=None, choices=NOISE_MODELS,
                   help="which labels change and to what (not with --input): uniform (default, the original's "
                        "shuffling: random "
                        "samples, wrong labels spread over the other classes), pair (random samples, each class "
                        "to its one most confusable class), instance (the samples a seeded logistic regression "
                        "finds most ambiguous, to their most plausible wrong class)")
    p.add_argument("--seed", "-s", type=seed, default=None,
                   help="seeds label shuffling, initialisation, data order and augmentation (default 0; --resume "
                        "keeps the recorded one)")


def _add_train_run_args(p):
    """The training recipe and resuming."""
    p.add_argument("--augmentation", action=Switch, default=True, help="data augmentation in the training graph")
    p.add_argument("--precise_bn", action=Switch, default=True,
                   help="before every checkpoint, set the batch-norm running statistics to the average batch "
                        "statistics of the (un-augmented) training set under the current weights, so inference "
                        "mode, and thus TracIn's gradients, fit the weights; False = the training-time moving "
                        "averages (the original)")
    p.add_argument("--checkpoint", default=None,
                   help="resume from this params_{epoch}.h5 file, with its solver state, as the original (default: "
                        "none; calculate_score.py's --checkpoint is the folder)")
    p.add_argument("--init_from", default=None, metavar="PARAMS.h5",
                   help="start from weights trained elsewhere: every parameter of this nnabla .h5 file (e.g. a "
                        "params_{epoch}.h5 of another run) whose name and shape fit the model; the rest (a final "
                        "layer for another number of classes) keeps its random initialisation (default: none)")
    p.add_argument("--resume", nargs="?", const=True, default=False, type=resume_value,
                   help="continue from the newest complete checkpoint in --model_save_path (or the epoch given)")
    p.add_argument("--overwrite", action=Switch, default=False,
                   help="replace the files of an earlier run in the output folders (checkpoints, checkpoints.json, "
                        "monitor series, arrays and the scores made from them); without it train.py refuses to "
                        "write into a folder holding another run's files")
    p.add_argument("--train_batch_size", type=train_batch, default=None,
                   help="samples per training batch (" + per_dataset("train_batch_size") + "; at most the number "
                        "of training samples)")
    p.add_argument("--micro_batches", type=positive_int, default=None,
                   help="split every batch into M equal micro-batches, each normalised by batch norm on its own "
                        "and dealt to the MPI ranks; the weights depend on M, not on the number of ranks (default: "
                        "the number of ranks, 1 without mpiexec; --resume keeps the recorded M)")
    p.add_argument("--processes", type=positive_int, default=None,
                   help="train in N processes (MPI ranks started for you by the bundled mpiexec, `make mpi`; default: "
                        "own images 2 where 2 cores and the MPI runtime are there, with the same weights as 1; "
                        "otherwise 1)")
    p.add_argument("--val_batch_size", type=positive_int, default=100, help="batch size of the validation pass")
    p.add_argument("--train_epochs", type=positive_int, default=None,
                   help="epochs to train (" + per_dataset("train_epochs") + ")")
    p.add_argument("--learning_rate", type=positive_float, default=None,
                   help="peak learning rate (" + per_dataset("learning_rate") + ")")
    p.add_argument("--lr_schedule", default=None, choices=SCHEDULES,
                   help="step: the original's warm-up then x0.1 at 1/3, 2/3, 8/9 of training; cosine: warm-up then "
                        "cosine decay; cyclic: warm-up then 3 cosine cycles from the peak ("
                        + per_dataset("lr_schedule") + ")")
    p.add_argument("--weight_decay", type=non_negative_float, default=None,
                   help="L2 weight decay (" + per_dataset("weight_decay") + ")")


def parse_train_args(argv=None):
    return train_folders(train_parser().parse_args(argv))


def train_folders(args):
    """--monitor-path and --model_save_path when not given: the original's (tmp.monitor, the checkpoints beside
    the series) for its own run, --dataset cifar10, and for a run given no folder; any other run writes only
    under the folders it is given. A run resumed from --checkpoint FILE writes into the folder of that file."""
    if args.checkpoint and not args.model_save_path:
        args.model_save_path = os.path.dirname(os.path.abspath(args.checkpoint))
    if (args.dataset == "cifar10" and not args.input) or not (args.model_save_path or args.monitor_path or
                                                              args.output):
        args.monitor_path = args.monitor_path or ORIGINAL_MONITOR
        args.model_save_path = args.model_save_path or args.monitor_path
        return args
    args.model_save_path = args.model_save_path or args.monitor_path or args.output
    args.monitor_path = args.monitor_path or os.path.join(args.model_save_path, "monitor")
    return args


def score_parser():
    p = Parser(prog="calculate_score.py", description="TracInCP self-influence of every training sample "
                                                         "(--mode self) or train -> test influence (--mode influence).")
    p.add_argument("--input", required=True, help="folder with x_train.npy and y_shuffle_train.npy")
    p.add_argument("--checkpoint", required=True,
                   help="folder with params_*.h5 (and checkpoints.json); A,B,C: several train.py runs on the same "
                        "arrays (other --seed), their self-influence summed (an ensemble)")
    p.add_argument("--output", default=None, help="folder for the scores (default: --input)")
    p.add_argument("--model", default=None, choices=sorted(MODELS),
                   help="only for checkpoint folders without checkpoints.json (the original example's; default: "
                        "the model checkpoints.json records)")
    p.add_argument("--nmaps", type=width, default=None, help="with --model: resnet23 width (default 64)")
    p.add_argument("--network", default=None,
                   help="your own network, for a folder of nn.save_parameters files without checkpoints.json: "
                        "FILE.py:FUNCTION or MODULE:FUNCTION, a function fn(x) -> logits or fn(x, test) -> logits "
                        "(docs/networks.md; default: the network checkpoints.json records)")
    p.add_argument("--lrs", type=float_list, default=None,
                   help="learning rate of each selected checkpoint, in epoch order (e.g. 0.1,0.1,0.01), or one for "
                        "all; for folders without checkpoints.json (default 1, the original's plain sum)")
    p.add_argument("--checkpoint_epochs", type=int_list, default=None,
                   help="the checkpoints to sum, e.g. 29,59,89 (default: every checkpoint but the initialisation, "
                        "params_0)")
    p.add_argument("--checkpoint_interval", type=positive_int, default=None,
                   help="the checkpoints of epochs K-1, 2K-1, ... (the weights at the start of every K-th epoch; "
                        "30 gives the original's params_29, 59, ..., 269; default: every checkpoint but params_0)")
    p.add_argument("--layers", default=None,
                   help="last_bias (the final affine layer's bias b: ||p - y||^2; default of --mode self, the best "
                        "detector in bench/detection.py), last (final affine W and b, the original's), last_block "
                        "(the last residual unit and the final affine layer; default of --mode influence), all "
                        "(every trainable parameter), or comma-separated parameter-name patterns (fnmatch, e.g. "
                        "'affine/*,conv8/*')")
    p.add_argument("--method", default=defaults.METHOD, choices=["batched", "loop"],
                   help="batched per-sample gradients, or the original's batch-size-1 backprop loop (reference)")
    p.add_argument("--lr_weight", action=Switch, default=True,
                   help="weight each checkpoint by its learning rate (TracIn); False = the original's plain sum")
    p.add_argument("--save_every_epoch", action=Switch, default=False,
                   help="also write {epoch}_influence.npy, each checkpoint's term of the sum")
    p.add_argument("--batch_size", type=positive_int, default=defaults.BATCH_SIZE,
                   help="samples per batch of the scoring passes")
    p.add_argument("--seed", "-s", type=int, default=0, help="seed for random projections")
    # train -> test influence; every flag below but --mode is for --mode influence only
    p.add_argument("--mode", default="self", choices=["self", "influence"],
                   help="self: self-influence of every training sample; influence: TracIn(train, test) "
                        "proponents and opponents of test samples")
    p.add_argument("--test_input", default=None,
                   help="folder with x_val.npy (and y_val.npy) holding the test samples (default: --input)")
    p.add_argument("--test_indices", type=index_list, default=None,
                   help="test samples to explain, e.g. 0,5,17 (default: all of x_val.npy)")
    p.add_argument("--test_label", default=None, choices=["true", "predicted"],
                   help="label of a test sample: its y_val.npy label (true, default) or the class the last "
                        "selected checkpoint predicts (predicted)")
    p.add_argument("--top_k", type=positive_int, default=None,
                   help=f"proponents and opponents kept per test sample (default {defaults.TOP_K})")
    p.add_argument("--normalize", default=None, choices=NORMALIZATIONS,
                   help=f"scores of --mode influence (tracin/normalize.py; default {defaults.NORMALIZE}): none = "
                        "raw TracIn, sum_i eta_i g_i(z) . g_i(z'), where training samples with large gradients (often "
                        "mislabeled) top every list; cosine = sum_i eta_i cos(g_i(z), g_i(z')); renorm = sum_i "
                        "eta_i g_i(z) . g_i(z') / ||g_i(z)||; total_cosine = TracIn / sqrt(self(z) self(z'))")
    p.add_argument("--save_matrix", action=Switch,
                   help="also write the full (n_test, n_train) influence_matrix.npy (needs the memory; default: "
                        "False)")
    p.add_argument("--projection_dim", type=positive_int, default=None,
                   help="Gaussian random projection of the gradients to D dimensions (layers all or patterns; "
                        "default: none, the exact gradients)")
    p.add_argument("--test_chunk", type=positive_int, default=None,
                   help="test samples per work unit (default: as many as 512 MB of their gradients allow); "
                        "smaller chunks spread test samples over more MPI ranks")
    p.add_argument("--max_memory_gb", type=positive_float, default=None,
                   help="memory allowed for the full matrix and projection matrices (default: 80%% of the "
                        "available memory)")
    p.add_argument("--processes", type=positive_int, default=None,
                   help="score in N processes (MPI ranks started for you by the bundled mpiexec, `make mpi`; the "
                        "scores are those of 1; default: an image import on the CPU, one per usable core and at most "
                        "one per 200 images, where the MPI runtime is there; otherwise 1)")
    add_context_args(p)
    return p


# --layers when not given, per --mode (why: tracin/defaults.py)
DEFAULT_LAYERS = {"self": defaults.SELF_LAYERS, "influence": defaults.INFLUENCE_LAYERS}


def parse_score_args(argv=None):
    args = score_parser().parse_args(argv)
    if args.layers is None:
        args.layers = DEFAULT_LAYERS[args.mode]
    if args.normalize is None and args.mode == "influence":  # self-influence takes none (calculate_score checks)
        args.normalize = defaults.NORMALIZE
    return args


def index_list(value):
    out = int_list(value)
    if any(v < 0 for v in out):
        raise argparse.ArgumentTypeError(f"indices must be 0 or more, got '{value}'")
    if any(v > INT64_MAX for v in out):
        raise argparse.ArgumentTypeError(f"indices must be at most {INT64_MAX}, got '{value}'")
    return out


def analysis_parser():
    p = Parser(prog="mislabel_analysis.py", description="Figures and metrics of mislabeled-sample detection, and "
                                                           "label_issues.csv: every sample, most suspicious first, "
                                                           "with a suggested label.")
    p.add_argument("--input", default=None,
                   help="folder with x_train.npy, y_train.npy, y_shuffle_train.npy, influence_all_epoch.npy "
                        "(default: none, which only --influence allows: the arrays are then taken from the .npz "
                        "and only its figure is drawn)")
    p.add_argument("--scores", default=None,
                   help="score file (default: --input/influence_all_epoch.npy); loss_last_epoch.npy, scores.json and "
                        "{epoch}_influence.npy are looked up beside it")
    p.add_argument("--output", default="figure", help="folder for figures, metrics.json and report.html")
    p.add_argument("--ckpt_analysis", action=Switch, default=False,
                   help="per-checkpoint analysis from {epoch}_influence.npy (calculate_score.py --save_every_epoch True)")
    p.add_argument("--save_extracted", action=Switch, default=False,
                   help="image sheets of the top-ranked samples of each decile (extracted_samples/decile_XX.png)")
    p.add_argument("--sheet_size", type=positive_int, default=64,
                   help="with --save_extracted: samples per decile sheet (the highest-ranked of the decile)")
    p.add_argument("--top", type=top_value, default=64,
                   help="how many of the most suspicious samples go into label_issues_top.png and report.html's "
                        "table (at most 100 rows): a count N, or a fraction such as 0.1 (label_issues.csv always "
                        "lists every sample)")
    p.add_argument("--influence", default=None,
                   help="influence_topk.npz of calculate_score.py --mode influence: draws influence_examples.png "
                        "(default: none)")
    p.add_argument("--influence_rows", type=positive_int, default=20,
                   help="with --influence: at most this many test samples (rows) in influence_examples.png")
    return p

"""Who owns an output folder: train.py writes into a folder holding another run's files only when asked.

The files of a run are the ones the scripts name: in the checkpoint folder checkpoints.json, params_K.h5 and
solver_K.h5; in the monitor folder nnabla's series; in the array folder the five arrays and files.json, and the
scores made from them (a score of other arrays is stale). A fresh run finding any of them refuses (one line, exit 2,
nothing written) unless --resume continues that run or --overwrite True replaces it: then exactly those files are
removed first, so no checkpoint, label or score of the earlier run is left beside the new ones. A run also locks every
folder it writes (tracin.io.lock_folder): a second run into the same folder is refused while the first is alive.
Nothing else in a folder (a user's notes, hidden files) is ever touched.
"""
import contextlib
import os
import re

from args import CliError
from tracin import formats
from tracin.io import ensure_dir, lock_folder

CHECKPOINT_RE = re.compile(r"^(params|solver)_\d+\.h5$")
MONITOR_FILES = frozenset([formats.monitor_file(s) for s in formats.MONITOR_SERIES] + ["Training-time.timer.txt"])
ARRAY_FILES = frozenset(formats.ARRAY_FILES + (formats.FILE_LIST,))
# outputs of calculate_score.py made from the arrays beside them: stale once the arrays are replaced
SCORE_FILES = frozenset((formats.SCORES, formats.LOSS, formats.PROBABILITIES, formats.SCORES_JSON, formats.TOPK,
                         formats.INFLUENCE_JSON, formats.MATRIX))
SCORE_RE = re.compile(r"^(\d+_influence|influence_run\d+)\.npy$")


def _is_run_file(name, kind):
    if kind == "checkpoints":
        return name == formats.MANIFEST or bool(CHECKPOINT_RE.match(name))
    if kind == "monitor":
        return name in MONITOR_FILES
    return name in ARRAY_FILES or name in SCORE_FILES or bool(SCORE_RE.match(name))


def run_files(folder, kinds):
    """Sorted names of the files of `kinds` ('checkpoints', 'monitor', 'arrays') directly in `folder`."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(n for n in names if any(_is_run_file(n, k) for k in kinds)
                  and os.path.isfile(os.path.join(folder, n)))


def merge(folders):
    """[(flag, folder, kinds)] with the same folder under several flags merged (their kinds united)."""
    out = {}
    for flag, folder, kinds in folders:
        key = os.path.realpath(folder)
        if key in out:
            out[key] = (out[key][0], out[key][1], out[key][2] | set(kinds))
        else:
            out[key] = (flag, folder, set(kinds))
    return list(out.values())


def refuse_others(folders, overwrite):
    """{folder: names} of the earlier run's files in `folders` ([(flag, folder, kinds)]) that --overwrite True
    replaces; without it, a CliError naming the flag, the folder and the files (nothing is written)."""
    found = {}
    for flag, folder, kinds in merge(folders):
        names = run_files(folder, kinds)
        if names and not overwrite:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise CliError(f"{flag} '{folder}' holds the files of another run ({shown}): add --resume to continue "
                           "that run, --overwrite True to replace its files, or choose another folder")
        if names:
            found[folder] = names
    return found


def claim(folders, create=()):
    """Lock every existing folder of a run, creating first those whose flag is in `create` (by rank 0, once
    everything is validated); a folder this call made is removed again when another run holds one of them. A folder
    neither existing nor created here is made by its writer later (a failure before then leaves no empty folder)."""
    made = []
    try:
        for flag, folder, _ in merge(folders):
            if not os.path.isdir(folder):
                if flag not in create:
                    continue
                made.append(folder)
                ensure_dir(folder, flag)
            lock_folder(folder, flag)
    except BaseException:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise


def clear(found):
    """Remove the earlier run's files refuse_others found (--overwrite True)."""
    for folder, names in found.items():
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))

"""Whether a trained model is good enough for its label-issue ranking to be trusted: its validation accuracy
against the chance level, written by train.py beside the checkpoints (VALIDATION) and shown by every later output.

Chance is the share of the most common validation label (what always answering that class scores). Skill is the
accuracy's share of the way from chance to perfect, (accuracy - chance) / (1 - chance): 0 = chance, 1 = perfect,
comparable across numbers of classes. A ranking by self-influence separates wrong labels from right ones only when
the network learned the task from the right ones; a network that memorised instead scores at chance on held-out
images and gives every sample a large gradient. MIN_SKILL was chosen on the own-data benchmark's tuning folders
(bench/own_data.py, docs/own_data.md): below it the moved files' AUROC fell short of 0.9. Validation labels come
from the same folders, so with 10 % wrong labels even a perfect model scores about 0.9: the threshold leaves room.
"""
import json
import os

import numpy as np

from .formats import VALIDATION  # noqa: F401 (gate.VALIDATION: in the checkpoint folder, written by train.py)

MIN_SKILL = 0.5


def model_check(accuracy, y_val, epochs=None):
    """The VALIDATION record of a model: accuracy, chance, skill, trusted, and the sentence every output shows."""
    y = np.asarray(y_val).reshape(-1)
    chance = float(np.bincount(y).max() / y.size) if y.size else 1.0
    accuracy = float(accuracy)
    skill = (accuracy - chance) / (1.0 - chance) if chance < 1.0 else 0.0
    record = {"accuracy": accuracy, "chance": chance, "skill": skill, "min_skill": MIN_SKILL,
              "needed_accuracy": chance + MIN_SKILL * (1.0 - chance), "n_val": int(y.size),
              "trusted": bool(skill >= MIN_SKILL), "epochs": epochs}
    record["sentence"] = sentence(record)
    return record


def sentence(record):
    """One plain sentence: the numbers, whether the ranking can be trusted, and what to do when not."""
    acc, chance = record["accuracy"], record["chance"]
    if record["trusted"]:
        return (f"Validation accuracy {acc:.2f} (chance {chance:.2f}): the model learned the task, so its ranking "
                "and suggested labels are worth reviewing from the top.")
    return (f"WARNING: the model is too weak to trust: validation accuracy {acc:.2f} against a chance level of "
            f"{chance:.2f} (needed: {record['needed_accuracy']:.2f}), so many wrong labels will not be near the top "
            "of the ranking and the suggested labels are guesses; start from weights trained on similar images "
            "(--init_from), add images per class, or train longer (--train_epochs) or on larger images (--image_size), "
            "then score and analyse again.")


def read_validation(checkpoint_folders):
    """The VALIDATION record of the checkpoint folder(s) a score file was computed from (an ensemble: the weakest
    run's), or None when none has one (checkpoints of older runs or of the original example)."""
    folders = [checkpoint_folders] if isinstance(checkpoint_folders, str) else list(checkpoint_folders or [])
    records = []
    for folder in folders:
        path = os.path.join(str(folder), VALIDATION)
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
            records.append(dict(record, sentence=sentence(record)))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return min(records, key=lambda r: r["skill"]) if records else None

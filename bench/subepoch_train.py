"""train.py with K checkpoints per epoch, for bench.one_training (a study instrument, not a product feature).

    python -m bench.subepoch_train OUT K -- TRAIN.PY FLAGS...

Runs train.py's main in this process with its flags, and after every 1/K of each epoch's batches (the Trainer's
batch callback) recalibrates batch norm as train.py does before a checkpoint and saves one more checkpoint into
OUT/sub, labelled epoch * K + q. The optimizer's trajectory is untouched (running statistics never enter a
training-mode forward pass), so the labels that are multiples of K are train.py's epoch checkpoints bit for bit;
OUT/sub/checkpoints.json is train.py's manifest with this list, so calculate_score.py scores it as it is.
"""
import json
import os
import shutil
import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    out, k, flags = argv[0], int(argv[1]), argv[3:]
    import train
    from tracin import checkpoints, formats, training
    from tracin.io import save_json
    sub = os.path.join(out, "sub")
    os.makedirs(sub, exist_ok=True)
    extra = {"checkpoints": []}
    epoch_pass = training.Trainer.train_epoch

    def train_epoch(self, epoch, x_train, y_train, lr, on_batch):
        n_batches = -(-len(x_train) // self.recipe["train_batch_size"])
        marks = {round(n_batches * q / k): q for q in range(1, k + 1)}
        done = [0]

        def after_batch(value):
            on_batch(value)
            done[0] += 1
            if done[0] in marks:
                self.recalibrate_bn(x_train)
                checkpoints.save_checkpoint(sub, epoch * k + marks[done[0]], lr, self.solver, extra)
        return epoch_pass(self, epoch, x_train, y_train, lr, after_batch)

    training.Trainer.train_epoch = train_epoch
    try:
        train.main(flags)
    finally:  # the class is shared by everything in this process
        training.Trainer.train_epoch = epoch_pass
    ckpt = flags[flags.index("--model_save_path") + 1]
    manifest = json.load(open(os.path.join(ckpt, formats.MANIFEST)))
    first = manifest["checkpoints"][0]
    for key in ("params", "solver"):
        shutil.copy(os.path.join(ckpt, first[key]), os.path.join(sub, first[key]))
    manifest["checkpoints"] = [first] + extra["checkpoints"]
    save_json(os.path.join(sub, formats.MANIFEST), manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Mutations: each returns a function of the work folder that changes ONE thing in one file (path relative to
the work folder). Byte-level damage is deterministic (fixed offsets and patterns, seeded random bytes)."""
import json
import os

import numpy as np


def _bytes(path):
    with open(path, "rb") as f:
        return bytearray(f.read())


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def truncate(rel, keep=0.5):
    """Keep the first `keep` fraction (a float) or `keep` bytes (an int) of the file."""
    def m(work):
        path = os.path.join(work, rel)
        data = _bytes(path)
        _write(path, data[:keep if isinstance(keep, int) else int(len(data) * keep)])
    return m


def empty(rel):
    return truncate(rel, 0)


def overwrite(rel, at=0.5, pattern=b"\xff", n=256):
    """Overwrite n bytes from offset `at` (a fraction of the size, or a byte offset) with `pattern` repeated,
    or with seeded random bytes when pattern is None."""
    def m(work):
        path = os.path.join(work, rel)
        data = _bytes(path)
        o = at if isinstance(at, int) else int(len(data) * at)
        fill = np.random.RandomState(0).bytes(n) if pattern is None else (pattern * n)[:n]
        data[o:o + n] = fill[:max(0, len(data) - o)]
        _write(path, data)
    return m


def edit_array(rel, fn):
    """Load the .npy, apply fn, save it back (np.save: a well-formed file holding the changed array)."""
    def m(work):
        path = os.path.join(work, rel)
        a = np.load(path)
        with open(path, "wb") as f:
            np.save(f, fn(a))
    return m


def as_float_with(value, index=3):
    """The array as float32 (same values) with one element set to value (NaN, inf, ...)."""
    def fn(a):
        a = a.astype(np.float32)
        a.reshape(-1)[index] = value
        return a
    return fn


def set_value(value, index=3):
    def fn(a):
        a = a.copy()
        a.reshape(-1)[index] = value
        return a
    return fn


def edit_json(rel, fn):
    """Load the JSON file, apply fn (in place), write it back; json writes NaN / Infinity as such."""
    def m(work):
        path = os.path.join(work, rel)
        with open(path) as f:
            obj = json.load(f)
        obj = fn(obj) or obj
        with open(path, "w") as f:
            json.dump(obj, f)
    return m


def write_text(rel, text):
    def m(work):
        with open(os.path.join(work, rel), "w") as f:
            f.write(text)
    return m


def remove(rel):
    return lambda work: os.remove(os.path.join(work, rel))


def h5_data(rel, dataset, pattern):
    """Overwrite the stored bytes of one dataset of an .h5 file (its values, not HDF5 metadata): 0xff bytes are
    NaN, 0x7f bytes 3.4e38, zeros a plausible but wrong weight."""
    def m(work):
        import h5py
        path = os.path.join(work, rel)
        with h5py.File(path, "r") as f:
            d = f[dataset]
            offset, size = d.id.get_offset(), d.id.get_storage_size()
        overwrite(rel, at=int(offset), pattern=pattern, n=int(size))(work)
    return m


def h5_reshape(rel, dataset, shape):
    """Replace one dataset by zeros of another shape (a checkpoint of another width), attributes kept."""
    def m(work):
        import h5py
        with h5py.File(os.path.join(work, rel), "r+") as f:
            attrs = dict(f[dataset].attrs)
            del f[dataset]
            d = f.create_dataset(dataset, data=np.zeros(shape, dtype=np.float32))
            d.attrs.update(attrs)
    return m


def npz_edit(rel, fn):
    """Load every array of an .npz, apply fn to the dict (in place), save it back."""
    def m(work):
        path = os.path.join(work, rel)
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        fn(arrays)
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    return m


def chain(*mutations):
    """Several steps that together make ONE hostile change (e.g. a file and the manifest entry naming it)."""
    def m(work):
        for step in mutations:
            step(work)
    return m

"""Checkpoints: round trip, atomic save, and clear errors for bad files; never pickle."""

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

import rnngrad
import rnngrad.checkpoint as ckpt
from rnngrad.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, model_meta, save_checkpoint


@pytest.fixture
def model():
    return rnngrad.RNN(3, 4, 2, hidden_activation="relu", output_activation="sigmoid", loss="cross_entropy",
                       dtype=np.float32, seed=0, recurrent_init="identity")


def test_round_trip(tmp_path, model):
    path = save_checkpoint(tmp_path / "c.npz", model, {"note": "hi"}, {"state/h": np.ones((2, 4))})
    meta, arrays = load_checkpoint(path)
    assert meta["note"] == "hi" and meta["model"]["loss"] == "binary_cross_entropy"
    np.testing.assert_array_equal(arrays["state/h"], np.ones((2, 4)))
    again = model_from_checkpoint(meta, arrays)
    assert repr(again) == repr(model) and again.recurrent_init == "identity"
    for k in model.params:
        np.testing.assert_array_equal(again.params[k], model.params[k])
        assert again.params[k].dtype == np.float32


def test_interrupted_save_leaves_the_previous_checkpoint(tmp_path, model, monkeypatch):
    path = save_checkpoint(tmp_path / "c.npz", model)
    before = path.read_bytes()
    model.params["W_h"][...] = 7.0

    def half_then_interrupt(fh, **arrays):
        fh.write(b"PK\x03\x04 partial zip")
        raise KeyboardInterrupt  # Ctrl-C in the middle of writing

    monkeypatch.setattr(np, "savez", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]  # no temporary file left
    meta, arrays = load_checkpoint(path)
    assert not np.all(arrays["param/W_h"] == 7.0)


def test_file_permissions_follow_the_umask(tmp_path, model):
    path = save_checkpoint(tmp_path / "c.npz", model)
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def make_bad_files(tmp_path, good: Path):
    data = good.read_bytes()
    files = {
        "truncated": data[: len(data) // 2],
        "random": np.random.default_rng(0).bytes(2000),
        "empty": b"",
        "text": b"hello, I am not a checkpoint\n",
    }
    buf = io.BytesIO()
    np.savez(buf, W=np.ones(3))
    files["foreign npz"] = buf.getvalue()
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps({"format": "something-else"})))
    files["foreign format"] = buf.getvalue()
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps({"format": "rnngrad-checkpoint", "version": 99})))
    files["future version"] = buf.getvalue()
    buf = io.BytesIO()
    np.savez(buf, meta=np.array([{"format": "rnngrad-checkpoint"}], dtype=object))  # would need pickle
    files["pickled"] = buf.getvalue()
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buf, "w") as dst:
        for item in src.infolist():
            content = src.read(item)
            if item.filename == "param/W_h.npy":
                content = content[:-8]  # a corrupted member
            dst.writestr(item, content)
    files["corrupted member"] = buf.getvalue()
    out = {}
    for name, content in files.items():
        p = tmp_path / f"{name.replace(' ', '_')}.npz"
        p.write_bytes(content)
        out[name] = p
    return out


def test_bad_files_raise_checkpoint_error(tmp_path, model):
    good = save_checkpoint(tmp_path / "good.npz", model)
    for name, path in make_bad_files(tmp_path, good).items():
        with pytest.raises(CheckpointError) as info:
            meta, arrays = load_checkpoint(path)
            model_from_checkpoint(meta, arrays)
        assert str(path) in str(info.value) or "checkpoint" in str(info.value), name
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.npz")
    assert issubclass(CheckpointError, ValueError)


def test_parameters_of_the_wrong_shape_are_refused(tmp_path, model):
    path = save_checkpoint(tmp_path / "c.npz", model)
    meta, arrays = load_checkpoint(path)
    arrays["param/W_h"] = np.zeros((3, 3), dtype=np.float32)
    with pytest.raises(CheckpointError, match=r"params\['W_h'\] must have shape \(4, 4\)"):
        model_from_checkpoint(meta, arrays)


def test_custom_objects_are_not_saved(tmp_path):
    class MyTanh(rnngrad.Tanh):
        pass

    m = rnngrad.RNN(2, 3, 2, hidden_activation=MyTanh())
    with pytest.raises(TypeError, match="custom object"):
        save_checkpoint(tmp_path / "c.npz", m)
    assert not (tmp_path / "c.npz").exists()


@pytest.mark.parametrize("value,dtype", [
    (np.array([object()], dtype=object), "object"),
    (np.array([b"ab"]), "|S2"),
    (np.zeros(2, dtype=[("a", "f8"), ("b", "O")]), "[('a', '<f8'), ('b', 'O')]"),
    (np.array(["2024-01-01"], dtype="datetime64[D]"), "datetime64[D]"),
])
def test_arrays_that_would_need_pickle_or_are_not_plain_are_refused_on_save(tmp_path, model, value, dtype):
    with pytest.raises(ValueError, match=re.escape(f"array 'a/b' has dtype {dtype};")):
        save_checkpoint(tmp_path / "c.npz", model, arrays={"a/b": value})
    assert not (tmp_path / "c.npz").exists()


def test_plain_arrays_of_every_kind_round_trip(tmp_path, model):
    extra = {"a/bool": np.array([True, False]), "a/int": np.arange(3, dtype=np.int16),
             "a/uint": np.arange(3, dtype=np.uint8), "a/complex": np.array([1 + 2j]), "a/text": np.array(["x", "yz"])}
    meta, arrays = load_checkpoint(save_checkpoint(tmp_path / "c.npz", model, arrays=extra))
    for key, value in extra.items():
        np.testing.assert_array_equal(arrays[key], value)
        assert arrays[key].dtype == value.dtype


@pytest.mark.parametrize("key", ["format", "version", "model"])
def test_reserved_meta_keys_are_refused(tmp_path, model, key):
    with pytest.raises(ValueError, match=f"meta key '{key}' is reserved"):
        save_checkpoint(tmp_path / "c.npz", model, meta={key: 7, "note": "x"})
    assert not (tmp_path / "c.npz").exists()


def test_numpy_is_told_not_to_pickle_either(tmp_path, model, monkeypatch):
    # Second guard: even past the dtype check, np.savez itself refuses an object array.
    monkeypatch.setattr(ckpt, "_plain_array", lambda name, value: np.asarray(value))
    with pytest.raises(ValueError, match="allow_pickle=False"):
        save_checkpoint(tmp_path / "c.npz", model, arrays={"a/b": np.array([object()], dtype=object)})
    assert not (tmp_path / "c.npz").exists()


# --- hostile files ---------------------------------------------------------------------------

def _npz_with(path, members: dict, compress=True):
    """A zip of raw .npy members (bytes), as np.savez writes them."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name + ".npy", data)
    return path


def _npy_bytes(arr) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
    return buf.getvalue()


def _good_members(model):
    meta = {"format": "rnngrad-checkpoint", "version": 2, "model": model_meta(model)}
    members = {"meta": _npy_bytes(np.array(json.dumps(meta)))}
    members.update({f"param/{k}": _npy_bytes(v) for k, v in model.params.items()})
    return members


def test_a_header_declaring_a_huge_array_is_refused_before_allocating(tmp_path):
    """306 bytes that declare a (10^12,) float32 array: refused in one line from the header."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
    model = rnngrad.RNN(3, 4, 2, seed=0)
    members = _good_members(model)
    members["param/W_h"] = buf.getvalue() + b"\0" * 16
    path = _npz_with(tmp_path / "huge.npz", members)
    with pytest.raises(CheckpointError, match=r"'param/W_h' declares shape \(1000000000000,\) of float32 "
                                              r"\(4000000000000 bytes\) but its member holds"):
        load_checkpoint(path)


def test_an_unknown_member_is_never_decompressed(tmp_path, monkeypatch):
    """A zip bomb under a name the reader does not know: not read at all (no time, no memory)."""
    model = rnngrad.RNN(3, 4, 2, seed=0)
    members = _good_members(model)
    members["bomb"] = _npy_bytes(np.zeros(50_000_000, dtype=np.uint8))  # 50 MB of zeros, ~50 kB zipped
    path = _npz_with(tmp_path / "bomb.npz", members)
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open",
                        lambda self, name, *a, **k: opened.append(getattr(name, "filename", name)) or
                        real_open(self, name, *a, **k))
    meta, arrays = load_checkpoint(path)
    assert "bomb.npy" not in opened and "bomb" not in arrays
    assert set(arrays) == {f"param/{k}" for k in model.params}


def test_arrays_beyond_the_size_limit_are_refused_naming_the_limit(tmp_path):
    model = rnngrad.RNN(3, 4, 2, seed=0)
    path = save_checkpoint(tmp_path / "c.npz", model, arrays={"optim/big": np.zeros(10_000)})
    with pytest.raises(CheckpointError, match=r"holds more than 1000 bytes of arrays.*max_bytes="):
        load_checkpoint(path, max_bytes=1000)
    assert load_checkpoint(path, groups=())[1].keys() == {f"param/{k}" for k in model.params}  # optim not read


@pytest.mark.parametrize("dtype", [np.float16, np.int64, bool])
def test_parameters_of_another_dtype_are_refused(tmp_path, dtype):
    model = rnngrad.RNN(3, 4, 2, seed=0)
    members = _good_members(model)
    members["param/W_x"] = _npy_bytes(model.params["W_x"].astype(dtype))
    path = _npz_with(tmp_path / "c.npz", members)
    with pytest.raises(CheckpointError, match=r"parameters must be float64 as the metadata says \(param/W_x is"):
        model_from_checkpoint(*load_checkpoint(path))


def test_a_memory_error_while_reading_is_one_line(tmp_path, monkeypatch):
    model = rnngrad.RNN(3, 4, 2, seed=0)
    path = save_checkpoint(tmp_path / "c.npz", model)

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate")

    monkeypatch.setattr(np.lib.format, "read_array", no_memory)
    with pytest.raises(CheckpointError, match="not a readable rnngrad checkpoint.*MemoryError: Unable to allocate"):
        load_checkpoint(path)

"""Hypothesis over the public API and the checkpoint reader: whatever goes in, the only exceptions
are ValueError / TypeError (CheckpointError is a ValueError), and no input array is changed."""

import io
import json
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import rnngrad
from rnngrad.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from rnngrad.train import load_training_checkpoint

ALLOWED = (ValueError, TypeError)
OUTCOMES = {"returned": 0, "refused": 0}  # how deep the calls got (printed with -s)

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                    st.sampled_from(["tanh", "relu", "softmax", "mse", "cross_entropy", "float32", "float16",
                                     "identity", "uniform", "orthogonal"]),
                    st.lists(st.integers(-2, 5), max_size=3), st.just(object()), st.just(1j))

dtypes = st.sampled_from([np.float64, np.float32, np.float16, np.int64, np.int32, np.uint8, np.bool_,
                          np.complex128, ">f8", ">i8", "<U3", object])


@st.composite
def arrays(draw):
    dt = np.dtype(draw(dtypes))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))
    if dt.kind == "O":
        return np.array(draw(st.lists(scalars, min_size=1, max_size=3)) + [None], dtype=object)
    if dt.kind == "U":
        return np.full(shape, "ab", dtype=dt)
    elements = None
    if dt.kind == "f":
        elements = st.floats(-10, 10, width=min(64, dt.itemsize * 8)) | st.sampled_from([np.nan, np.inf])
    return draw(hnp.arrays(dt, shape, elements=elements))


@st.composite
def plausible(draw):
    """Arrays of the shapes a (T, B) call of a 3-in 4-hidden 2-out model takes, with any values and
    dtypes: these get past the first shape checks, into the deeper ones."""
    T, B = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    shape = draw(st.sampled_from([(T, B, 3), (T, B), (T, B, 2), (B, 4), (2, B, 4), (4, B, 4), (B,), (B, T, 3)]))
    dt = np.dtype(draw(st.sampled_from([np.float64, np.float32, np.int64, np.bool_, ">f8", ">i8", np.uint8])))
    elements = (st.floats(-3, 3, width=min(64, dt.itemsize * 8)) | st.sampled_from([np.nan, np.inf, 0.5])
                if dt.kind == "f" else st.integers(-1, 4) if dt.kind == "i" else st.integers(0, 4) if dt.kind == "u"
                else None)
    return draw(hnp.arrays(dt, shape, elements=elements))


def anything():
    return st.one_of(scalars, arrays(), plausible(), plausible())


def snapshot(values):
    return [np.array(v, copy=True) if isinstance(v, np.ndarray) else v for v in values]


def unchanged(before, after):
    return all(not isinstance(b, np.ndarray) or (a.dtype == b.dtype and a.shape == b.shape and
                                                   np.array_equal(a, b, equal_nan=b.dtype.kind in "fc"))
               for b, a in zip(before, after))


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(anything(), min_size=3, max_size=3),
       st.dictionaries(st.sampled_from(["hidden_activation", "output_activation", "loss", "dtype", "seed",
                                        "num_layers", "bidirectional", "dropout", "batch_first",
                                        "recurrent_init"]), anything(), max_size=3))
def test_constructor_refuses_bad_arguments_with_value_or_type_errors(sizes, kw):
    # Sizes that would really be allocated (gigabytes, seconds each) are not what this is about;
    # sizes too large to allocate at all are, and are kept.
    numbers = [int(v) for v in sizes if isinstance(v, (int, np.integer)) and not isinstance(v, bool)]
    assume(not (len(numbers) == 3 and 10**7 < numbers[1] * sum(map(abs, numbers)) < 10**12))
    try:
        rnngrad.RNN(*sizes, **kw)
    except ALLOWED:
        pass


def model_for(draw_index):
    configs = [dict(), dict(num_layers=2, bidirectional=True, dtype="float64"),
               dict(output_activation="identity", loss="mse"), dict(hidden_activation="relu", batch_first=True),
               dict(output_activation="sigmoid", loss="binary_cross_entropy", dtype="float64")]
    return rnngrad.RNN(3, 4, 2, seed=0, **configs[draw_index % len(configs)])


@st.composite
def call_data(draw):
    """x and y of one (T, B) problem, each either right for the model or anything at all."""
    T, B = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    good_x = st.one_of(hnp.arrays(np.float64, (T, B, 3), elements=st.floats(-3, 3)),
                       hnp.arrays(np.int64, (T, B), elements=st.integers(0, 2)))
    good_y = st.one_of(hnp.arrays(np.int64, (T, B), elements=st.integers(0, 1)),
                       hnp.arrays(np.float64, (T, B, 2), elements=st.floats(0, 1)))
    return (draw(st.one_of(good_x, good_x, anything())), draw(st.one_of(good_y, good_y, anything())))


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(which=st.integers(0, 4), call=st.sampled_from(["gradients", "loss", "forward", "check_gradients"]),
       xy=call_data(), extra=st.dictionaries(
           st.sampled_from(["h0", "mask", "reduction", "lengths", "need", "engine", "dropout_seed",
                            "dropout_masks"]), anything(), max_size=2))
def test_calls_raise_only_value_or_type_errors_and_never_change_their_inputs(which, call, xy, extra):
    x, y = xy
    m = model_for(which)
    params = {k: v.copy() for k, v in m.params.items()}
    if call == "forward":
        extra.pop("reduction", None), extra.pop("need", None)
    if call == "check_gradients":
        extra.pop("need", None), extra.pop("dropout_masks", None)
    inputs = [x, y, *extra.values()]
    before = snapshot(inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NaN inputs may warn; only what is raised is judged here
        try:
            if call == "forward":
                m.forward(x, **extra)
            elif call == "check_gradients":
                rnngrad.check_gradients(m, x, y, **extra)
            else:
                getattr(m, call)(x, y, **extra)
            OUTCOMES["returned"] += 1
        except ALLOWED:
            OUTCOMES["refused"] += 1
    assert unchanged(before, inputs)
    assert all(np.array_equal(params[k], m.params[k]) for k in params)


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.npz"
    m = rnngrad.RNN(3, 4, 2, num_layers=2, seed=0)
    save_checkpoint(path, m, {"note": "x"}, {"optim/m": np.zeros(3)})
    return path.read_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_damaged_checkpoints_give_checkpoint_errors_only(checkpoint_bytes, tmp_path_factory, data):
    raw = bytearray(checkpoint_bytes)
    how = data.draw(st.sampled_from(["flip", "truncate", "append", "splice"]))
    if how == "flip":
        for i in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=20)):
            raw[i] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    elif how == "append":
        raw += data.draw(st.binary(min_size=1, max_size=200))
    else:
        i = data.draw(st.integers(0, len(raw)))
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=50))
    path = tmp_path_factory.mktemp("bad") / "checkpoint.npz"
    path.write_bytes(bytes(raw))
    try:
        meta, arrays = load_checkpoint(path)
        model_from_checkpoint(meta, arrays)
    except CheckpointError:
        pass
    try:
        load_training_checkpoint(path)
    except CheckpointError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(meta_model=st.dictionaries(st.sampled_from(["input_size", "hidden_size", "output_size", "num_layers",
                                                   "bidirectional", "dropout", "hidden_activation",
                                                   "output_activation", "loss", "dtype", "batch_first"]),
                                  anything().filter(lambda v: not isinstance(v, np.ndarray)), max_size=4),
       shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=5), dtype=dtypes)
def test_well_formed_zips_with_wrong_contents_give_checkpoint_errors_only(tmp_path_factory, meta_model, shape, dtype):
    """A valid zip of valid .npy members whose metadata or arrays are wrong for each other."""
    m = rnngrad.RNN(3, 4, 2, seed=0)
    path = tmp_path_factory.mktemp("crafted") / "checkpoint.npz"
    save_checkpoint(path, m)
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        arrays = {k: z[k] for k in z.files if k != "meta"}
    meta["model"].update({k: (v if not isinstance(v, object) or isinstance(v, (int, float, str, list, type(None)))
                              else str(v)) for k, v in meta_model.items()})
    dt = np.dtype(dtype)
    if dt.kind != "O":
        arrays["param/W_h"] = np.zeros(shape, dt)
    buf = io.BytesIO()
    try:
        meta_text = json.dumps(meta)
    except (TypeError, ValueError):
        return
    with zipfile.ZipFile(buf, "w") as zf:
        for name, arr in {"meta": np.array(meta_text), **arrays}.items():
            with zf.open(name + ".npy", "w") as fh:
                np.lib.format.write_array(fh, arr, allow_pickle=False)
    path.write_bytes(buf.getvalue())
    try:
        meta2, arrays2 = load_checkpoint(path)
        model_from_checkpoint(meta2, arrays2)
    except CheckpointError:
        pass


def test_the_fuzzed_calls_reached_past_validation():
    """Run after the fuzz above (file order): some calls must have been valid, or the fuzz only
    ever tested the first shape check."""
    if OUTCOMES["returned"] + OUTCOMES["refused"] == 0:
        pytest.skip("the call fuzz did not run in this session")
    print(OUTCOMES)
    assert OUTCOMES["returned"] >= 10

"""Bad input gets a clear ValueError/TypeError naming the argument, expected and given."""

import numpy as np

from conftest import all_grads
import pytest

import rnngrad

T, B, D, H, O = 4, 3, 2, 5, 3


@pytest.fixture
def model():
    return rnngrad.RNN(D, H, O, seed=0)


@pytest.fixture
def data(rng):
    return rng.standard_normal((T, B, D)), rng.integers(0, O, (T, B))


@pytest.mark.parametrize("x,match", [
    (np.zeros((T, D)), r"x must have shape \(T, B, D\) = \(\?, \?, 2\).*got shape \(4, 2\)"),
    (np.zeros((T, B, D, 1)), r"x must have shape \(T, B, D\).*got shape \(4, 3, 2, 1\)"),
    (np.zeros((T, B, D + 1)), r"x must have shape \(T, B, D\) = \(\?, \?, 2\); got shape \(4, 3, 3\)"),
    (np.zeros((0, B, D)), r"x must have T >= 1 and B >= 1"),
    (np.zeros((T, 0, D)), r"x must have T >= 1 and B >= 1"),
    (np.zeros((0, B), dtype=int), r"x must have T >= 1 and B >= 1; got shape \(0, 3\)"),
    (np.zeros((T, 0), dtype=int), r"x must have T >= 1 and B >= 1"),
    (np.full((T, B, D), np.nan), r"x contains NaN or Inf"),
    (np.array([[[1.0, np.inf]]]), r"x contains NaN or Inf \(first at index \(0, 0, 1\)\)"),
    (np.array([[0, 2]]), r"token indices.*\[0, input_size=2\).*from 0 to 2"),
    (np.array([[-1, 0]]), r"token indices"),
])
def test_bad_x(model, x, match):
    with pytest.raises(ValueError, match=match):
        model.forward(x)


def test_x_of_wrong_type(model):
    with pytest.raises(TypeError, match="x must hold real numbers"):
        model.forward(np.array([[["a", "b"]]]))
    with pytest.raises(TypeError, match="x must be an array; got None"):
        model.forward(None)


def test_bad_h0(model, data):
    x, y = data
    with pytest.raises(ValueError, match=r"h0 must have shape \(B, H\) = \(3, 5\); got shape \(5,\)"):
        model.gradients(x, y, h0=np.zeros(H))
    with pytest.raises(ValueError, match=r"h0 contains NaN"):
        model.gradients(x, y, h0=np.full((B, H), np.nan))


def test_bad_y_for_softmax_cross_entropy(model, data):
    x, y = data
    with pytest.raises(ValueError, match=r"y has shape \(3, 4, 3\) but x, read as \(T, B, ...\), gives \(T, B\) = "
                                         r"\(4, 3\): x and y disagree on which axis is time"):
        model.gradients(x, np.zeros((B, T, O)))
    with pytest.raises(ValueError, match=r"y must have shape \(T, B\) = \(4, 3\); got shape \(4, 2\)"):
        model.gradients(x, y[:, :2])
    with pytest.raises(ValueError, match=r"class indices.*\[0, output_size=3\).*from 3 to 3"):
        model.gradients(x, np.full((T, B), 3))
    with pytest.raises(ValueError, match=r"class indices"):
        model.gradients(x, np.full((T, B), -1))
    with pytest.raises(TypeError, match=r"must hold integer class indices; got dtype float64"):
        model.gradients(x, y.astype(float))
    with pytest.raises(TypeError, match=r"integer class indices; got dtype bool"):
        model.gradients(x, np.ones((T, B), dtype=bool))
    with pytest.raises(ValueError, match=r"probability distributions.*sums to 2"):
        model.gradients(x, np.full((T, B, O), 2 / 3))
    with pytest.raises(ValueError, match=r"y must lie in \[0, 1\]"):
        model.gradients(x, np.tile([1.5, -0.5, 0.0], (T, B, 1)))
    with pytest.raises(ValueError, match=r"y contains NaN"):
        model.gradients(x, np.full((T, B, O), np.nan))


def test_bad_y_for_other_losses(data):
    x, y = data
    bce = rnngrad.RNN(D, H, O, output_activation="sigmoid", loss="cross_entropy")
    with pytest.raises(ValueError, match=r"y must lie in \[0, 1\] for loss 'binary_cross_entropy'"):
        bce.gradients(x, np.full((T, B, O), 1.5))
    with pytest.raises(ValueError, match=r"integer class indices of shape \(T, B\) are for cross_entropy"):
        bce.gradients(x, y)
    mse = rnngrad.RNN(D, H, O, output_activation="identity", loss="mse")
    with pytest.raises(ValueError, match=r"y must have shape \(T, B, O\) = \(4, 3, 3\) for loss 'mse'"):
        mse.gradients(x, y)
    with pytest.raises(ValueError, match=r"y must have shape \(T, B, O\) = \(4, 3, 3\); got shape \(4, 3, 1\)"):
        mse.gradients(x, np.zeros((T, B, 1)))


def test_masked_positions_may_hold_padding(model, data):
    x, y = data
    mask = np.ones((T, B), dtype=bool)
    mask[2:, 0] = False
    y_pad = y.copy()
    y_pad[2:, 0] = -100  # PyTorch's ignore_index convention
    res = model.gradients(x, y_pad, mask=mask)
    assert np.isfinite(res.loss)
    y_bad = y_pad.copy()
    y_bad[0, 1] = 7
    with pytest.raises(ValueError, match="at unmasked positions"):
        model.gradients(x, y_bad, mask=mask)


def test_bad_mask(model, data):
    x, y = data
    with pytest.raises(ValueError, match=r"mask must have shape \(T, B\) = \(4, 3\); got shape \(3, 4\)"):
        model.gradients(x, y, mask=np.ones((B, T)))
    with pytest.raises(ValueError, match=r"mask must hold only 0/1"):
        model.gradients(x, y, mask=np.full((T, B), 2))
    with pytest.raises(ValueError, match=r"reduction='mean' needs at least one unmasked"):
        model.gradients(x, y, mask=np.zeros((T, B)), reduction="mean")
    assert model.gradients(x, y, mask=np.zeros((T, B))).loss == 0.0


def test_bad_params(model, data):
    x, y = data
    model.params["W_h"] = np.zeros((H, H + 1))
    with pytest.raises(ValueError, match=r"params\['W_h'\] must have shape \(5, 5\); got shape \(5, 6\)"):
        model.gradients(x, y)
    model.params["W_h"] = np.zeros((H, H))
    model.params["b_y"][1] = np.nan
    with pytest.raises(ValueError, match=r"params\['b_y'\] contains NaN or Inf \(first at index \(1,\)\)"):
        model.forward(x)
    del model.params["b_y"]
    with pytest.raises(ValueError, match=r"params is missing \['b_y'\]"):
        model.forward(x)
    model.params["b_y"] = "zeros"
    with pytest.raises(TypeError, match=r"params\['b_y'\] must hold real numbers"):
        model.forward(x)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(hidden_activation="gelu"), ValueError,
     r"unknown hidden_activation 'gelu'; expected one of \['identity', 'relu', 'sigmoid', 'tanh'\]"),
    (dict(output_activation="tanh"), ValueError,
     r"unknown output_activation 'tanh'; expected one of \['identity', 'sigmoid', 'softmax'\]"),
    (dict(loss="nll"), ValueError, r"unknown loss 'nll'; expected one of \['binary_cross_entropy', 'cross_entropy', 'mse'\]"),
    (dict(output_activation="identity", loss="cross_entropy"), ValueError, r"needs probabilities"),
    (dict(hidden_activation=rnngrad.Softmax()), ValueError, r"hidden_activation must be element-wise"),
    (dict(hidden_activation=3), TypeError, r"hidden_activation must be a name"),
    (dict(loss=None), TypeError, r"loss must be a name"),
    (dict(dtype=np.int32), ValueError, r"dtype must be numpy.float32 or numpy.float64; got int32"),
    (dict(dtype="banana"), TypeError, r"dtype must be"),
    (dict(recurrent_init="zeros"), ValueError, r"unknown recurrent_init 'zeros'"),
])
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        rnngrad.RNN(D, H, O, **kwargs)


@pytest.mark.parametrize("size,error", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError),
                                        ("4", TypeError)])
def test_bad_sizes(size, error):
    with pytest.raises(error, match="hidden_size must be a positive integer"):
        rnngrad.RNN(D, size, O)


def test_bad_reduction(model, data):
    x, y = data
    with pytest.raises(ValueError, match=r"unknown reduction 'avg'; expected one of \['mean', 'sum'\]"):
        model.gradients(x, y, reduction="avg")


def test_seed_and_ragged_input_and_need_string(model, data):
    x, y = data
    with pytest.raises(TypeError, match="seed must be None, a non-negative integer or a numpy.random.Generator"):
        rnngrad.RNN(D, H, O, seed="abc")
    with pytest.raises(ValueError, match="seed must be a non-negative integer; got -1"):
        rnngrad.RNN(D, H, O, seed=-1)
    with pytest.raises(ValueError, match="x must be a rectangular array of numbers"):
        model.forward([[[1.0, 2.0]], [[3.0]]])
    assert set(all_grads(model.gradients(x, y, need="dh0"))) == {"W_x", "W_h", "b_h", "W_y", "b_y", "h", "h0"}


def test_nan_padding_in_masked_targets_is_fine_and_errors_index_y_itself():
    m = rnngrad.RNN(D, H, O, output_activation="identity", loss="mse", seed=0)
    x = np.zeros((5, 2, D))
    y = np.zeros((5, 2, O))
    y[4, 1] = np.nan
    mask = np.ones((5, 2), dtype=bool)
    mask[4, 1] = False
    res = m.gradients(x, y, mask=mask)
    assert np.isfinite(res.loss)
    assert all(np.isfinite(g).all() for g in all_grads(res).values())  # the NaN row never reaches them
    with pytest.raises(ValueError, match=r"y contains NaN or Inf \(first at index \(4, 1, 0\)\)"):
        m.gradients(x, y)


def test_masked_row_whose_y_hat_underflows_leaves_loss_and_gradients_finite():
    """The general path (a user's CrossEntropy subclass): at a masked (t, b) the padded target's
    probability underflows to 0, so its loss row is inf and its dL/dy_hat row -inf; weight 0 must
    remove them, not turn them into NaN (0 · inf)."""
    class MyCrossEntropy(rnngrad.CrossEntropy):
        pass

    m = rnngrad.RNN(D, H, O, loss=MyCrossEntropy(), seed=0)
    m.params["W_y"][:] = 0
    m.params["b_y"][:] = [-2000, 0, 0]
    x = np.zeros((5, 2, D))
    y = np.ones((5, 2), dtype=int)
    mask = np.ones((5, 2), dtype=bool)
    mask[4, 1] = False
    y[4, 1] = 0  # the class whose probability is e^-2000 = 0
    res = m.gradients(x, y, mask=mask)
    assert np.isfinite(res.loss) and res.loss == pytest.approx(9 * np.log(2), rel=1e-12)
    for key, g in all_grads(res).items():
        assert np.isfinite(g).all(), key


def test_binary_cross_entropy_needs_an_elementwise_output():
    with pytest.raises(ValueError, match="needs an element-wise output activation"):
        rnngrad.RNN(D, H, O, output_activation="softmax", loss="binary_cross_entropy")

    class PerUnit(rnngrad.MSE):  # a user's loss asks for the same through the attribute
        needs_elementwise_output = True

    with pytest.raises(ValueError, match="loss 'mse' treats each output as an independent quantity"):
        rnngrad.RNN(D, H, O, output_activation="softmax", loss=PerUnit())
    assert rnngrad.RNN(D, H, O, output_activation="sigmoid", loss=PerUnit()).loss_fn.target == "real"


def test_a_loss_with_an_unknown_target_kind_is_refused():
    class Typo(rnngrad.MSE):
        target = "unit-interval"

    with pytest.raises(ValueError, match=r"loss 'mse' has target 'unit-interval'; expected one of "
                                         r"\['index_or_distribution', 'unit_interval', 'real'\]"):
        rnngrad.RNN(D, H, O, output_activation="sigmoid", loss=Typo())


def test_huge_but_finite_inputs_raise_no_warning(model):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.forward(np.full((2, 1, D), 1e200))


def test_bad_need_and_workspace_fail_before_any_work(model, data, monkeypatch):
    x, y = data
    import rnngrad.network as network_module

    def no_forward(*args, **kwargs):  # the checks must come first
        raise AssertionError("forward ran before need/workspace were checked")

    monkeypatch.setattr(network_module, "forward", no_forward)
    with pytest.raises(TypeError, match=r"need must be None, a name or an iterable of names.*got int 5"):
        model.gradients(x, y, need=5)
    with pytest.raises(ValueError, match=r"need may name only \['dx', 'dh0', 'dy_hat'\]; got \['W_x'\]"):
        model.gradients(x, y, need=("dx", "W_x"))
    with pytest.raises(TypeError, match=r"workspace must be an rnngrad.Workspace or None; got str"):
        model.gradients(x, y, workspace="a")
    with pytest.raises(TypeError, match=r"workspace must be an rnngrad.Workspace or None; got dict"):
        model.loss(x, y, workspace={})


def test_need_accepts_a_name_a_set_or_nothing(model, data):
    x, y = data
    assert set(all_grads(model.gradients(x, y, need="dh0"))) == {"W_x", "W_h", "b_h", "W_y", "b_y", "h", "h0"}
    assert "x" in all_grads(model.gradients(x, y, need={"dx"}))
    assert set(all_grads(model.gradients(x, y, need=[]))) == {"W_x", "W_h", "b_h", "W_y", "b_y", "h"}


@pytest.mark.parametrize("order", [">", "<"])
def test_non_native_integer_indices_are_read_as_their_values(order):
    """Token inputs and class targets in either byte order: valid ones accepted with the same
    result as native integers, out-of-range ones refused with their true values."""
    model = rnngrad.RNN(5, 3, 4, seed=0)
    x = np.array([[0, 4], [3, 1]], dtype=f"{order}i8")
    y = np.array([[1, 3], [0, 2]], dtype=f"{order}i8")
    native = model.gradients(x.astype(np.int64), y.astype(np.int64))
    res = model.gradients(x, y)
    assert res.loss == native.loss
    with pytest.raises(ValueError, match=r"x holds token indices, which must lie in \[0, input_size=5\); "
                                         r"got values from 0 to 5"):
        model.gradients(np.array([[0, 5]], dtype=f"{order}i8"), y[:1])
    with pytest.raises(ValueError, match=r"y holds class indices, which must lie in \[0, output_size=4\); "
                                         r"got values from -1 to 3"):
        model.gradients(x, np.array([[-1, 3], [0, 2]], dtype=f"{order}i8"))


def test_x_in_the_other_layout_is_named_not_y():
    """x batch-first (B, T, D) to a time-major model, y time-major: the shapes disagree about time,
    and the message says so instead of blaming y's shape alone."""
    m = rnngrad.RNN(3, 4, 2)
    with pytest.raises(ValueError, match=r"x and y disagree on which axis is time \(one of them is batch-first\?\)"):
        m.gradients(np.zeros((10, 5, 3)), np.zeros((5, 10), int))
    mb = rnngrad.RNN(3, 4, 2, batch_first=True, output_activation="identity", loss="mse")
    with pytest.raises(ValueError, match="disagree on which axis is time"):
        mb.loss(np.zeros((5, 10, 3)).swapaxes(0, 1), np.zeros((5, 10, 2)))

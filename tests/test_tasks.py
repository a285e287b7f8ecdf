"""Synthetic tasks: shapes, masks, targets, and their baselines measured on large samples."""

import math

import numpy as np

from conftest import all_grads
import pytest

from rnngrad import RNN
from rnngrad.data import (
    ADDING_BASELINE_MSE,
    SINE_BASELINE_MSE,
    TASKS,
    adding_problem,
    copy_task,
    copy_task_baseline,
    persistence_mse,
    sine_wave,
)


@pytest.fixture
def rng():
    return np.random.default_rng(2015)


def test_adding_problem_shapes_markers_and_targets(rng):
    x, y, mask = adding_problem(16, 20, rng)
    assert x.shape == (20, 16, 2) and y.shape == (20, 16, 1) and mask.shape == (20, 16)
    assert mask.dtype == bool and mask[-1].all() and not mask[:-1].any()
    values, markers = x[..., 0], x[..., 1]
    assert values.min() >= 0 and values.max() < 1
    np.testing.assert_array_equal(markers.sum(axis=0), 2)
    assert (markers[:10].sum(axis=0) == 1).all() and (markers[10:].sum(axis=0) == 1).all()
    np.testing.assert_allclose(y[-1, :, 0], (values * markers).sum(axis=0), rtol=1e-15)
    assert (y[:-1] == 0).all()


def test_adding_baseline_predicting_one_is_one_sixth(rng):
    x, y, mask = adding_problem(200_000, 4, rng)
    mse = np.mean((y[mask][:, 0] - 1.0) ** 2)
    assert ADDING_BASELINE_MSE == pytest.approx(0.1667, abs=1e-4)
    assert mse == pytest.approx(ADDING_BASELINE_MSE, abs=3e-3)


def test_adding_problem_feeds_the_model_and_masks_all_but_the_last_step(rng):
    task = TASKS["adding"]
    x, y, mask = task.make(8, 12, rng)
    model = RNN(task.input_size, 6, task.output_size, output_activation=task.output_activation,
                loss=task.loss, seed=0)
    # A model whose output is the constant 1 scores the baseline on its own data.
    model.params["W_y"][...] = 0.0
    model.params["b_y"][...] = 1.0
    res = model.gradients(x, y, mask=mask, reduction="mean")
    np.testing.assert_allclose(res.loss, np.mean((y[-1, :, 0] - 1) ** 2), rtol=1e-12)
    # Only the last step's loss reaches the output layer: earlier outputs get no gradient.
    assert np.all(all_grads(res)["y_hat"][:-1] == 0)


def test_copy_task_layout(rng):
    x, y, mask = copy_task(5, 15, rng, length=4, n_symbols=6)
    assert x.shape == y.shape == mask.shape == (15, 5)
    blank, go = 6, 7
    assert x.max() <= go and y.max() <= blank
    assert (x[:4] < 6).all()
    assert (x[4:10] == blank).all() and (x[10] == go).all() and (x[11:] == blank).all()
    np.testing.assert_array_equal(y[11:], x[:4])
    assert (y[:11] == blank).all()
    np.testing.assert_array_equal(mask, np.arange(15)[:, None] >= 11 + np.zeros(5, dtype=int))


def test_copy_task_baseline_is_uniform_guess_cross_entropy(rng):
    task = TASKS["copy"]
    x, y, mask = task.make(64, 20, rng)
    model = RNN(task.input_size, 4, task.output_size, loss=task.loss, seed=0)
    # Output logits equal on the 8 symbols and -inf-like on blank: the uniform guess.
    model.params["W_y"][...] = 0.0
    model.params["b_y"][...] = 0.0
    model.params["b_y"][8] = -1e3
    loss = model.loss(x, y, mask=mask, reduction="mean")
    assert loss == pytest.approx(copy_task_baseline(8), rel=1e-9)
    assert copy_task_baseline(8) == pytest.approx(math.log(8))
    assert task.baseline == copy_task_baseline(8)


def test_sine_wave_next_step_and_baselines(rng):
    x, y, mask = sine_wave(4000, 30, rng)
    assert mask is None
    assert x.shape == y.shape == (30, 4000, 1)
    np.testing.assert_array_equal(x[1:], y[:-1])
    assert np.abs(x).max() <= 1
    assert np.mean(y ** 2) == pytest.approx(SINE_BASELINE_MSE, abs=0.01)
    # Repeating the last input: E_φ[(sin(θ + ω) - sin θ)²] = 1 - cos ω, and for ω ~ U(0.1, 0.5)
    # E[cos ω] = (sin 0.5 - sin 0.1) / 0.4.
    expected = 1 - (np.sin(0.5) - np.sin(0.1)) / 0.4
    assert persistence_mse(x, y) == pytest.approx(expected, rel=0.03)
    assert persistence_mse(x, y) < SINE_BASELINE_MSE


def test_tasks_are_reproducible_from_a_seed():
    for name, task in TASKS.items():
        a = task.make(3, 12, np.random.default_rng(5))
        b = task.make(3, 12, 5)
        for u, v in zip(a, b):
            if u is None:
                assert v is None
            else:
                np.testing.assert_array_equal(u, v, err_msg=name)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_runs_through_its_model(rng, name):
    task = TASKS[name]
    x, y, mask = task.make(3, 12, rng)
    model = RNN(task.input_size, 5, task.output_size, output_activation=task.output_activation,
                loss=task.loss, seed=1)
    res = model.gradients(x, y, mask=mask, reduction="mean")
    assert np.isfinite(res.loss) and res.loss > 0


def test_task_argument_errors(rng):
    with pytest.raises(ValueError, match="T must be at least 2"):
        adding_problem(3, 1, rng)
    with pytest.raises(ValueError, match=r"T must be at least 2 \* length \+ 1 = 11"):
        copy_task(3, 10, rng, length=5)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        sine_wave(0, 10, rng)
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        sine_wave(2, 10, None)
    with pytest.raises(ValueError, match="omega"):
        sine_wave(2, 10, rng, omega=(0.5, 0.1))
    with pytest.raises(ValueError, match=r"x and y must both have shape \(T, B, O\)"):
        persistence_mse(np.zeros((3, 2)), np.zeros((3, 2)))

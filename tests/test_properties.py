"""Property-based tests (hypothesis) over shapes, dtypes and every combination."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rnngrad
from conftest import COMBOS, assert_close, make_targets, all_grads

torch = pytest.importorskip("torch")
from oracle import reference  # noqa: E402

dims = st.integers(1, 6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(combo=st.sampled_from(COMBOS), T=dims, B=dims, D=dims, H=dims, O=st.integers(2, 6),
       use_h0=st.booleans(), use_mask=st.booleans(), reduction=st.sampled_from(["sum", "mean"]),
       seed=st.integers(0, 2**32 - 1))
def test_gradients_match_autograd(combo, T, B, D, H, O, use_h0, use_mask, reduction, seed):
    f, g, l = combo
    rng = np.random.default_rng(seed)
    m = rnngrad.RNN(D, H, O, hidden_activation=f, output_activation=g, loss=l, seed=seed)
    x = rng.standard_normal((T, B, D))
    y = make_targets(rng, g, l, T, B, O)
    h0 = rng.standard_normal((B, H)) if use_h0 else None
    mask = rng.uniform(size=(T, B)) < 0.7 if use_mask else None
    if mask is not None:
        mask[0, 0] = True  # "mean" needs one unmasked position
    res = m.gradients(x, y, h0=h0, mask=mask, reduction=reduction)
    ref_loss, ref = reference(m.params, x, y, hidden=f, output=g, loss=l, h0=h0, mask=mask, reduction=reduction)
    assert res.loss == pytest.approx(ref_loss, rel=1e-12, abs=1e-300)
    for name, want in ref.items():
        assert_close(all_grads(res)[name], want, 1e-10, name)


@settings(max_examples=40, deadline=None)
@given(combo=st.sampled_from(COMBOS), T=dims, B=dims, dtype=st.sampled_from([np.float32, np.float64]),
       x_dtype=st.sampled_from([np.float32, np.float64, np.int64]), seed=st.integers(0, 2**32 - 1))
def test_outputs_have_the_model_dtype_and_shapes(combo, T, B, dtype, x_dtype, seed):
    f, g, l = combo
    D, H, O = 3, 4, 3
    rng = np.random.default_rng(seed)
    m = rnngrad.RNN(D, H, O, hidden_activation=f, output_activation=g, loss=l, dtype=dtype, seed=seed)
    x = rng.standard_normal((T, B, D)).astype(x_dtype)
    res = m.gradients(x, make_targets(rng, g, l, T, B, O))
    shapes = {**{k: v.shape for k, v in m.params.items()},
              "h": (T, B, H), "y_hat": (T, B, O), "x": (T, B, D), "h0": (B, H)}
    assert {k: v.shape for k, v in all_grads(res).items()} == shapes
    assert list(res.grads) == list(m.params)  # exactly the parameters' keys, in their order
    assert all(v.dtype == dtype for v in all_grads(res).values())
    assert res.h_last.shape == (B, H) and res.h_last.dtype == dtype
    assert np.isfinite(res.loss)

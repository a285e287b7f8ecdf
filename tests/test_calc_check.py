"""rnngrad gradcheck --method rtrl|jvp|hvp: the calculations beyond BPTT against finite differences,
end to end from the command line, and the check fails on a planted error."""

import numpy as np
import pytest

import rnngrad
from rnngrad.calc_check import check_calculation
from rnngrad.cli import main, random_problem


@pytest.mark.parametrize("method", ["rtrl", "jvp", "hvp"])
@pytest.mark.parametrize("extra", [[], ["-L", "2", "--mask", "--reduction", "mean"], ["-f", "relu", "-g", "sigmoid",
                                                                                       "-l", "binary_cross_entropy"]])
def test_cli_checks_each_calculation(method, extra, capsys):
    assert main(["gradcheck", "--method", method, *extra]) == 0
    out = capsys.readouterr().out
    assert f"{method} matches finite differences" in out and "| NO |" not in out


@pytest.mark.parametrize("method,target", [("rtrl", "rnngrad.rtrl.rtrl_gradients"),
                                           ("jvp", "rnngrad.forward_mode.jvp"),
                                           ("hvp", "rnngrad.curvature.hvp")])
def test_a_planted_error_fails_the_check(method, target, monkeypatch):
    model = rnngrad.RNN(3, 4, 2, seed=0, dtype=np.float64)
    x, y = random_problem(model, 5, 2, np.random.default_rng(1))
    assert check_calculation(model, x, y, method).passed
    module, name = target.rsplit(".", 1)
    real = getattr(__import__(module, fromlist=[name]), name)

    def off_by_1e_4(*args, **kw):
        out = real(*args, **kw)
        if method == "rtrl":
            out.grads["W_h"] = out.grads["W_h"] * (1 + 1e-4) + 1e-4
            return out
        if method == "jvp":
            return out[0], out[1] * (1 + 1e-4)
        return {k: v * (1 + 1e-4) for k, v in out.items()}

    monkeypatch.setattr(target, off_by_1e_4)
    assert not check_calculation(model, x, y, method).passed


def test_method_option_refuses_dropout_and_bidirectional_rtrl(capsys):
    assert main(["gradcheck", "--method", "jvp", "-L", "2", "--dropout", "0.2"]) == 2
    assert "checks models without dropout" in capsys.readouterr().err
    assert main(["gradcheck", "--method", "rtrl", "--bidirectional"]) == 2
    assert "needs a unidirectional model" in capsys.readouterr().err

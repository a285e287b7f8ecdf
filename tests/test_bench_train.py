"""rnngrad.bench_train: the PyTorch loop is the same training as rnngrad's Trainer.step (the loss
trajectories from the same weights agree), and the benchmark returns sane figures. No timing asserts.

Oracle: PyTorch autograd + torch.optim.Adam + clip_grad_norm_, an independent implementation of
every part of the update; the first losses only agree if the forward pass, the gradients, the
clipping, Adam and the carried state all agree.
"""

import json
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rnngrad import bench_train  # noqa: E402
from rnngrad.bench_train import bench_config, loss_trajectories, run_benchmark  # noqa: E402
from rnngrad.train import TextData  # noqa: E402

# Small text so that a run of a few steps crosses an epoch (the state is reset there) and the
# carried state is used at every other step: 300 characters, 95% training in B = 4 streams of
# 71, so 7 chunks of k = 10 per epoch.
TINY = dict(hidden_size=8, batch_size=4, chunk_len=10, max_chars=300)
# float32: each loss is a mean over T·B terms summed in different orders by the two libraries,
# then carried through Adam updates; measured differences were below 3e-7 (2 ulp). A real
# difference of the loops is far above: a learning rate 10% off gives 1e-4 after one update.
FLOAT32_RTOL = 1e-5


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.abs(a - b) / np.abs(b)


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", FLOAT32_RTOL)])
def test_both_loops_train_alike_across_chunks_and_an_epoch(dtype, rtol):
    config = bench_config(**TINY, dtype=dtype)
    data = TextData(config)
    steps = data.batches_per_epoch + 3  # past the epoch boundary: h reset, then carried again
    assert data.batches_per_epoch < steps
    ours, theirs = loss_trajectories(config, steps, data)
    assert len(ours) == len(theirs) == steps
    assert np.all(np.isfinite(ours)) and ours[-1] < ours[0]  # it trains
    assert np.max(_rel(ours, theirs)) <= rtol, (ours, theirs)


def test_clipping_is_active_and_matched():
    """A large learning rate on a larger model: the gradient norm exceeds the clip, so the loops
    agree only if both clip the same way."""
    config = replace(bench_config(**TINY, dtype="float64"), lr=0.05, clip_norm=0.05)
    from rnngrad.bench_train import _trainer
    import tempfile

    data = TextData(config)
    with tempfile.TemporaryDirectory() as folder:
        trainer = _trainer(config, data, folder)
        res = trainer.model.gradients(*(lambda b: (b.x, b.y))(data.batch(0, config)), reduction="mean")
        norm = np.sqrt(sum(float(np.sum(g * g)) for g in res.grads.values()))
    assert norm > config.clip_norm  # clipping acts on the first step already
    ours, theirs = loss_trajectories(config, 4, data)
    assert np.max(_rel(ours, theirs)) <= 1e-10


def test_the_comparison_can_fail():
    """A PyTorch loop that differs in one setting (its lr 10% higher) leaves the tolerance at once."""
    config = bench_config(**TINY, dtype="float32")
    data = TextData(config)
    ours, _ = loss_trajectories(config, 3, data)
    _, other = loss_trajectories(replace(config, lr=config.lr * 1.1), 3, data)
    assert ours[0] == pytest.approx(other[0], rel=FLOAT32_RTOL)  # same weights before any update
    assert np.max(_rel(ours[1:], other[1:])) > 10 * FLOAT32_RTOL


def test_the_main_job_model_agrees_in_float32():
    """The benchmarked model itself (H = 256, B = 32, k = 64, V = 100), first two updates."""
    config = bench_config(dtype="float32")
    assert (config.hidden_size, config.batch_size, config.chunk_len) == (256, 32, 64)
    ours, theirs = loss_trajectories(config, 2)
    assert np.max(_rel(ours, theirs)) <= FLOAT32_RTOL


def test_run_benchmark_returns_sane_positive_figures():
    result = run_benchmark(steps=4, rounds=2, threads=1, **TINY)
    # A tiny model: one thread by the rule, without measuring the load.
    assert result["threads"] == {"used": 1, "automatic": 1, "given": 1, "others_busy_cores_at_choice": None}
    assert result["agreement"]["max_rel_difference"] <= bench_train.AGREEMENT_RTOL
    names = list(result["contenders"])
    assert names[:3] == ["rnngrad", "rnngrad (BLAS default threads)", "PyTorch (1 thread)"]
    tokens = TINY["batch_size"] * TINY["chunk_len"]
    assert result["tokens_per_update"] == tokens
    for name, c in result["contenders"].items():
        assert c["median_s"] > 0 and np.isfinite(c["median_s"]), name
        assert c["tokens_per_s"] == pytest.approx(tokens / c["median_s"])
        assert c["updates_per_s"] == pytest.approx(1 / c["median_s"])
        assert len(c["round_medians_s"]) == 2
        assert c["ratio_to_rnngrad"] > 0
    assert result["contenders"]["rnngrad"]["ratio_to_rnngrad"] == 1.0
    assert result["target"]["measured"] == result["contenders"]["PyTorch (1 thread)"]["ratio_to_rnngrad"]
    assert result["others_busy_cores"] is None or result["others_busy_cores"] >= 0
    text = bench_train.format_markdown(result)
    assert "| rnngrad |" in text and "PyTorch (1 thread) / rnngrad" in text
    json.dumps(result)  # every figure is JSON-serialisable


def test_run_benchmark_without_torch_times_rnngrad_only():
    result = run_benchmark(steps=2, rounds=1, use_torch=False, **TINY)
    assert list(result["contenders"]) == ["rnngrad", "rnngrad (BLAS default threads)"]
    assert "target" not in result and "agreement" not in result
    assert result["threads"]["used"] == result["threads"]["automatic"] == 1


def test_torch_threads_are_restored():
    before = torch.get_num_threads()
    run_benchmark(steps=2, rounds=1, threads=1, check=False, **TINY)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("bad, error", [({"threads": 0}, ValueError), ({"steps": 0}, ValueError),
                                        ({"threads": 1.5}, TypeError)])
def test_bad_arguments_are_refused_naming_them(bad, error):
    with pytest.raises(error, match=next(iter(bad))):
        run_benchmark(**{"steps": 2, **bad}, **TINY)


def test_command_line_writes_json(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="rnngrad")
    sub = parser.add_subparsers(dest="command")
    bench_train.register(sub)
    out = tmp_path / "train.json"
    args = parser.parse_args(["bench-train", "--steps", "2", "--rounds", "1", "--threads", "1", "-H", "8", "-B", "4",
                              "-k", "10", "--no-check", "--json", str(out)])
    assert args.run(args) == 0
    printed = capsys.readouterr().out
    assert "tokens/s" in printed
    saved = json.loads(out.read_text())
    assert saved["model"]["hidden_size"] == 8 and saved["threads"]["used"] == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["bench-train", "--threads", "0"])


def test_thread_sweep_returns_a_time_for_every_setting_and_size():
    result = bench_train.thread_sweep(sizes=((8, 4), (12, 2)), settings=(1, 2, None), rounds=2, block_s=0.01,
                                      max_chars=TINY["max_chars"])
    assert [(e["hidden_size"], e["batch_size"]) for e in result["sizes"]] == [(8, 4), (12, 2)]
    for e in result["sizes"]:
        assert list(e["settings"]) == ["1", "2", "default"]
        assert e["updates_per_block"] >= 2
        for name, c in e["settings"].items():
            assert c["median_ms"] > 0 and len(c["round_ms"]) == 2 and c["ratio"] > 0, name
        assert e["settings"]["1"]["ratio"] == 1.0
    table = bench_train.format_sweep(result)
    assert "| (8, 4) |" in table and "time 2 / time 1" in table
    json.dumps(result)


def test_size_is_refused_without_sweep():
    import argparse

    parser = argparse.ArgumentParser(prog="rnngrad")
    bench_train.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench-train", "--size", "8,4"])
    with pytest.raises(ValueError, match="--size is for --sweep"):
        args.run(args)
    with pytest.raises(SystemExit):
        parser.parse_args(["bench-train", "--sweep", "--size", "8"])

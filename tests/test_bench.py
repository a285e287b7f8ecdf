"""`rnngrad bench` end to end on a tiny shape: agreement check, tables, JSON. No timing asserts."""

import json
import subprocess
import sys

import numpy as np

from conftest import all_grads
import pytest

from rnngrad import bench, bench_deep
from rnngrad.cli import build_parser

TINY = (4, 2, 3, 5, 3)


def _has_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def test_textbook_loop_matches_rnngrad():
    problem = bench.make_problem(TINY, np.float64, seed=2)
    from rnngrad import RNN

    model = RNN(3, 5, 3)
    model.params = problem["params"]
    res = model.gradients(problem["x"], problem["y"], h0=problem["h0"])
    ref = bench.textbook_gradients(problem["params"], problem["x"], problem["y"], problem["h0"])
    assert ref["loss"] == pytest.approx(res.loss, rel=1e-12)
    assert set(ref["grads"]) == set(all_grads(res))
    for key, value in ref["grads"].items():
        np.testing.assert_allclose(all_grads(res)[key], value, rtol=1e-10, atol=1e-13, err_msg=key)


def test_check_agreement_covers_every_contender():
    report = bench.check_agreement(TINY, use_torch=_has_torch(), threads=1)
    assert report["passed"]
    assert "rnngrad" in report["max_rel_error"]
    assert "h" in report["compared"]["rnngrad"] and "x" in report["compared"]["rnngrad"]
    if _has_torch():
        assert report["max_rel_error"]["PyTorch"] <= bench.AGREEMENT_RTOL
        assert "W_h" in report["compared"]["PyTorch"]


def test_matmul_flops():
    T, B, D, H, O = TINY
    assert bench.matmul_flops(TINY) == 6 * T * B * H * (D + H + O)


def test_run_benchmark_and_markdown(tmp_path):
    result = bench.run_benchmark([TINY], repeats=2, use_torch=_has_torch(), threads=1)
    json.dumps(result)  # JSON-ready
    (entry,) = result["shapes"]
    assert entry["shape"] == list(TINY)
    assert entry["agreement"]["passed"]
    names = set(entry["contenders"])
    assert {"rnngrad", "textbook loop"} <= names
    assert ("PyTorch" in names) == _has_torch()
    for c in entry["contenders"].values():
        assert c["median_s"] > 0 and c["gflops"] > 0
    assert entry["contenders"]["rnngrad"]["ratio_to_rnngrad"] == pytest.approx(1.0)
    mem = entry["memory"]
    assert mem["peak_bytes"] >= mem["inputs_params_bytes"] and mem["ratio"] > 0
    text = bench.format_markdown(result)
    assert "| contender | median ms |" in text and "textbook loop" in text


def test_run_benchmark_takes_ratios_round_by_round(monkeypatch):
    """run_benchmark and its targets table use the per-round ratios of _time_calls' blocks: here
    the machine turns three times slower in round 2 between rnngrad's block and the others'."""
    def fake_time_calls(runs, repeats, rounds):
        assert rounds == bench.rounds_for(repeats)
        return {name: ([[1e-3], [1e-3], [3e-3]] if name == "rnngrad" else [[2e-3], [6e-3], [6e-3]])
                for name in runs}

    monkeypatch.setattr(bench, "_time_calls", fake_time_calls)
    monkeypatch.setitem(bench.TARGETS, TINY, (1.5, 0.5))
    result = bench.run_benchmark([TINY], repeats=3, use_torch=_has_torch(), threads=1, check=False)
    (entry,) = result["shapes"]
    assert entry["rounds"] == 3
    textbook = entry["contenders"]["textbook loop"]
    assert textbook["round_medians_s"] == [2e-3, 6e-3, 6e-3]
    assert textbook["ratio_to_rnngrad"] == pytest.approx(2.0)  # the ratio of medians would be 6
    targets = entry["targets"]
    assert targets["memory_ratio"]["met"] is (entry["memory"]["ratio"] <= bench.MEMORY_TARGET)
    if _has_torch():
        assert targets["torch_ratio"]["measured"] == pytest.approx(2.0) and targets["torch_ratio"]["met"]
        assert targets["torch_ratio_workspace"]["measured"] == pytest.approx(1.0)  # same fake blocks
    text = bench.format_markdown(result)
    assert "3 repeats in 3 rounds" in text and "### Targets" in text and "issue" not in text
    assert f"| {TINY} |" in text


@pytest.mark.parametrize("option", ["--repeats=0", "--repeats=-1", "--budget=0", "--threads=0", "--repeats=x"])
def test_bench_options_must_be_positive(option, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--tiny", option])
    assert exc.value.code == 2
    assert "expected a positive" in capsys.readouterr().err


def test_rounds_for():
    assert [bench.rounds_for(n) for n in (1, 5, 12, 20, 36, 200)] == [3, 3, 3, 5, 9, 9]


def test_targets_table_for_the_target_shapes():
    # _judge works on a hand-made entry (the target shapes are too large for a unit test).
    entry = {"contenders": {"rnngrad": {"ratio_to_rnngrad": 1.0}, "PyTorch": {"ratio_to_rnngrad": 9.0}},
             "fraction_of_matmul": 0.5, "memory": {"ratio": 1.2}}
    judged = bench._judge(entry, bench.TARGETS[(25, 1, 65, 100, 65)])
    assert judged["torch_ratio"]["met"] and judged["memory_ratio"]["met"]
    assert "fraction_of_matmul" not in judged


def test_targets_judged_with_a_workspace_too():
    # The workspace ratio is taken round by round: 1.5, 4.5 (the machine slowed between the two
    # blocks of round 2), 1.5 -> 1.5; the ratio of the medians would be 3.6 / 0.8 = 4.5.
    entry = {"contenders": {"rnngrad": {"median_s": 1.0, "gflops": 100.0},
                            bench.WORKSPACE: {"median_s": 0.8, "gflops": 125.0,
                                              "round_medians_s": [0.8, 0.8, 2.4]},
                            "PyTorch": {"median_s": 3.6, "ratio_to_rnngrad": 1.2,
                                        "round_medians_s": [1.2, 3.6, 3.6]}},
             "rnngrad_gflops": 100.0, "fraction_of_matmul": 0.7, "memory": {"ratio": 1.2}}
    judged = bench._judge(entry, bench.TARGETS[(100, 32, 256, 512, 256)])
    assert not judged["torch_ratio"]["met"] and not judged["fraction_of_matmul"]["met"]
    assert judged["torch_ratio_workspace"]["measured"] == pytest.approx(1.5)
    assert judged["torch_ratio_workspace"]["met"]
    assert judged["fraction_of_matmul_workspace"]["measured"] == pytest.approx(0.875)
    assert judged["fraction_of_matmul_workspace"]["met"]


def test_cli_registers_bench():
    args = build_parser().parse_args(["bench", "--tiny", "--json", "out.json"])
    assert args.command == "bench" and args.tiny and args.json == "out.json"


@pytest.mark.parametrize("entry", [["rnngrad"], [sys.executable, "-m", "rnngrad.bench"]])
def test_bench_command_tiny(tmp_path, entry):
    if entry == ["rnngrad"]:
        entry = [sys.executable, "-m", "rnngrad"]
    out = tmp_path / "bench.json"
    proc = subprocess.run([*entry, *(["bench"] if entry[-1] == "rnngrad" else []), "--tiny", "--threads", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| rnngrad |" in proc.stdout
    data = json.loads(out.read_text())
    assert data["shapes"][0]["agreement"]["passed"]


def test_bad_shape_is_refused():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--shape", "1,2,3"])


def _load_generality():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "generality.py"
    spec = importlib.util.spec_from_file_location("generality", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generality_variants_compute_what_they_say(tmp_path):
    """benchmarks/generality.py: every variant is a valid gradients call with the options its
    name gives (so the speed table compares what it claims), and the token dW_x methods agree."""
    gen = _load_generality()
    problem = bench.make_problem(TINY, np.float64, seed=3)
    for name, (options, how) in gen.VARIANTS.items():
        res = gen.make_call(name, problem)()
        assert np.isfinite(res.loss), name
        need_all = "need" not in how
        assert ("x" in all_grads(res)) == (need_all and not how.get("tokens")), name
        assert ("h0" in all_grads(res)) == need_all, name
        for key in ("W_x", "W_h", "b_h", "W_y", "b_y"):
            assert all_grads(res)[key].shape == problem["params"][key].shape, (name, key)
    # The variants differ where their names say: a masked or mean-reduced loss is not the sum.
    canonical = gen.make_call(next(iter(gen.VARIANTS)), problem)().loss
    assert gen.make_call('canonical + reduction="mean"', problem)().loss == pytest.approx(canonical / (4 * 2))
    assert gen.make_call("canonical + mask (20% of (t, b) masked)", problem)().loss < canonical
    for dtype in (np.float32, np.float64):
        gen.scatter_add_contenders(50, 6, 7, dtype)  # asserts agreement itself

    out = tmp_path / "gen.json"
    assert gen.main(["--shape", "3,2,4,5,3", "--repeats", "2", "--no-torch", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    variants = data["shapes"][0]["variants"]
    assert list(variants) == list(gen.VARIANTS)
    assert all(v["median_s"] > 0 and 0 < v["relative_to_canonical"] < 1e3 for v in variants.values())
    assert set(data["shapes"][0]["token_dW_x"]) >= {"np.add.at", "rnngrad without numba: sort + np.add.reduceat"}


def test_time_calls_rotates_blocks_and_keeps_rounds():
    order = []
    runs = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    times = bench._time_calls(runs, repeats=7, rounds=3)
    assert [len(r) for r in times["a"]] == [3, 2, 2] == [len(r) for r in times["b"]]
    # One untimed call, then the block, for each contender in turn, round after round.
    assert order == ["a"] * 4 + ["b"] * 4 + (["a"] * 3 + ["b"] * 3) * 2
    assert all(t >= 0 for r in times["a"] for t in r)


def test_round_ratio_cancels_a_change_of_machine_speed():
    """B takes twice A's time; the machine turns three times slower during round 4, after A's
    block and before B's. The median of the per-round ratios is 2; the ratio of the overall
    medians is 6, A's median falling in the fast state and B's in the slow one."""
    a_blocks = [1.0] * 4 + [3.0] * 3
    b_blocks = [2.0] * 3 + [6.0] * 4
    assert bench._round_ratio(b_blocks, a_blocks) == 2.0
    assert float(np.median(b_blocks)) / float(np.median(a_blocks)) == 6.0


# --- stacked and bidirectional networks (rnngrad.bench_deep) ----------------------------

TINY_DEEP = (4, 2, 3, 5, 3, 2, True)


def _has_jax():
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


def test_deep_shapes_are_the_target_shapes():
    assert bench.DEEP_SHAPES == ((100, 32, 64, 128, 64, 2, False), (100, 32, 64, 128, 64, 2, True),
                                 (50, 64, 128, 512, 128, 3, True))
    assert all(bench_deep.is_deep(s) for s in bench.DEEP_SHAPES + bench.TINY_DEEP_SHAPES)
    assert not any(bench_deep.is_deep(s) for s in bench.SHAPES)


def test_deep_flops_reduce_to_the_single_layer_count():
    assert bench_deep.deep_flops((*TINY, 1, False)) == bench.matmul_flops(TINY)
    T, B, D, H, O = TINY
    N = T * B
    # Two layers, both directions: layer 0 reads D, layer 1 reads 2H; the head reads 2H.
    assert bench_deep.deep_flops((*TINY, 2, True)) == 2 * 6 * N * H * (D + H) + 2 * 6 * N * H * (2 * H + H) \
        + 6 * N * 2 * H * O


@pytest.mark.parametrize("shape", [TINY_DEEP, (4, 2, 3, 5, 3, 3, False), (3, 2, 3, 4, 3, 1, True)])
def test_deep_agreement_with_torch(shape):
    """rnngrad, both engines, against PyTorch (and JAX where installed) in float64."""
    pytest.importorskip("torch")
    report = bench_deep.check_deep_agreement(shape, use_torch=True, use_jax=_has_jax(), threads=1)
    assert report["reference"] == "PyTorch" and report["passed"], report
    K, bi = shape[5:]
    model = bench_deep._model(shape, np.float64)
    assert report["compared"] == ["loss", *model.params, "x", "h0"]
    assert len(model.params) == 3 * K * (2 if bi else 1) + 2
    assert {"rnngrad", "rnngrad (pure NumPy)"} <= set(report["max_rel_error"]) or not bench.numba_available()
    assert all(e <= bench.AGREEMENT_RTOL for e in report["max_rel_error"].values())


def test_deep_agreement_fails_loudly(monkeypatch):
    """A contender that is off by a relative 1e-6 stops the bench before any timing."""
    pytest.importorskip("torch")
    real = bench_deep._rnngrad

    def off(problem, engine, workspace=False):
        run = real(problem, engine, workspace)

        def wrong():
            out = run()
            out["grads"]["W_h_l1_reverse"] = out["grads"]["W_h_l1_reverse"] * (1 + 1e-6)
            return out
        return wrong

    monkeypatch.setattr(bench_deep, "_rnngrad", off)
    report = bench_deep.check_deep_agreement(TINY_DEEP, use_torch=True, use_jax=False, threads=1)
    assert not report["passed"]
    with pytest.raises(RuntimeError, match="disagree with PyTorch"):
        bench.run_benchmark([TINY_DEEP], repeats=1, use_torch=True, use_jax=False, threads=1)


def test_deep_agreement_without_torch_uses_the_numpy_engine():
    report = bench_deep.check_deep_agreement(TINY_DEEP, use_torch=False, use_jax=False, threads=1)
    assert report["passed"]
    assert report["reference"] in ("rnngrad (pure NumPy)", bench.WORKSPACE)
    assert "PyTorch" not in report["max_rel_error"]


def test_jax_contender_agrees_in_float32_and_float64():
    pytest.importorskip("jax")
    for shape in (TINY_DEEP, (4, 2, 3, 5, 3, 1, False)):
        report = bench_deep.check_deep_agreement(shape, use_torch=False, use_jax=True, threads=1)
        assert report["passed"] and report["max_rel_error"]["JAX"] <= bench.AGREEMENT_RTOL, report
        # The timed float32 call computes the same loss and gradients, in float32.
        problem = bench_deep.make_deep_problem(shape, np.float32, seed=1)
        ours = bench_deep._rnngrad(problem, "numpy")()
        theirs = bench._collect(bench_deep._jax(problem))
        assert theirs["grads"]["W_x"].dtype == np.float32
        assert theirs["loss"] == pytest.approx(ours["loss"], rel=1e-5)
        for key, value in ours["grads"].items():
            assert bench._relative_error(theirs["grads"][key], value) < 1e-4, key


def test_deep_memory_counts_every_returned_array():
    """'returned' is every buffer the result holds (once each, inputs excluded): here counted by hand."""
    T, B, D, H, O, K, bi = TINY_DEEP
    problem = bench_deep.make_deep_problem(TINY_DEEP, np.float64, seed=0)
    mem = bench.peak_memory(problem)
    C, U, f = 2 * H, 2 * K, 8
    params = sum(v.size for v in problem["params"].values())
    assert mem["inputs_params_bytes"] == f * (T * B * D + U * B * H + params) + problem["y"].nbytes
    returned = (params                           # grads
                + U * T * B * H                  # dh (U, T, B, H)
                + 3 * T * B * O                  # dy_hat, a, y_hat
                + T * B * D + 2 * U * B * H      # dx, dh0, h_last
                + U * (T + 1) * B * H            # each unit's states h_0..h_T (its h and h_prev are views)
                + K * T * B * C)                 # each level's [forward; reverse] output: the next x, the top's h
    # A reverse unit's cache.x is its input in flipped time: a copy (counted) unless it is a view.
    model = bench_deep._model(TINY_DEEP, np.float64)
    model.params = problem["params"]
    res = model.gradients(problem["x"], problem["y"], h0=problem["h0"])
    level_inputs = [problem["x"]] + [res.forward.layers[2 * k].x for k in range(1, K)]
    for k in range(K):
        rev = res.forward.layers[2 * k + 1].x
        if not np.shares_memory(rev, level_inputs[k]):
            returned += rev.size
    assert mem["returned_bytes"] == f * returned
    assert mem["peak_bytes"] == mem["inputs_params_bytes"] + mem["call_alloc_peak_bytes"]
    assert mem["ratio"] == pytest.approx(mem["peak_bytes"] / (mem["inputs_params_bytes"] + f * returned))
    # The single-layer accounting is unchanged by the generalisation.
    single = bench.peak_memory(bench.make_problem(TINY, np.float64))
    T, B, D, H, O = TINY
    p = H * D + H * H + H + O * H + O
    assert single["returned_bytes"] == 8 * (p + T * B * H + 3 * T * B * O + T * B * D + 2 * B * H + (T + 1) * B * H)


def test_run_benchmark_deep_tiny_and_markdown():
    result = bench.run_benchmark([TINY, TINY_DEEP], repeats=2, use_torch=_has_torch(), threads=1)
    json.dumps(result)
    assert [e["shape"] for e in result["shapes"]] == [list(TINY)]
    (entry,) = result["deep_shapes"]
    assert entry["shape"] == list(TINY_DEEP) and entry["agreement"]["passed"]
    names = set(entry["contenders"])
    assert "rnngrad" in names and ("PyTorch" in names) == _has_torch() and ("JAX" in names) == _has_jax()
    assert result["machine"]["jax"] == bench_deep.jax_version()
    assert entry["flops"] == bench_deep.deep_flops(TINY_DEEP)
    t = entry["targets"]
    assert t["memory_ratio"]["target"] == bench.MEMORY_TARGET
    if _has_torch():
        assert t["torch_ratio"]["target"] == bench.DEEP_TARGET
        assert t["torch_ratio"]["met"] is (t["torch_ratio"]["measured"] >= bench.DEEP_TARGET)
    text = bench.format_markdown(result)
    assert "### (4, 2, 3, 5, 3), 2 layers, bidirectional" in text
    assert "### Targets (stacked and bidirectional shapes)" in text
    assert "| (4, 2, 3, 5, 3), 2 layers, bidirectional |" in text
    assert ("met" in text) and ("| JAX |" in text) == _has_jax()
    no_jax = bench.run_benchmark([TINY_DEEP], repeats=1, use_torch=False, use_jax=False, threads=1, check=False)
    assert "JAX" not in no_jax["deep_shapes"][0]["contenders"] and no_jax["shapes"] == []


def test_deep_targets_judged_round_by_round():
    entry = {"contenders": {"rnngrad": {"round_medians_s": [1.0, 1.0, 3.0], "ratio_to_rnngrad": 1.0},
                            bench.WORKSPACE: {"round_medians_s": [0.5, 0.5, 0.5]},
                            "PyTorch": {"round_medians_s": [2.0, 6.0, 6.0]},
                            "JAX": {"ratio_to_rnngrad": 1.2}},
             "memory": {"ratio": 1.6}}
    t = bench_deep._judge_deep(entry)
    assert t["torch_ratio"]["measured"] == pytest.approx(2.0) and t["torch_ratio"]["met"]
    assert t["torch_ratio_workspace"]["measured"] == pytest.approx(12.0)
    assert not t["memory_ratio"]["met"] and t["jax_ratio"]["measured"] == 1.2


@pytest.mark.parametrize("argv, deep, flat", [
    (["--tiny"], bench.TINY_DEEP_SHAPES, bench.TINY_SHAPES),
    (["--tiny", "--deep"], bench.TINY_DEEP_SHAPES, ()),
    (["--deep"], bench.DEEP_SHAPES, ()),
    ([], bench.DEEP_SHAPES, bench.SHAPES),
    (["--shape", "3,2,4,5,3,2,1", "--shape", "3,2,4,5,3"], ((3, 2, 4, 5, 3, 2, True),), ((3, 2, 4, 5, 3),)),
])
def test_bench_chooses_shapes(monkeypatch, argv, deep, flat):
    seen = {}

    def fake(shapes, **kwargs):
        seen["shapes"], seen["kwargs"] = list(shapes), kwargs
        return {"machine": {}, "shapes": []}

    monkeypatch.setattr(bench, "run_benchmark", fake)
    monkeypatch.setattr(bench, "format_markdown", lambda result: "")
    assert bench.main([*argv, "--no-jax"]) == 0
    assert [s for s in seen["shapes"] if bench_deep.is_deep(s)] == list(deep)
    assert [s for s in seen["shapes"] if not bench_deep.is_deep(s)] == list(flat)
    assert seen["kwargs"]["use_jax"] is False


@pytest.mark.parametrize("text", ["1,2,3,4,5,0,1", "1,2,3,4,5,2,2", "1,2,3,4,5,2", "1,2,3,4,5,2,1,1"])
def test_bad_deep_shape_is_refused(text):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--shape", text])


@pytest.mark.parametrize("args,message", [
    (["bench", "--tiny", "--shape", "2,1,1,1,1"], "give either --tiny or --shape, not both"),
    (["bench", "--tiny", "--json", "{tmp}/missing/b.json"], "the folder '{tmp}/missing' does not exist"),
])
def test_bench_refuses_options_it_would_ignore_or_a_missing_json_folder(tmp_path, capsys, args, message):
    from rnngrad.cli import main
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(args) == 2  # at once: before any timing
    err = capsys.readouterr().err
    assert message.replace("{tmp}", str(tmp_path)) in err and err.count("\n") == 1

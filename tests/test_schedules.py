"""Learning-rate schedules: closed forms against torch.optim.lr_scheduler's step-by-step values,
worked values, the --lr-schedule spelling and its errors."""

import doctest
import math
import warnings

import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler as tls

from rnngrad import schedules
from rnngrad.schedules import (
    Constant,
    CosineAnnealingLR,
    LinearWarmup,
    SequentialLR,
    StepLR,
    parse_schedule,
)

BASE = 0.01
N_STEPS = 1000


def torch_lrs(make_scheduler, n, base_lr=BASE):
    """The lr of each of n torch optimizer steps, the scheduler stepped after each (torch's
    documented order); every warning torch raises fails the test (a misuse would shift the lrs)."""
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([p], lr=base_lr)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched = make_scheduler(opt)
        out = []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return np.array(out)


def ours(schedule, n):
    return np.array([schedule.lr_at(s) for s in range(n)])


# (id, torch scheduler factory, our schedule): the torch side is written from torch's own API.
TORCH_CASES = [
    ("linear-default-start", lambda o: tls.LinearLR(o, start_factor=1 / 3, total_iters=100),
     LinearWarmup(BASE, 100)),
    ("linear-start-0.01", lambda o: tls.LinearLR(o, start_factor=0.01, total_iters=37),
     LinearWarmup(BASE, 37, 0.01)),
    ("linear-start-1", lambda o: tls.LinearLR(o, start_factor=1.0, total_iters=5), LinearWarmup(BASE, 5, 1.0)),
    ("step-30-0.5", lambda o: tls.StepLR(o, step_size=30, gamma=0.5), StepLR(BASE, 30, 0.5)),
    ("step-1-0.99", lambda o: tls.StepLR(o, step_size=1, gamma=0.99), StepLR(BASE, 1, 0.99)),
    ("cosine-1000", lambda o: tls.CosineAnnealingLR(o, T_max=1000), CosineAnnealingLR(BASE, 1000)),
    # Past T_max torch's curve rises again (three half-periods here, through its special branch at T_max + 1).
    ("cosine-300-eta", lambda o: tls.CosineAnnealingLR(o, T_max=300, eta_min=1e-4),
     CosineAnnealingLR(BASE, 300, 1e-4)),
    ("warmup-cosine", lambda o: tls.SequentialLR(o, [tls.LinearLR(o, start_factor=1 / 3, total_iters=100),
                                                     tls.CosineAnnealingLR(o, T_max=900)], milestones=[100]),
     SequentialLR((LinearWarmup(BASE, 100), CosineAnnealingLR(BASE, 900)), (100,))),
    ("warmup-cosine-eta", lambda o: tls.SequentialLR(o, [tls.LinearLR(o, start_factor=0.2, total_iters=250),
                                                         tls.CosineAnnealingLR(o, T_max=750, eta_min=1e-3)],
                                                     milestones=[250]),
     SequentialLR((LinearWarmup(BASE, 250, 0.2), CosineAnnealingLR(BASE, 750, 1e-3)), (250,))),
    ("warmup-step", lambda o: tls.SequentialLR(o, [tls.LinearLR(o, start_factor=0.1, total_iters=200),
                                                   tls.StepLR(o, step_size=500, gamma=0.1)], milestones=[200]),
     SequentialLR((LinearWarmup(BASE, 200, 0.1), StepLR(BASE, 500, 0.1)), (200,))),
    ("warmup-step-often", lambda o: tls.SequentialLR(o, [tls.LinearLR(o, start_factor=0.5, total_iters=7),
                                                         tls.StepLR(o, step_size=3, gamma=0.9)], milestones=[7]),
     SequentialLR((LinearWarmup(BASE, 7, 0.5), StepLR(BASE, 3, 0.9)), (7,))),
    ("three-segments", lambda o: tls.SequentialLR(o, [tls.LinearLR(o, start_factor=0.25, total_iters=50),
                                                      tls.StepLR(o, step_size=100, gamma=0.5),
                                                      tls.CosineAnnealingLR(o, T_max=400)], milestones=[50, 600]),
     SequentialLR((LinearWarmup(BASE, 50, 0.25), StepLR(BASE, 100, 0.5), CosineAnnealingLR(BASE, 400)), (50, 600))),
]


@pytest.mark.parametrize("make_torch, schedule", [c[1:] for c in TORCH_CASES], ids=[c[0] for c in TORCH_CASES])
def test_closed_form_equals_torch_stepwise_values(make_torch, schedule):
    """torch computes most of these recursively (lr_s from lr_(s-1)); the closed form must agree
    at every one of 1000 steps, the steps where SequentialLR switches included."""
    expected = torch_lrs(make_torch, N_STEPS)
    got = ours(schedule, N_STEPS)
    rel = np.abs(got - expected) / np.abs(expected)
    assert rel.max() <= 1e-12, f"max relative error {rel.max():.2e} at step {rel.argmax()}"


def test_sequential_switches_at_the_milestone_like_torch():
    """At the milestone m the second schedule restarts at its own step 0 (lr_m = base lr for a
    cosine or step decay), the step before is the warmup's last."""
    expected = torch_lrs(lambda o: tls.SequentialLR(o, [tls.LinearLR(o, start_factor=0.1, total_iters=10),
                                                        tls.CosineAnnealingLR(o, T_max=20)], milestones=[10]), 31)
    sched = SequentialLR((LinearWarmup(BASE, 10, 0.1), CosineAnnealingLR(BASE, 20)), (10,))
    # Worked by hand: warmup step 9 is 0.1 + 0.9 * 9/10 = 0.91 of the base; step 10 the cosine's start.
    assert sched.lr_at(9) == pytest.approx(0.91 * BASE, rel=1e-15)
    assert sched.lr_at(10) == BASE == expected[10]
    assert sched.lr_at(30) == 0.0
    np.testing.assert_allclose(ours(sched, 31), expected, rtol=1e-13, atol=0)


def test_values_worked_by_hand():
    # Linear warmup from a = 1/4 over N = 8 steps: a + (1 - a) s / N.
    w = LinearWarmup(2.0, 8, 0.25)
    assert [w.lr_at(s) for s in (0, 4, 8, 100)] == [0.5, 2.0 * (0.25 + 0.75 * 0.5), 2.0, 2.0]
    # Step decay: base * gamma^floor(s / S).
    st = StepLR(1.0, 10, 0.5)
    assert [st.lr_at(s) for s in (0, 9, 10, 19, 20, 35)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.125]
    # Cosine: base at 0, the midpoint of base and eta_min at T/2, eta_min at T, base again at 2T.
    c = CosineAnnealingLR(1.0, 100, 0.2)
    assert c.lr_at(0) == 1.0
    assert c.lr_at(50) == pytest.approx(0.6, rel=1e-15)
    assert c.lr_at(100) == pytest.approx(0.2, rel=1e-15)
    assert c.lr_at(200) == pytest.approx(1.0, rel=1e-15)
    assert Constant(0.3).lr_at(12345) == 0.3


def test_lr_at_takes_numpy_integers_and_refuses_bad_steps():
    c = CosineAnnealingLR(BASE, 10)
    assert c.lr_at(np.int64(5)) == c.lr_at(5)
    with pytest.raises(ValueError, match="step must be a non-negative integer"):
        c.lr_at(-1)
    with pytest.raises(TypeError, match="step must be a non-negative integer"):
        c.lr_at(2.0)
    with pytest.raises(TypeError, match="step"):
        c.lr_at(True)


@pytest.mark.parametrize("make, match", [
    (lambda: LinearWarmup(BASE, 10, 0.0), r"start_factor must be a finite number in \(0, 1\]"),
    (lambda: LinearWarmup(BASE, 10, 1.5), "start_factor"),
    (lambda: LinearWarmup(BASE, 0), "total_iters must be a positive integer"),
    (lambda: StepLR(BASE, 10, 0.0), r"gamma must be a finite number in \(0, inf\)"),
    (lambda: StepLR(BASE, 2.5), "step_size"),
    (lambda: CosineAnnealingLR(BASE, 0), "T_max"),
    (lambda: CosineAnnealingLR(BASE, 10, -1.0), "eta_min"),
    (lambda: CosineAnnealingLR(float("nan"), 10), "base_lr"),
    (lambda: Constant(-0.1), "base_lr"),
    (lambda: SequentialLR((Constant(BASE), Constant(BASE)), ()), "one milestone fewer"),
    (lambda: SequentialLR((Constant(BASE), Constant(BASE), Constant(BASE)), (5, 5)), "strictly increasing"),
    (lambda: SequentialLR((Constant(BASE), Constant(0.1)), (5,)), "same base_lr"),
    (lambda: SequentialLR((Constant(BASE), "cosine"), (5,)), "Schedule objects"),
])
def test_constructors_refuse_bad_numbers(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


# --- the --lr-schedule spelling -------------------------------------------------------------

PARSE_CASES = [
    ("constant", Constant(BASE)),
    ("  Constant ", Constant(BASE)),
    ("cosine", CosineAnnealingLR(BASE, 1000)),
    ("cosine=400", CosineAnnealingLR(BASE, 400)),
    ("cosine,eta_min=1e-5", CosineAnnealingLR(BASE, 1000, 1e-5)),
    ("step=1000,gamma=0.5", StepLR(BASE, 1000, 0.5)),
    ("step=300", StepLR(BASE, 300, 0.1)),  # torch's default gamma
    ("warmup=50", LinearWarmup(BASE, 50, 1 / 3)),  # torch's default start_factor
    ("warmup=100,cosine", SequentialLR((LinearWarmup(BASE, 100), CosineAnnealingLR(BASE, 900)), (100,))),
    ("cosine, warmup=100, start=0.1, eta_min=0.001",
     SequentialLR((LinearWarmup(BASE, 100, 0.1), CosineAnnealingLR(BASE, 900, 0.001)), (100,))),
    ("warmup=200,step=500,gamma=0.1", SequentialLR((LinearWarmup(BASE, 200), StepLR(BASE, 500, 0.1)), (200,))),
]


@pytest.mark.parametrize("spec, expected", PARSE_CASES, ids=[c[0].strip() for c in PARSE_CASES])
def test_parse_schedule_builds_the_schedule_spelled(spec, expected):
    got = parse_schedule(spec, total_steps=1000, base_lr=BASE)
    assert got == expected
    # The canonical spelling pins every number: it parses back to the same schedule whatever the run's length.
    assert parse_schedule(got.spec, total_steps=7, base_lr=BASE) == got
    assert got.spec == got.spec.strip().lower() and " " not in got.spec


def test_spec_writes_floats_exactly():
    s = parse_schedule("warmup=3,start=0.1234567890123456789,cosine,eta_min=3.3e-7", 10, 0.1)
    back = parse_schedule(s.spec, 999, 0.1)
    assert back.schedules[0].start_factor == s.schedules[0].start_factor
    assert back.schedules[1].eta_min == 3.3e-7 and back.schedules[1].T_max == 7


def test_hand_built_sequence_without_a_spelling_says_so():
    three = SequentialLR((LinearWarmup(BASE, 5), StepLR(BASE, 3), CosineAnnealingLR(BASE, 4)), (5, 8))
    with pytest.raises(ValueError, match="only a warmup followed by a cosine or step decay"):
        three.spec


@pytest.mark.parametrize("spec, fragment", [
    ("", "the schedule is empty"),
    ("cosin", "unknown part 'cosin'"),
    ("linear", "unknown part 'linear'"),
    ("warmup=x,cosine", "warmup must be a whole number of steps >= 1; got 'x'"),
    ("warmup=0,cosine", "warmup must be a whole number of steps >= 1; got '0'"),
    ("warmup=1.5", "warmup must be a whole number"),
    ("warmup", "warmup needs a number of steps"),
    ("step", "step needs a number of steps"),
    ("cosine=", "cosine= has no value"),
    ("warmup=1000,cosine", "warmup=1000 leaves no steps for the cosine in a run of 1000 steps"),
    ("start=0.5,cosine", "start= tunes warmup, which is not given"),
    ("cosine,gamma=0.5", "gamma= tunes step, which is not given"),
    ("step=10,eta_min=0.1", "eta_min= tunes cosine, which is not given"),
    ("cosine,step=10", "give one decay, cosine or step, not both"),
    ("constant,warmup=10", "'constant' stands alone"),
    ("warmup=5,warmup=6", "'warmup' is given twice"),
    ("warmup=10,start=0", "start must be a finite number in (0, 1]; got 0.0"),
    ("warmup=10,start=2", "start must be a finite number in (0, 1]; got 2.0"),
    ("step=10,gamma=-1", "gamma must be a finite number in (0, inf); got -1.0"),
    ("step=10,gamma=fast", "gamma must be a number; got 'fast'"),
    ("cosine,eta_min=nan", "eta_min must be a finite number"),
    ("cosine,eta_min=inf", "eta_min must be a finite number"),
    ("step=10,gamma", "gamma needs a value"),
])
def test_bad_specs_give_one_line_naming_the_option_with_an_example(spec, fragment):
    with pytest.raises(ValueError) as info:
        parse_schedule(spec, total_steps=1000, base_lr=BASE)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"--lr-schedule {spec!r}: ")
    assert fragment in message, message
    assert "e.g. --lr-schedule warmup=100,cosine" in message


def test_parse_schedule_refuses_bad_arguments():
    with pytest.raises(TypeError, match="--lr-schedule must be a string"):
        parse_schedule(None, 10, BASE)
    with pytest.raises(ValueError, match="total_steps must be a positive integer"):
        parse_schedule("cosine", 0, BASE)
    with pytest.raises(ValueError, match="base_lr"):
        parse_schedule("cosine", 10, -1.0)
    with pytest.raises(ValueError, match="base_lr"):
        parse_schedule("cosine", 10, math.inf)


def test_every_spelled_schedule_matches_torch():
    """The parser's results, not just hand-built objects, against torch (total 300 steps)."""
    n = 300
    pairs = [
        ("cosine,eta_min=1e-4", lambda o: tls.CosineAnnealingLR(o, T_max=n, eta_min=1e-4)),
        ("step=40,gamma=0.7", lambda o: tls.StepLR(o, step_size=40, gamma=0.7)),
        ("warmup=30", lambda o: tls.LinearLR(o, start_factor=1 / 3, total_iters=30)),
        ("warmup=30,cosine", lambda o: tls.SequentialLR(o, [tls.LinearLR(o, start_factor=1 / 3, total_iters=30),
                                                            tls.CosineAnnealingLR(o, T_max=n - 30)], [30])),
        ("warmup=20,start=0.05,step=50,gamma=0.5",
         lambda o: tls.SequentialLR(o, [tls.LinearLR(o, start_factor=0.05, total_iters=20),
                                        tls.StepLR(o, step_size=50, gamma=0.5)], [20])),
    ]
    for spec, make_torch in pairs:
        got = ours(parse_schedule(spec, n, BASE), n)
        np.testing.assert_allclose(got, torch_lrs(make_torch, n), rtol=1e-12, atol=0, err_msg=spec)


def test_module_docstring_examples_run():
    result = doctest.testmod(schedules, raise_on_error=False)
    assert result.attempted >= 2 and result.failed == 0

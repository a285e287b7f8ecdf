"""Sampling from a character model: the library (rnngrad.sample) and the command (rnngrad.sample_cli)."""

import argparse
import inspect
import io
import itertools
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import rnngrad
from rnngrad import sample as sample_mod
from rnngrad import sample_cli
from rnngrad.checkpoint import save_checkpoint
from rnngrad.data import Vocabulary
from rnngrad.sample import DEFAULT_TEMPERATURE, default_prime, iter_sample, sample


@pytest.fixture
def vocab():
    return Vocabulary("abcd")


def fixed_output_model(vocab, logits):
    """A model whose output ignores its state: y_hat = softmax(b_y)."""
    m = rnngrad.RNN(len(vocab), 3, len(vocab), seed=0)
    m.params["W_y"][...] = 0
    m.params["b_y"][...] = logits
    return m


def markov_model(vocab, L, scale=6.0):
    """An RNN whose next-character logits depend on the current character only: a_t = L[:, x_t].

    With H = V, W_x = scale·I, W_h = 0 and b_h = 0, h_t = tanh(scale)·e_{x_t} (the one-hot of the
    input token, scaled), so W_y = L / tanh(scale) and b_y = 0 give a_t = L[:, x_t] exactly.
    """
    V = len(vocab)
    m = rnngrad.RNN(V, V, V, seed=0)
    m.params["W_x"][...] = scale * np.eye(V)
    m.params["W_h"][...] = 0
    m.params["b_h"][...] = 0
    m.params["W_y"][...] = np.asarray(L) / np.tanh(scale)
    m.params["b_y"][...] = 0
    return m


def visible_count(text):
    return sum(not c.isspace() for c in text)


# --- the draws --------------------------------------------------------------------------------

def test_draws_follow_softmax_of_logits_over_temperature(vocab):
    logits = np.array([2.0, 1.0, 0.0, -1.0])
    for temperature in (0.5, 1.0, 2.0):
        text = sample(fixed_output_model(vocab, logits), vocab, 20000, temperature=temperature, seed=1,
                      prime="a")
        freq = np.array([text.count(c) for c in "abcd"]) / len(text)
        p = np.exp(logits / temperature)
        p /= p.sum()
        # 20000 draws: the standard error of each frequency is below 0.0036.
        np.testing.assert_allclose(freq, p, atol=0.015)


def reference_sample(model, vocab, n, prime, temperature, seed):
    """An independent sampler: the whole sequence so far through model.forward for every draw (no
    state carried between calls), p = exp((a - max a) / tau) normalised, one rng.choice per draw."""
    rng, seq = np.random.default_rng(seed), prime
    for _ in range(n):
        a = model.forward(vocab.encode(seq)[:, None]).a[-1, 0].astype(np.float64)
        p = np.exp((a - a.max()) / temperature)
        seq += vocab.chars[rng.choice(len(vocab), p=p / p.sum())]
    return seq[len(prime):]


@pytest.mark.parametrize("f,layers,dtype,temperature", [
    ("tanh", 1, np.float64, 1.0), ("relu", 2, np.float64, 0.7), ("tanh", 3, np.float64, 1.3),
    ("sigmoid", 1, np.float32, 0.8)])
def test_iter_sample_carries_the_state_as_a_whole_sequence_forward_does(f, layers, dtype, temperature):
    v = Vocabulary("ab \ncd")
    m = rnngrad.RNN(len(v), 6, len(v), hidden_activation=f, num_layers=layers, dtype=dtype, seed=4)
    m.params["W_y"] *= 3  # peaked enough that a wrong state would change the draws
    got = "".join(iter_sample(m, v, 40, prime="ab c", temperature=temperature, seed=11))
    assert got == reference_sample(m, v, 40, "ab c", temperature, 11)


def test_seeded_and_deterministic(vocab):
    m = rnngrad.RNN(4, 8, 4, seed=2)
    a = sample(m, vocab, 50, prime="ab", seed=7)
    assert len(a) == 50 and set(a) <= set("abcd")
    assert a == sample(m, vocab, 50, prime="ab", seed=7)
    assert a != sample(m, vocab, 50, prime="ab", seed=8)


def test_a_stacked_model_samples_from_its_full_state(vocab):
    """Greedy sampling (a tiny temperature) of a two-layer model equals the argmax chain computed
    from whole-sequence forward passes, so the state of every layer is carried between draws."""
    m = rnngrad.RNN(len(vocab), 5, len(vocab), num_layers=2, seed=3)
    m.params["W_y"] *= 20  # distinct logits: the argmax is well separated
    text = sample(m, vocab, 6, prime="ab", temperature=1e-6, seed=0)
    seq = "ab"
    for _ in range(6):
        logits = m.forward(vocab.encode(seq)[:, None]).a[-1, 0]
        seq += vocab.chars[int(np.argmax(logits))]
    assert text == seq[2:]


# --- the generator --------------------------------------------------------------------------

@pytest.mark.parametrize("prime,layers,seed", [(None, 1, 0), ("ab", 1, 5), ("dcba", 2, [3, 4])])
def test_joined_iter_sample_is_sample(vocab, prime, layers, seed):
    m = rnngrad.RNN(4, 7, 4, num_layers=layers, seed=1)
    chars = list(iter_sample(m, vocab, 60, prime=prime, seed=seed))
    assert len(chars) == 60 and all(len(c) == 1 for c in chars)
    assert "".join(chars) == sample(m, vocab, 60, prime=prime, seed=seed)


def test_iter_sample_yields_as_it_goes(vocab, monkeypatch):
    """Five characters of a billion-character generator cost five model steps."""
    calls = []
    step = sample_mod._step
    monkeypatch.setattr(sample_mod, "_step", lambda *a: calls.append(1) or step(*a))
    m = rnngrad.RNN(4, 5, 4, seed=0)
    first = "".join(itertools.islice(iter_sample(m, vocab, 10**9, prime="a", seed=3), 5))
    assert len(calls) == 5 and first == sample(m, vocab, 5, prime="a", seed=3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(prime="xyz"), "prime has 3 characters not in the vocabulary: 'x', 'y', 'z'; its 4 characters include 'abcd'"),
    (dict(prime=""), "prime must be a non-empty string"),
    (dict(temperature=0.0), "temperature must be a finite positive number"),
    (dict(temperature=float("nan")), "temperature must be a finite positive number"),
    (dict(length=-1), "length must be a non-negative integer"),
])
def test_bad_arguments(vocab, kwargs, match):
    m = rnngrad.RNN(4, 8, 4, seed=2)
    args = dict(length=5, prime="a")
    args.update(kwargs)
    length = args.pop("length")
    with pytest.raises(ValueError, match=match):
        sample(m, vocab, length, **args)
    with pytest.raises(ValueError, match=match):  # at the call, before any character is asked for
        iter_sample(m, vocab, length, **args)


def test_model_and_vocabulary_must_match(vocab):
    with pytest.raises(ValueError, match="vocabulary has 4 characters"):
        sample(rnngrad.RNN(5, 8, 5), vocab, 5)


def test_a_model_without_softmax_output_is_refused(vocab):
    m = rnngrad.RNN(4, 3, 4, output_activation="sigmoid", loss="mse", seed=0)
    with pytest.raises(ValueError, match="output activation is 'sigmoid'.*output_activation='softmax'"):
        iter_sample(m, vocab, 5, prime="a")


@pytest.mark.parametrize("seed", [-1, [3, -1], [], 1.5])
def test_a_bad_seed_is_refused_naming_it(vocab, seed):
    m = rnngrad.RNN(4, 8, 4, seed=2)
    with pytest.raises((ValueError, TypeError), match="seed must be (None, )?a non-negative integer"):
        sample(m, vocab, 5, seed=seed)


def test_seed_sequences_and_generators_are_accepted(vocab):
    m = rnngrad.RNN(4, 8, 4, seed=2)
    a = sample(m, vocab, 20, seed=[3, 4])
    assert a == sample(m, vocab, 20, seed=np.random.default_rng([3, 4]))


def test_a_bidirectional_model_cannot_sample(vocab):
    m = rnngrad.RNN(len(vocab), 3, len(vocab), bidirectional=True, seed=0)
    with pytest.raises(ValueError, match="a bidirectional model cannot generate text"):
        sample(m, vocab, 5, prime="a")


# --- one default temperature ------------------------------------------------------------------

def test_one_default_temperature_everywhere(vocab):
    assert DEFAULT_TEMPERATURE == 0.8
    for fn in (sample, iter_sample):
        assert inspect.signature(fn).parameters["temperature"].default == DEFAULT_TEMPERATURE, fn
    assert parse(["sample", "--checkpoint", "x"]).temperature == DEFAULT_TEMPERATURE
    # ... and it is the one applied: the default draws are those of 0.8, not of 1.0.
    m = rnngrad.RNN(4, 8, 4, seed=2)
    m.params["W_y"] *= 4
    a = sample(m, vocab, 200, prime="a", seed=1)
    assert a == sample(m, vocab, 200, prime="a", seed=1, temperature=DEFAULT_TEMPERATURE)
    assert a != sample(m, vocab, 200, prime="a", seed=1, temperature=1.0)


# --- the default prime ------------------------------------------------------------------------

# "\n", " " then "a".."d": after whitespace, whitespace has logit 4 and every visible character 0
# (except "b" after a newline: 1); after a visible character, visible ones have 3, whitespace 0.
COLLAPSE_VOCAB = Vocabulary("\n abcd")
COLLAPSE_L = np.array([[4, 4, 0, 0, 0, 0],
                       [4, 4, 0, 0, 0, 0],
                       [0, 0, 3, 3, 3, 3],
                       [1, 0, 3, 3, 3, 3],
                       [0, 0, 3, 3, 3, 3],
                       [0, 0, 3, 3, 3, 3]], dtype=float)


def test_default_prime_avoids_the_whitespace_collapse():
    """At temperature 0.5 a visible character after whitespace has probability about 7e-4 a step
    in this model, so a newline prime gives 200 whitespace characters in most seeds (the
    control, which shows the model reproduces the collapse); the default prime is the visible
    character most likely after a newline, "b" (logit 1 against 0), and every seed writes text."""
    m = markov_model(COLLAPSE_VOCAB, COLLAPSE_L)
    assert default_prime(m, COLLAPSE_VOCAB) == "b"
    newline = [visible_count(sample(m, COLLAPSE_VOCAB, 200, prime="\n", temperature=0.5, seed=s)) for s in range(10)]
    assert sum(n == 0 for n in newline) >= 5, newline
    default = [visible_count(sample(m, COLLAPSE_VOCAB, 200, temperature=0.5, seed=s)) for s in range(10)]
    # After a visible character whitespace has probability 2 / (2 + 4 e^6) = 1.2e-3 a step: most
    # seeds stay in text for the first 100 characters (each with probability 0.88).
    assert min(default) > 0 and np.median(default) > 100, default


def test_default_prime_without_a_newline_uses_the_mean_over_inputs(rng):
    """No newline in the vocabulary: the visible argmax of mean_i softmax(L[:, i]), computed here
    from the logits alone; the space gets +5 everywhere, so the visibility filter is needed."""
    v = Vocabulary(" abcdef")
    L = rng.standard_normal((7, 7)) * 2
    L[0] += 5
    p = np.exp(L - L.max(axis=0))
    p = (p / p.sum(axis=0)).mean(axis=1)
    assert np.argmax(p) == 0
    assert default_prime(markov_model(v, L), v) == v.chars[1 + int(np.argmax(p[1:]))]


@pytest.mark.parametrize("chars,expected", [(" \n", "\n"), (" \t", "\t")])
def test_a_vocabulary_of_whitespace_only_gets_a_newline_or_its_first_character(chars, expected):
    v = Vocabulary(chars)
    assert default_prime(rnngrad.RNN(len(v), 3, len(v), seed=0), v) == expected


def test_the_default_prime_draws_no_random_numbers(vocab):
    m = rnngrad.RNN(4, 8, 4, seed=5)
    prime = default_prime(m, vocab)
    assert len(prime) == 1 and prime in vocab.chars
    assert sample(m, vocab, 80, seed=9) == sample(m, vocab, 80, prime=prime, seed=9)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small character model trained 100 steps on the default corpus (seconds), and its run folder."""
    from rnngrad.train import TrainConfig, Trainer
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(hidden_size=32, chunk_len=25, batch_size=16, steps=100, lr=0.02, max_chars=100_000,
                      log_every=100, sample_every=10**6, checkpoint_every=10**6, seed=0)
    trainer = Trainer(cfg, out_dir=out)
    trainer.run()
    return trainer, out


def test_the_trainer_samples_at_the_default_temperature(trained):
    trainer, _ = trained
    m, v = trainer.model, trainer.data.vocab
    text = trainer.sample(150, seed=3, prime="def ")
    assert text == "def " + sample(m, v, 150, prime="def ", temperature=DEFAULT_TEMPERATURE, seed=3)
    assert text != "def " + sample(m, v, 150, prime="def ", temperature=1.0, seed=3)


def test_a_trained_model_writes_text_from_the_default_prime(trained):
    """The failure seen with a newline prime, on a real model: at temperature 0.5 it spends all
    200 characters on whitespace in several of 10 seeds; the default prime gives text in all."""
    trainer, _ = trained
    m, v = trainer.model, trainer.data.vocab
    newline = [visible_count(sample(m, v, 200, prime="\n", temperature=0.5, seed=s)) for s in range(10)]
    assert sum(n == 0 for n in newline) >= 2, newline  # the control: the collapse happens here
    default = [visible_count(sample(m, v, 200, temperature=0.5, seed=s)) for s in range(10)]
    assert min(default) > 0, default


# --- the command ------------------------------------------------------------------------------

def parse(argv):
    parser = argparse.ArgumentParser(prog="rnngrad")
    sample_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def _wired_cli_main():
    """rnngrad.cli.main once its ``sample`` command is sample_cli's; None before that."""
    from rnngrad import cli
    args = cli.build_parser().parse_args(["sample", "--checkpoint", "x"])
    return cli.main if args.run is sample_cli._cmd_sample else None


def run_sample(argv, stdout, monkeypatch):
    """Exit status of ``rnngrad sample ARGV`` with ``stdout`` as sys.stdout: through rnngrad.cli.main
    when it uses this module, else through the same parse -> run -> one-line-error path."""
    monkeypatch.setattr(sys, "stdout", stdout)
    argv = ["sample", *map(str, argv)]
    main = _wired_cli_main()
    if main is not None:
        return main(argv)
    args = parse(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError) as err:
        print(f"rnngrad {args.command}: error: {err}", file=sys.stderr)
        return 2


class FakeStdout(io.StringIO):
    """Records each write and flush; ``tty`` answers isatty(); ``fail_after``: BrokenPipeError once
    that many characters were written (the reader went away)."""

    def __init__(self, tty=False, fail_after=None):
        super().__init__()
        self.tty, self.fail_after, self.writes, self.flushes = tty, fail_after, [], 0

    def isatty(self):
        return self.tty

    def write(self, s):
        if self.fail_after is not None and len(self.getvalue()) + len(s) > self.fail_after:
            raise BrokenPipeError(32, "Broken pipe")
        self.writes.append(s)
        return super().write(s)

    def flush(self):
        self.flushes += 1


TEXT_VOCAB = Vocabulary("abc de\nfgh")


def text_checkpoint(path, model=None, vocab=TEXT_VOCAB, vocab_json=True, **data):
    """A checkpoint with the sections rnngrad train writes (load_training_checkpoint's checks)."""
    model = model if model is not None else rnngrad.RNN(len(vocab), 8, len(vocab), seed=3)
    meta = {"config": {"task": None if vocab_json else "adding"}, "optimizer": {"name": "adam"},
            "progress": {"step": 0}, "data": {"kind": "text", **data},
            "vocab": vocab.to_json() if vocab_json else None}
    return save_checkpoint(path, model, meta)


@pytest.fixture
def ckpt(tmp_path):
    return text_checkpoint(tmp_path / "checkpoint.npz")


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")


def test_output_is_prime_then_the_library_sample_then_a_newline(ckpt, monkeypatch, capsys):
    out = FakeStdout()
    assert run_sample(["--checkpoint", ckpt, "-n", 80, "--prime", "abc", "--seed", 4], out, monkeypatch) == 0
    model = rnngrad.checkpoint.model_from_checkpoint(*rnngrad.checkpoint.load_checkpoint(ckpt))
    assert out.getvalue() == "abc" + sample(model, TEXT_VOCAB, 80, prime="abc", seed=4) + "\n"
    assert capsys.readouterr().err == ""


def test_output_is_streamed_as_generated(ckpt, monkeypatch):
    """When the model computes character i, the prime and the i - 1 characters before it are
    already written and flushed: one write per character, not one at the end."""
    out, seen = FakeStdout(), []
    step = sample_mod._step

    def recording_step(*a):
        seen.append((len(out.getvalue()), out.flushes))
        return step(*a)

    monkeypatch.setattr(sample_mod, "_step", recording_step)
    assert run_sample(["--checkpoint", ckpt, "-n", 200, "--prime", "ab", "--seed", 0], out, monkeypatch) == 0
    assert len(seen) == 200
    assert [n for n, _ in seen] == [2 + i for i in range(200)]
    assert all(f >= i + 1 for i, (_, f) in enumerate(seen))  # each flushed before the next step
    assert len(out.writes) >= 201 and out.getvalue().endswith("\n")


def test_ctrl_c_keeps_what_was_printed_and_exits_130(ckpt, monkeypatch, capsys):
    step, calls = sample_mod._step, []

    def interrupted_step(*a):
        calls.append(1)
        if len(calls) > 50:
            raise KeyboardInterrupt
        return step(*a)

    out = FakeStdout()
    monkeypatch.setattr(sample_mod, "_step", interrupted_step)
    code = run_sample(["--checkpoint", ckpt, "-n", 200, "--prime", "ab", "--seed", 2], out, monkeypatch)
    monkeypatch.setattr(sample_mod, "_step", step)
    model = rnngrad.checkpoint.model_from_checkpoint(*rnngrad.checkpoint.load_checkpoint(ckpt))
    assert code == 130
    assert out.getvalue() == "ab" + sample(model, TEXT_VOCAB, 50, prime="ab", seed=2) + "\n"
    assert capsys.readouterr().err == "rnngrad sample: interrupted after 50 of 200 characters\n"


def test_ctrl_c_on_a_terminal_resets_the_style(ckpt, monkeypatch, capsys):
    def interrupted_step(*a):
        raise KeyboardInterrupt

    out = FakeStdout(tty=True)
    monkeypatch.setattr(sample_mod, "_step", interrupted_step)
    assert run_sample(["--checkpoint", ckpt, "--prime", "ab"], out, monkeypatch) == 130
    assert out.getvalue() == "\x1b[2mab\x1b[0m\x1b[0m\n"
    assert "interrupted after 0 of 500 characters" in capsys.readouterr().err


@pytest.mark.parametrize("tty,env,option,dim", [
    (True, {}, None, True),
    (False, {}, None, False),
    (True, {"NO_COLOR": "1"}, None, False),
    (True, {"NO_COLOR": ""}, None, True),   # no-color.org: only a non-empty value counts
    (True, {"TERM": "dumb"}, None, False),
    (False, {}, "always", True),
    (False, {"NO_COLOR": "1"}, "always", True),  # an explicit option overrides NO_COLOR
    (True, {}, "never", False),
])
def test_the_prime_is_dim_on_a_terminal_and_plain_elsewhere(ckpt, monkeypatch, tty, env, option, dim):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = FakeStdout(tty=tty)
    argv = ["--checkpoint", ckpt, "-n", 30, "--prime", "ab c", "--seed", 1]
    assert run_sample(argv + (["--mark-prime", option] if option else []), out, monkeypatch) == 0
    text = out.getvalue()
    if dim:
        assert text.startswith("\x1b[2mab c\x1b[0m") and text.count("\x1b") == 2
        assert len(text) == len("\x1b[2mab c\x1b[0m") + 30 + 1
    else:
        assert "\x1b" not in text and text.startswith("ab c") and len(text) == 4 + 30 + 1


def test_a_reader_that_goes_away_ends_quietly(ckpt, monkeypatch, capsys):
    """The reader closes after 100 characters: exit 0, nothing on stderr, and generation stops
    there instead of running to -n."""
    calls, step = [], sample_mod._step
    monkeypatch.setattr(sample_mod, "_step", lambda *a: calls.append(1) or step(*a))
    out = FakeStdout(fail_after=100)
    assert run_sample(["--checkpoint", ckpt, "-n", 100000, "--prime", "ab", "--seed", 0], out, monkeypatch) == 0
    assert capsys.readouterr().err == ""
    assert len(out.getvalue()) == 100 and len(calls) <= 100


def sample_process(ckpt):
    """``rnngrad sample --checkpoint CKPT -n 1000000`` in a new process, its stdout unbuffered here."""
    code = textwrap.dedent(f"""
        import argparse, sys
        from rnngrad import sample_cli
        parser = argparse.ArgumentParser(prog="rnngrad")
        sample_cli.register(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(["sample", "--checkpoint", {str(ckpt)!r}, "-n", "1000000", "--seed", "0"])
        sys.exit(args.run(args))
    """)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)


def test_a_real_pipe_closed_by_head(ckpt):
    """``rnngrad sample ... | head -c 100``: the process exits 0 with nothing on stderr (no
    traceback, no 'Exception ignored' at the interpreter's exit)."""
    proc, head = sample_process(ckpt), b""
    while len(head) < 100:
        head += proc.stdout.read(100 - len(head))
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert len(head) == 100 and proc.returncode == 0 and err == b"", err


def test_a_real_sigint_keeps_the_text_and_counts_it_exactly(ckpt):
    """SIGINT while text streams out: exit 130, the text so far and a newline kept, and the count
    on stderr is the number of generated characters that reached the pipe (prime: 1 character)."""
    proc, out = sample_process(ckpt), b""
    while len(out) < 1500:
        out += proc.stdout.read(100)
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=120)
    out += rest
    n = len(out) - 2
    assert proc.returncode == 130 and out.endswith(b"\n")
    assert err == f"rnngrad sample: interrupted after {n} of 1000000 characters\n".encode(), err


def test_the_default_prime_is_printed_and_used(ckpt, monkeypatch):
    out = FakeStdout()
    assert run_sample(["--checkpoint", ckpt, "-n", 40, "--seed", 6], out, monkeypatch) == 0
    model = rnngrad.checkpoint.model_from_checkpoint(*rnngrad.checkpoint.load_checkpoint(ckpt))
    prime = default_prime(model, TEXT_VOCAB)
    assert not prime.isspace()
    assert out.getvalue() == prime + sample(model, TEXT_VOCAB, 40, prime=prime, seed=6) + "\n"


def test_a_prime_saved_with_the_run_is_the_default(tmp_path, monkeypatch):
    path = text_checkpoint(tmp_path / "c.npz", sample_prime="fed cab")
    out = FakeStdout()
    assert run_sample(["--checkpoint", path, "-n", 10, "--seed", 0], out, monkeypatch) == 0
    assert out.getvalue().startswith("fed cab") and len(out.getvalue()) == 7 + 10 + 1


def test_a_damaged_saved_prime_is_refused(tmp_path, monkeypatch, capsys):
    path = text_checkpoint(tmp_path / "c.npz", sample_prime="xyz")
    assert run_sample(["--checkpoint", path], FakeStdout(), monkeypatch) == 2
    assert "data.sample_prime is not text of its own vocabulary" in capsys.readouterr().err


def test_escapes_keep_non_ascii_characters(tmp_path, monkeypatch):
    v = Vocabulary("café\n\t\\î ")
    path = text_checkpoint(tmp_path / "c.npz", rnngrad.RNN(len(v), 4, len(v), seed=0), v)
    out = FakeStdout()
    assert run_sample(["--checkpoint", path, "--prime", "café\\n\\t\\\\î", "--escapes", "-n", 5, "--seed", 0],
                      out, monkeypatch) == 0
    assert out.getvalue().startswith("café\n\t\\î") and len(out.getvalue()) == len("café\n\t\\î") + 5 + 1


def test_the_trained_run_samples_through_the_command(trained, monkeypatch):
    trainer, run_dir = trained
    out = FakeStdout()
    assert run_sample(["--checkpoint", run_dir, "-n", 60, "--prime", "def ", "--seed", 1], out, monkeypatch) == 0
    assert out.getvalue() == "def " + trainer.sample(60, seed=1, prime="def ")[4:] + "\n"


@pytest.mark.parametrize("argv,message", [
    (["-n", 0], "--length/-n must be a positive number of characters; got 0 (e.g. -n 500)"),
    (["-n", -3], "--length/-n must be a positive number of characters; got -3"),
    (["-t", 0], "--temperature/-t must be a finite number above 0; got 0 "),
    (["-t", -1.5], "--temperature/-t must be a finite number above 0; got -1.5"),
    (["-t", "nan"], "--temperature/-t must be a finite number above 0; got nan"),
    (["--temperature", "inf"], "--temperature/-t must be a finite number above 0; got inf"),
    (["--seed", -1], "--seed must be a non-negative integer; got -1"),
    (["--prime", ""], "--prime is empty; give the text the sample continues, or leave --prime out"),
    (["--prime", "abxyé"], "--prime has 3 characters not in the model's vocabulary: 'x', 'y', 'é'; use only its "
                           "10 characters, which include 'abcdefgh\\n '"),
    (["--prime", "a\\nb"], "for a newline or a tab write \\n or \\t and add --escapes"),
    (["--prime", "\\q", "--escapes"], "not in the model's vocabulary: '\\\\', 'q'"),
])
def test_bad_options_are_refused_in_one_line_naming_them(ckpt, monkeypatch, capsys, argv, message):
    assert run_sample(["--checkpoint", ckpt, *argv], FakeStdout(), monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnngrad sample: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_task_checkpoint_is_refused(tmp_path, monkeypatch, capsys):
    path = text_checkpoint(tmp_path / "task.npz", rnngrad.RNN(2, 4, 1, output_activation="identity", loss="mse"),
                           vocab_json=False)
    assert run_sample(["--checkpoint", path], FakeStdout(), monkeypatch) == 2
    err = capsys.readouterr().err
    assert f"--checkpoint {str(path)!r} holds a model trained on a task (adding), not on text" in err
    assert "rnngrad train on text" in err and len(err.strip().splitlines()) == 1


def test_a_bidirectional_checkpoint_is_refused(tmp_path, monkeypatch, capsys):
    v = TEXT_VOCAB
    path = text_checkpoint(tmp_path / "bi.npz", rnngrad.RNN(len(v), 4, len(v), bidirectional=True, seed=0))
    assert run_sample(["--checkpoint", path, "--prime", "ab"], FakeStdout(), monkeypatch) == 2
    err = capsys.readouterr().err
    assert "holds a bidirectional model, which cannot generate text" in err and "unidirectional" in err
    assert len(err.strip().splitlines()) == 1


def test_help_shows_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(["sample", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for piece in ("--length", "(default: 500)", "--temperature", f"(default: {DEFAULT_TEMPERATURE})",
                  "--mark-prime {auto,always,never}", "(default: auto)", "NO_COLOR", "--escapes", "--seed"):
        assert piece in text, piece

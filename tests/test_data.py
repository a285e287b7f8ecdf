"""Text data: vocabulary, file loading, the default corpus, truncated-BPTT streams, splits."""

import numpy as np
import pytest

from rnngrad import RNN
from rnngrad.data import (
    DEFAULT_CORPUS_FILES,
    Vocabulary,
    batches,
    default_corpus,
    default_corpus_paths,
    load_text,
    make_streams,
    num_chunks,
    train_val_split,
)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


# --- vocabulary -------------------------------------------------------------------------

def test_vocabulary_round_trip():
    text = "hello, wörld ✓\n\ttabs and ∑ symbols"
    vocab = Vocabulary.from_text(text)
    assert list(vocab.chars) == sorted(set(text))
    assert len(vocab) == len(set(text))
    ids = vocab.encode(text)
    assert ids.dtype.kind == "i" and ids.shape == (len(text),)
    assert ids.min() >= 0 and ids.max() < len(vocab)
    assert vocab.decode(ids) == text
    assert vocab.decode(ids.reshape(1, -1)) == text
    back = Vocabulary.from_json(vocab.to_json())
    assert back == vocab
    np.testing.assert_array_equal(back.encode(text), ids)
    assert vocab.encode("").shape == (0,)


def test_vocabulary_indices_are_sorted_order():
    vocab = Vocabulary("cab")
    np.testing.assert_array_equal(vocab.encode("abcab"), [0, 1, 2, 0, 1])
    assert vocab.decode([2, 1, 0]) == "cba"


def test_vocabulary_errors():
    vocab = Vocabulary("abc")
    with pytest.raises(ValueError, match=r"character 'z' \(at index 2\) that is not in the vocabulary"):
        vocab.encode("abz")
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 3\)"):
        vocab.decode([0, 3])
    with pytest.raises(TypeError, match="ids must be integer"):
        vocab.decode([0.5])
    with pytest.raises(TypeError, match="text must be a str"):
        vocab.encode(b"abc")
    with pytest.raises(ValueError, match="chars is empty"):
        Vocabulary("")
    with pytest.raises(ValueError, match="could not be parsed"):
        Vocabulary.from_json("{not json")
    with pytest.raises(ValueError, match="sorted order"):
        Vocabulary.from_json('{"chars": "ba"}')
    with pytest.raises(ValueError, match='must be an object'):
        Vocabulary.from_json('[1, 2]')


# --- load_text ---------------------------------------------------------------------------

def test_load_text_reads_utf8_and_drops_bom(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes("\ufeffgrüße\n".encode("utf-8"))
    assert load_text(p) == "grüße\n"
    assert load_text(str(p), min_length=6) == "grüße\n"


@pytest.mark.parametrize("content,match", [
    (b"", "is empty"),
    (b"abc\x00\x01\x02def", r"looks binary \(a NUL byte at offset 3\)"),
    ("Grüße".encode("latin-1"), r"not valid UTF-8 \(byte 0xfc at offset 2\)"),
    (b"short", "too short: 5 characters, need at least 100"),
])
def test_malformed_files_give_clear_errors(tmp_path, content, match):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        load_text(p, min_length=100)
    assert "bad.txt" in str(info.value)


def test_load_text_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_text(tmp_path / "missing.txt")
    p = tmp_path / "ok.txt"
    p.write_text("abc", encoding="utf-8")
    with pytest.raises(ValueError, match="min_length must be a positive integer"):
        load_text(p, min_length=0)


# --- default corpus ------------------------------------------------------------------------

def test_default_corpus_is_deterministic_and_non_trivial():
    text = default_corpus()
    assert text == default_corpus()
    assert len(text) > 200_000
    vocab = Vocabulary.from_text(text)
    assert 60 <= len(vocab) <= 200
    # English prose and Python code, as documented.
    for word in ("def ", "return", "the ", "class "):
        assert word in text
    # Mostly printable ASCII: a character model learns it, not a long tail of one-off symbols.
    assert vocab.decode(vocab.encode(text)) == text
    assert sum(c.isascii() for c in text) / len(text) > 0.999


def test_default_corpus_reads_exactly_the_documented_files():
    paths = default_corpus_paths()
    assert [p.rsplit("/", 1)[-1] for p in paths] == list(DEFAULT_CORPUS_FILES)  # all present here
    assert list(DEFAULT_CORPUS_FILES) == sorted(DEFAULT_CORPUS_FILES)
    expected = "\n\n".join(load_text(p) for p in paths)
    assert default_corpus() == expected
    for name in DEFAULT_CORPUS_FILES:  # the docstring lists every file it reads
        assert f"``{name}``" in default_corpus.__doc__


def test_default_corpus_max_chars():
    head = default_corpus(max_chars=1000)
    assert len(head) == 1000
    assert default_corpus().startswith(head)
    with pytest.raises(ValueError, match="max_chars"):
        default_corpus(max_chars=0)


# --- streams and batches ---------------------------------------------------------------------

def test_streams_and_targets_shifted_by_one(rng):
    tokens = rng.integers(0, 20, size=1003)
    x, y = make_streams(tokens, batch_size=4)
    L = (1003 - 1) // 4
    assert x.shape == y.shape == (L, 4)
    for b in range(4):
        np.testing.assert_array_equal(x[:, b], tokens[b * L : (b + 1) * L])
        np.testing.assert_array_equal(y[:, b], tokens[b * L + 1 : (b + 1) * L + 1])
    np.testing.assert_array_equal(x[1:], y[:-1])  # within a stream, the target is the next input


@pytest.mark.parametrize("k,drop_last", [(7, False), (7, True), (250, False), (10, True)])
def test_chunks_concatenate_back_to_the_streams(rng, k, drop_last):
    tokens = rng.integers(0, 20, size=1003)
    x, y = make_streams(tokens, 4)
    chunks = list(batches(tokens, 4, k, drop_last=drop_last))
    assert len(chunks) == num_chunks(tokens.size, 4, k, drop_last=drop_last)
    assert all(cx.shape == (k, 4) and cy.shape == (k, 4) for cx, cy in chunks[:-1])
    cat_x = np.concatenate([c[0] for c in chunks])
    cat_y = np.concatenate([c[1] for c in chunks])
    n = x.shape[0] - (x.shape[0] % k if drop_last else 0)
    np.testing.assert_array_equal(cat_x, x[:n])
    np.testing.assert_array_equal(cat_y, y[:n])
    if drop_last:
        assert all(c[0].shape[0] == k for c in chunks)
    assert all(c[0].flags.c_contiguous for c in chunks)


def test_batches_start_resumes_part_way(rng):
    tokens = rng.integers(0, 5, size=500)
    full = list(batches(tokens, 3, 11))
    tail = list(batches(tokens, 3, 11, start=4))
    assert len(tail) == len(full) - 4
    for (a, b), (c, d) in zip(full[4:], tail):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


def test_carried_state_equals_untruncated_forward(rng):
    """Truncated BPTT's carried h_last over the chunks is the state of one long forward pass."""
    tokens = rng.integers(0, 6, size=301)
    model = RNN(6, 8, 6, seed=3)
    x, y = make_streams(tokens, 5)
    whole = model.forward(x)
    h = None
    for cx, cy in batches(tokens, 5, 9):
        h = model.gradients(cx, cy, h0=h).h_last
    np.testing.assert_allclose(h, whole.h_last, rtol=1e-12, atol=1e-12)


def test_stream_errors(rng):
    with pytest.raises(ValueError, match="tokens is too short for batch_size=8"):
        make_streams(np.arange(5), 8)
    with pytest.raises(TypeError, match="tokens must be a 1-D array of integer"):
        make_streams(np.zeros(10), 2)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        make_streams(np.arange(10), 0)
    with pytest.raises(ValueError, match=r"too short for one chunk.*need at least 41 tokens"):
        list(batches(np.arange(30), 4, 10, drop_last=True))
    with pytest.raises(ValueError, match="chunk_len"):
        list(batches(np.arange(30), 2, 0))
    with pytest.raises(ValueError, match="start"):
        list(batches(np.arange(30), 2, 3, start=-1))


def test_train_val_split():
    tokens = np.arange(100)
    train, val = train_val_split(tokens, 0.1)
    np.testing.assert_array_equal(train, np.arange(90))
    np.testing.assert_array_equal(val, np.arange(90, 100))
    with pytest.raises(ValueError, match=r"val_fraction must lie in \(0, 1\)"):
        train_val_split(tokens, 1.0)
    with pytest.raises(ValueError, match="too short to split"):
        train_val_split(np.arange(3), 0.1)
    with pytest.raises(TypeError, match="val_fraction"):
        train_val_split(tokens, "0.1")


# --- hostile --text paths -----------------------------------------------------------------------

@pytest.mark.parametrize("path, kind", [("/dev/zero", "a device"), ("/dev/urandom", "a device"), (".", "a directory")])
def test_load_text_refuses_what_is_not_a_regular_file_at_once(path, kind):
    from rnngrad.data import load_text
    with pytest.raises(ValueError, match=f"is {kind}; expected a regular UTF-8 text file"):
        load_text(path)


def test_load_text_refuses_a_fifo_without_waiting_for_a_writer(tmp_path):
    import os
    from rnngrad.data import load_text
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="is a FIFO"):
        load_text(fifo)


def test_load_text_size_limit_is_checked_before_reading(tmp_path, monkeypatch):
    from rnngrad.data import load_text
    sparse = tmp_path / "sparse.txt"
    with open(sparse, "wb") as fh:
        fh.truncate(1 << 30)  # 1 GiB of holes: no byte needs to be read to refuse it
    reads = []
    import builtins
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda *a, **k: reads.append(a) or real_open(*a, **k))
    with pytest.raises(ValueError, match=r"has 1073741824 bytes, more than the limit of 268435456; raise it "
                                         r"with --max-text-bytes"):
        load_text(sparse)
    small = tmp_path / "small.txt"
    small.write_text("hello world", encoding="utf-8")
    with pytest.raises(ValueError, match="more than the limit of 5"):
        load_text(small, max_bytes=5)
    assert load_text(small, max_bytes=11) == "hello world"


def test_load_text_checks_while_streaming(tmp_path):
    """A NUL or an invalid byte past the first chunk is found at its true offset; a character cut at
    the end of the file is invalid; one split across chunks is not."""
    from rnngrad.data import load_text
    from rnngrad.data.text import _CHUNK
    p = tmp_path / "t.txt"
    p.write_bytes(b"a" * (_CHUNK + 10) + b"\x00")
    with pytest.raises(ValueError, match=f"a NUL byte at offset {_CHUNK + 10}"):
        load_text(p)
    p.write_bytes(b"a" * (_CHUNK + 3) + b"\xff")
    with pytest.raises(ValueError, match=f"byte 0xff at offset {_CHUNK + 3}"):
        load_text(p)
    p.write_bytes(b"ab" + "é".encode()[:1])
    with pytest.raises(ValueError, match="ends inside a character"):
        load_text(p)
    p.write_bytes(b"a" * (_CHUNK - 1) + "é".encode() + b"z")  # é straddles the chunk boundary
    assert load_text(p) == "a" * (_CHUNK - 1) + "éz"

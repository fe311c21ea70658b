"""Tests for radixgen.runtime.detokenizer: incremental detokenization and stop strings (no torch needed)."""

from __future__ import annotations

import random
from typing import Any

import pytest
import transformers
from shared_paths import SHARED

from radixgen.runtime.detokenizer import IncrementalDetokenizer, StopStringMatcher, trim_stop

TOKENIZER_DIRS = {
    "stories260K": SHARED / "models/stories260K",
    "llama2-32k": SHARED / "tokenizers/llama2-32k",
}
TEXTS = [
    "Hello world! How are you today?\nI'm fine, thanks.",
    "  leading spaces,  double  spaces and trailing ",
    "\n\nnewlines\n\tand tabs\n",
    "你好，世界！这是一个测试。",
    "Emoji: 😀🎉👍🏽 and a flag 🇯🇵, mixed with text.",
    "Café naïve résumé Ærøskøbing Ünïcödé",
    "日本語のテキストと English mixed 한국어 text",
    "Math: ∑ x² ≤ ∞ → done.",
    "def f(x):\n    return x * 2  # comment",
    "a",
    " x",
    "😀",
]
_TOKENIZERS: dict[str, Any] = {}


@pytest.fixture(params=list(TOKENIZER_DIRS), scope="module")
def tok(request: pytest.FixtureRequest) -> Any:
    path = TOKENIZER_DIRS[request.param]
    if not path.exists():
        pytest.skip(f"tokenizer not found: {path}")
    if request.param not in _TOKENIZERS:
        _TOKENIZERS[request.param] = transformers.AutoTokenizer.from_pretrained(str(path))
    return _TOKENIZERS[request.param]


def encode(tok: Any, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def run(
    tok: Any, ids: list[int], prompt: list[int] | None = None, chunks: list[int] | None = None, **kw: Any
) -> list[str]:
    """Feed ids (one at a time, or in the given chunk sizes); return every delta, the finish delta last."""
    detok = IncrementalDetokenizer(tok, prompt, **kw)
    deltas, pos = [], 0
    for size in chunks or [1] * len(ids):
        deltas.append(detok.append(ids[pos : pos + size]))
        pos += size
    assert pos >= len(ids)
    deltas.append(detok.finish())
    assert detok.text == "".join(deltas)
    return deltas


def expected_delta(tok: Any, prompt: list[int], out: list[int], skip: bool = True) -> str:
    """decode(prompt + out) minus decode(prompt): what streaming ``out`` after ``prompt`` must produce."""
    full, head = (
        tok.decode(prompt + out, skip_special_tokens=skip),
        tok.decode(prompt, skip_special_tokens=skip),
    )
    assert full.startswith(head)
    return full[len(head) :]


def random_chunks(rng: random.Random, n: int) -> list[int]:
    sizes = []
    while sum(sizes) < n:
        sizes.append(rng.randint(0, 7))
    return sizes


@pytest.mark.parametrize("text", TEXTS)
def test_one_token_at_a_time_matches_decode(tok: Any, text: str) -> None:
    ids = encode(tok, text)
    deltas = run(tok, ids)
    assert "".join(deltas) == tok.decode(ids, skip_special_tokens=True)
    assert all("\ufffd" not in d for d in deltas)
    assert deltas[-1] == ""  # valid text: nothing left to flush


def test_random_chunks_match_decode(tok: Any) -> None:
    rng = random.Random(1234)
    for text in TEXTS:
        ids = encode(tok, text)
        for _ in range(5):
            deltas = run(tok, ids, chunks=random_chunks(rng, len(ids)))
            assert "".join(deltas) == tok.decode(ids, skip_special_tokens=True)
            assert all("\ufffd" not in d for d in deltas)


def test_byte_fallback_is_held_back(tok: Any) -> None:
    ids = encode(tok, "ok 😀")
    pieces = tok.convert_ids_to_tokens(ids)
    assert [p.startswith("<0x") for p in pieces[-4:]] == [True] * 4  # the emoji is 4 byte-fallback tokens
    head = tok.decode(ids[:-4])
    assert head.rstrip() == "ok"
    detok = IncrementalDetokenizer(tok)
    assert "".join(detok.append([i]) for i in ids[:-4]) == head
    assert [detok.append([i]) for i in ids[-4:]] == ["", "", "", tok.decode(ids)[len(head) :]]
    # An unfinished character stays held until finish() flushes it as decode would.
    detok = IncrementalDetokenizer(tok)
    assert detok.append(ids[:-1]) == head
    assert detok.finish() == tok.decode(ids[:-1])[len(head) :] == "\ufffd" * 3


@pytest.mark.parametrize("prompt_text", ["Once upon a time", "Tell me: 你好", "emoji end 😀", "x\n"])
def test_with_prompt_matches_decode_difference(tok: Any, prompt_text: str) -> None:
    rng = random.Random(7)
    prompt = encode(tok, prompt_text)
    for text in TEXTS:
        out = encode(tok, text)
        for chunks in (None, random_chunks(rng, len(out))):
            deltas = run(tok, out, prompt, chunks=chunks)
            assert "".join(deltas) == expected_delta(tok, prompt, out)
            assert all("\ufffd" not in d for d in deltas)


def test_split_points_inside_one_tokenization(tok: Any) -> None:
    """Prompt/output split at every token boundary of one text (leading spaces must survive the split)."""
    ids = encode(tok, " ".join(TEXTS[:6]))
    for split in range(len(ids) + 1):
        prompt, out = ids[:split], ids[split:]
        full, head = tok.decode(ids), tok.decode(prompt)
        if not full.startswith(head):  # the split falls inside a character's bytes
            continue
        assert "".join(run(tok, out, prompt)) == full[len(head) :]


@pytest.mark.parametrize("skip", [True, False])
def test_special_tokens(tok: Any, skip: bool) -> None:
    bos, eos = tok.bos_token_id, tok.eos_token_id
    a, b = encode(tok, "Hello world"), encode(tok, "Bye 😀 now")
    ids = [bos, *a, eos, bos, *b, eos, eos]
    expected = tok.decode(ids, skip_special_tokens=skip)
    assert ("<s>" in expected) is not skip
    for prompt in (None, [bos, *encode(tok, "Q:")], [bos]):
        deltas = run(tok, ids, prompt, skip_special_tokens=skip)
        got = "".join(deltas)
        if prompt:
            assert got == expected_delta(tok, prompt, ids, skip)
        else:
            assert got == expected
        assert all("\ufffd" not in d for d in deltas)


def test_invalid_bytes_are_not_held_forever(tok: Any) -> None:
    cont = tok.convert_tokens_to_ids("<0x80>")  # a lone UTF-8 continuation byte
    ids = encode(tok, "bad") + [cont] * 10 + encode(tok, " end")
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.append([i]) for i in ids]
    assert "".join(deltas[: -len(encode(tok, " end"))]).startswith("bad\ufffd")  # emitted before the end
    assert "".join(deltas) + detok.finish() == tok.decode(ids)


def random_valid_ids(tok: Any, rng: random.Random, normal: list[int]) -> list[int]:
    """Random vocabulary tokens, random valid Unicode (byte-fallback heavy) and special tokens, joined at
    character boundaries."""
    units: list[list[int]] = [[rng.choice(normal)] for _ in range(rng.randint(0, 20))]
    for _ in range(rng.randint(0, 3)):
        planes = [(0x20, 0x7E), (0xA0, 0x2FFF), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF)]
        chars = [chr(rng.randint(*rng.choice(planes))) for _ in range(rng.randint(1, 6))]
        units.insert(rng.randint(0, len(units)), encode(tok, "".join(chars)))
    for _ in range(rng.randint(0, 2)):
        units.insert(rng.randint(0, len(units)), [rng.choice([tok.bos_token_id, tok.eos_token_id])])
    return [i for unit in units for i in unit]


def test_random_sequences_match_decode(tok: Any) -> None:
    rng = random.Random(2024)
    pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
    normal = [i for i, p in enumerate(pieces) if not p.startswith("<0x") and i not in tok.all_special_ids]
    for _ in range(150):
        prompt, out = random_valid_ids(tok, rng, normal), random_valid_ids(tok, rng, normal)
        skip = rng.random() < 0.5
        chunks = None if rng.random() < 0.5 else random_chunks(rng, len(out))
        deltas = run(tok, out, prompt, chunks=chunks, skip_special_tokens=skip)
        assert "".join(deltas) == expected_delta(tok, prompt, out, skip), (prompt, out)
        assert all("\ufffd" not in d for d in deltas)


class CountingTokenizer:
    """Wraps a tokenizer and records the length of every id list it decodes."""

    def __init__(self, tok: Any) -> None:
        self.tok, self.lengths = tok, []

    def decode(self, ids: list[int], **kw: Any) -> str:
        self.lengths.append(len(ids))
        return self.tok.decode(ids, **kw)


def test_work_per_append_is_bounded(tok: Any) -> None:
    ids = encode(tok, " ".join(TEXTS) * 3)
    counting = CountingTokenizer(tok)
    prompt = encode(tok, "A long prompt " * 50)
    detok = IncrementalDetokenizer(counting, prompt)
    out = "".join(detok.append([i]) for i in ids) + detok.finish()
    assert out == expected_delta(tok, prompt, ids)
    assert max(counting.lengths) <= 8  # a few tokens of context, never the whole sequence
    assert len(counting.lengths) <= 6 * len(ids) + 10


def test_stop_string_spanning_tokens_while_streaming(tok: Any) -> None:
    text = "The answer is 42. END OF ANSWER and then more text"
    matcher = StopStringMatcher(["END OF ANSWER", "never"])
    detok = IncrementalDetokenizer(tok)
    sent, match = "", None
    for i in encode(tok, text):
        detok.append([i])
        match = matcher.find(detok.text)
        if match is not None:
            break
        safe = detok.text[: matcher.safe_prefix_len(detok.text)]
        assert safe.startswith(sent)  # streamed text never has to be taken back
        sent = safe
    assert match == ("END OF ANSWER", text.index("END"))
    assert sent == "The answer is 42. "  # held back "E", "EN", ... while they could start the stop string
    assert trim_stop(detok.text, match[0], no_stop_trim=False) == "The answer is 42. "
    assert trim_stop(detok.text, match[0], no_stop_trim=True) == "The answer is 42. END OF ANSWER"


def test_stop_matcher_find() -> None:
    m = StopStringMatcher(["END", "STOP", "", "STOP"])
    assert m.stop == ["END", "STOP"]
    assert m.find("abc STOP xyz END") == ("STOP", 4)
    assert m.find("END STOP") == ("END", 0)
    assert m.find("nothing here") is None
    assert StopStringMatcher(["abc", "ab"]).find("xxabc") == ("ab", 2)  # tie: the shorter completes first
    assert StopStringMatcher("\n\n").find("a\n\nb") == ("\n\n", 1)
    assert StopStringMatcher([]).find("anything") is None
    assert not StopStringMatcher(None)
    with pytest.raises(TypeError):
        StopStringMatcher(["ok", 3])  # type: ignore[list-item]


def test_stop_matcher_safe_prefix_len() -> None:
    m = StopStringMatcher(["STOP", "</end>"])
    assert m.safe_prefix_len("Hello") == 5
    assert m.safe_prefix_len("Hello ST") == 6
    assert m.safe_prefix_len("Hello STO") == 6
    assert m.safe_prefix_len("Hello </en") == 6
    assert m.safe_prefix_len("Hello S T") == 9
    assert m.safe_prefix_len("Hello STOP now") == 6  # a complete stop: stream only what precedes it
    assert m.safe_prefix_len("") == 0
    assert StopStringMatcher(["lo!", "o?"]).safe_prefix_len("Hello") == 3  # longest partial tail wins
    assert StopStringMatcher(["aab"]).safe_prefix_len("xaa") == 1
    assert StopStringMatcher([]).safe_prefix_len("abc") == 3


def test_trim_stop() -> None:
    assert trim_stop("Hello STOP world STOP", "STOP", no_stop_trim=False) == "Hello "
    assert trim_stop("Hello STOP world STOP", "STOP", no_stop_trim=True) == "Hello STOP"
    assert trim_stop("no match", "STOP", no_stop_trim=False) == "no match"
    with pytest.raises(ValueError):
        trim_stop("text", "", no_stop_trim=False)

"""Per-request sampling parameters, validated on construction (names follow SGLang's native API).

``SamplingParams`` is frozen: it is built and validated once by the request planner (``generate_request``) and
travels typed to the scheduler (msgspec encodes dataclasses), never as a dict. Torch-free.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

import regex

from radixgen.runtime.errors import InvalidRequestError

_MAX_STOP_STRINGS = 32
#: beyond this the distribution is uniform to float32 precision; the same bound for every entry point
MAX_TEMPERATURE = 2.0**16
# SGLang sampling parameters this server does not implement (beam search, watermarking): accepted at SGLang's
# default, refused by name otherwise
_UNSUPPORTED_SGLANG_PARAMS: dict[str, object] = {"beam_width": None, "watermark": None, "ebnf_full_assistant": False}
_CONSTRAINTS = ("json_schema", "regex", "ebnf", "structural_tag", "json_object")


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples and when it stops.

    Attributes:
        max_new_tokens: upper bound on generated tokens (0 = only prefill the prompt).
        min_new_tokens: eos / stop tokens / stop strings are suppressed until this many tokens exist.
        stop: stop strings (matched on the detokenized output, trimmed unless ``no_stop_trim``).
        stop_regex: regular expressions (Python / ``regex`` syntax) that end the request when one matches the
            detokenized output; the text is cut where the first match starts (unless ``no_stop_trim``), and
            ``finish_reason.matched`` is the pattern (SGLang's meaning). A pattern that matches the empty string is
            refused.
        stop_token_ids: extra token ids that end the request (like eos).
        temperature: 0 = greedy; otherwise logits are divided by it; at most ``MAX_TEMPERATURE``.
        top_p: nucleus mass in (0, 1]. top_k: -1 or 0 = all tokens, else keep the k best.
        min_p: drop tokens whose probability < min_p * max probability, in [0, 1].
        frequency_penalty / presence_penalty: OpenAI semantics over generated tokens, in [-2, 2].
        repetition_penalty: CTRL/HF semantics over prompt + generated tokens, > 0 (1 = off).
        logit_bias: token id → additive bias, each in [-100, 100].
        seed: per-request RNG seed; the same seed gives the same tokens whatever else is in the batch (SGLang's
            ``sampling_seed`` is accepted as its name too).
        ignore_eos: keep generating past eos ids.
        skip_special_tokens / spaces_between_special_tokens: detokenizer options.
        no_stop_trim: keep the matched stop string in the text.
        n: number of samples for this prompt (expanded into n requests by the frontends).
        stream_interval: when streaming, send an update every this many new tokens after the first (and at the end);
            None: the server's ``--stream-interval``.
        custom_params: parameters of a custom logit processor; this server runs none, so only null / ``{}`` is
            accepted (anything else is refused naming the field, never ignored).
        json_schema / regex / ebnf / json_object: a grammar constraint, at most one per request, enforced in the
            decode loop (DESIGN.md, "Grammar-constrained decoding"; radixgen.grammar): ``json_schema`` a JSON-schema
            document (a string; a dict is serialised), ``regex`` a regular expression the whole output must match,
            ``ebnf`` an EBNF grammar (xgrammar's GBNF dialect, root rule ``root``), ``json_object=True`` any JSON
            object (OpenAI's ``response_format={"type": "json_object"}``). The request ends with finish reason
            ``stop`` when the grammar is complete and eos is sampled; eos is never suppressed by
            ``min_new_tokens`` on a constrained request (the grammar decides when it may end).
        structural_tag: xgrammar's structural tag, as SGLang takes it (a JSON string; a dict is serialised):
            ``{"type": "structural_tag", "structures": [{"begin", "schema", "end"}], "triggers": [...]}`` — free
            text, but once a trigger is generated the text must continue as one of the structures (its JSON-schema
            body between ``begin`` and ``end``) — or ``{"type": "structural_tag", "format": {...}}``.
        grammar_best_effort: accept JSON-schema keywords the grammar backend does not enforce (they are then
            ignored while generating) instead of rejecting the request with an error naming them.

    Raises:
        InvalidRequestError: a field has the wrong type or is out of range; ``param`` names the field.
    """

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_regex: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    n: int = 1
    stream_interval: int | None = None
    custom_params: dict[str, Any] | None = None
    json_schema: str | None = None
    regex: str | None = None
    ebnf: str | None = None
    structural_tag: str | None = None
    json_object: bool = False
    grammar_best_effort: bool = False

    def __post_init__(self) -> None:
        normalise = {
            "json_schema": json.dumps(self.json_schema) if isinstance(self.json_schema, dict | bool) else None,
            "structural_tag": json.dumps(self.structural_tag) if isinstance(self.structural_tag, dict) else None,
            "stop": [self.stop] if isinstance(self.stop, str) else ([] if self.stop is None else None),
            "stop_regex": [self.stop_regex] if isinstance(self.stop_regex, str) else (
                [] if self.stop_regex is None else None
            ),
            "stop_token_ids": [] if self.stop_token_ids is None else None,
            "logit_bias": {} if self.logit_bias is None else None,
        }
        for name, value in normalise.items():
            if value is not None:
                object.__setattr__(self, name, value)  # frozen: normalised once, here
        self._validate()

    def replace(self, **changes: Any) -> SamplingParams:
        """A copy with ``changes`` applied (validated again).

        Raises:
            InvalidRequestError: a changed value is invalid.
        """
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SamplingParams:
        """Build from a JSON-like dict; unknown keys are an error naming them.

        Raises:
            InvalidRequestError: unknown key, wrong type or out-of-range value (``param`` names it).
        """
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise InvalidRequestError("sampling_params", f"sampling_params must be an object, got {type(d).__name__}")
        for name, default in _UNSUPPORTED_SGLANG_PARAMS.items():
            if name in d and d[name] != default:
                raise InvalidRequestError(name, f"{name}: not supported by this server (only {default} is accepted)")
        d = {k: v for k, v in d.items() if k not in _UNSUPPORTED_SGLANG_PARAMS}
        known = {f.name for f in fields(cls)} | {"sampling_seed"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidRequestError("sampling_params", f"sampling_params: unknown field(s) {', '.join(unknown)}")
        kwargs = dict(d)
        if "sampling_seed" in kwargs:  # SGLang's name of ``seed``
            alias = kwargs.pop("sampling_seed")
            if alias is not None and kwargs.get("seed") is not None and kwargs["seed"] != alias:
                raise InvalidRequestError("sampling_seed", "sampling_seed: differs from seed (give one of them)")
            if alias is not None:
                kwargs["seed"] = alias
        if "logit_bias" in kwargs and isinstance(kwargs["logit_bias"], dict):
            try:
                kwargs["logit_bias"] = {int(k): v for k, v in kwargs["logit_bias"].items()}
            except (TypeError, ValueError):
                raise InvalidRequestError("logit_bias", "logit_bias: keys must be token ids (integers)") from None
        try:
            return cls(**kwargs)
        except TypeError as e:  # e.g. an unhashable stop value inside the dataclass
            raise InvalidRequestError("sampling_params", f"sampling_params: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def constraint(self) -> tuple[str, str] | None:
        """``(kind, spec)`` of the grammar constraint, or None: kind in json_schema | regex | ebnf | json_object
        (whose spec is "")."""
        for kind in _CONSTRAINTS:
            value = getattr(self, kind)
            if kind == "json_object":
                if value:
                    return kind, ""
            elif value is not None:
                return kind, value
        return None

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def _validate(self) -> None:
        _check_int("max_new_tokens", self.max_new_tokens, lo=0)
        _check_int("min_new_tokens", self.min_new_tokens, lo=0)
        if self.min_new_tokens > self.max_new_tokens:
            raise InvalidRequestError(
                "min_new_tokens",
                f"min_new_tokens ({self.min_new_tokens}) must be <= max_new_tokens ({self.max_new_tokens})",
            )
        if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
            raise InvalidRequestError("stop", "stop: must be a non-empty string or a list of non-empty strings")
        if len(self.stop) > _MAX_STOP_STRINGS:
            raise InvalidRequestError("stop", f"stop: at most {_MAX_STOP_STRINGS} stop strings")
        _check_stop_regex(self.stop_regex)
        if not isinstance(self.stop_token_ids, list):
            raise InvalidRequestError("stop_token_ids", "stop_token_ids: must be a list of token ids")
        for t in self.stop_token_ids:
            _check_int("stop_token_ids", t, lo=0)
        _check_float("temperature", self.temperature, lo=0.0, hi=MAX_TEMPERATURE)
        _check_float("top_p", self.top_p, lo=0.0, lo_open=True, hi=1.0)
        _check_int("top_k", self.top_k, lo=-1)
        _check_float("min_p", self.min_p, lo=0.0, hi=1.0)
        _check_float("frequency_penalty", self.frequency_penalty, lo=-2.0, hi=2.0)
        _check_float("presence_penalty", self.presence_penalty, lo=-2.0, hi=2.0)
        _check_float("repetition_penalty", self.repetition_penalty, lo=0.0, lo_open=True, hi=2.0**16)
        if not isinstance(self.logit_bias, dict):
            raise InvalidRequestError("logit_bias", "logit_bias: must be an object mapping token ids to biases")
        for tok, bias in self.logit_bias.items():
            _check_int("logit_bias", tok, lo=0)
            _check_float("logit_bias", bias, lo=-100.0, hi=100.0)
        if self.seed is not None:
            _check_int("seed", self.seed, lo=0, hi=2**63 - 1)
        for name in ("ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidRequestError(name, f"{name}: must be a boolean")
        _check_int("n", self.n, lo=1, hi=128)
        if self.stream_interval is not None:
            _check_int("stream_interval", self.stream_interval, lo=1)
        if self.custom_params:
            raise InvalidRequestError(
                "custom_params", "custom_params: this server runs no custom logit processor (give null or {})"
            )
        for name in ("json_schema", "regex", "ebnf", "structural_tag"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidRequestError(name, f"{name}: must be a string, got {type(value).__name__}")
        for name in ("json_object", "grammar_best_effort"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidRequestError(name, f"{name}: must be a boolean")
        given = [k for k in _CONSTRAINTS if (getattr(self, k) if k == "json_object" else getattr(self, k) is not None)]
        if len(given) > 1:
            raise InvalidRequestError(
                given[0], f"{'/'.join(given)}: give at most one grammar constraint, got {len(given)}"
            )

    def check_vocab(self, vocab_size: int) -> None:
        """Check token ids against the model's vocabulary.

        Raises:
            InvalidRequestError: a stop_token_ids or logit_bias id is >= vocab_size.
        """
        for t in self.stop_token_ids:
            if t >= vocab_size:
                raise InvalidRequestError(
                    "stop_token_ids", f"stop_token_ids: token id {t} out of range [0, {vocab_size})"
                )
        for t in self.logit_bias:
            if t >= vocab_size:
                raise InvalidRequestError("logit_bias", f"logit_bias: token id {t} out of range [0, {vocab_size})")


def _check_stop_regex(patterns: object) -> None:
    if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
        raise InvalidRequestError("stop_regex", "stop_regex: must be a non-empty string or a list of them")
    if len(patterns) > _MAX_STOP_STRINGS:
        raise InvalidRequestError("stop_regex", f"stop_regex: at most {_MAX_STOP_STRINGS} patterns")
    for p in patterns:
        try:
            compiled = regex.compile(p)
        except (regex.error, RecursionError, OverflowError) as e:
            raise InvalidRequestError("stop_regex", f"stop_regex: invalid pattern {p!r}: {e}") from None
        if compiled.fullmatch("") is not None:
            raise InvalidRequestError("stop_regex", f"stop_regex: {p!r} matches the empty string")


def _check_int(name: str, v: object, lo: int | None = None, hi: int | None = None) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidRequestError(name, f"{name}: must be an integer, got {v!r}")
    if lo is not None and v < lo:
        raise InvalidRequestError(name, f"{name}: must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise InvalidRequestError(name, f"{name}: must be <= {hi}, got {v}")


def _check_float(name: str, v: object, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> None:
    try:  # float() of a huge int (JSON allows 1 followed by 400 zeros) raises OverflowError
        x = float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan
    except OverflowError:
        x = math.inf
    if not math.isfinite(x):
        raise InvalidRequestError(name, f"{name}: must be a finite number, got {v!r}")
    if lo is not None and (x <= lo if lo_open else x < lo):
        raise InvalidRequestError(name, f"{name}: must be {'>' if lo_open else '>='} {lo}, got {x}")
    if hi is not None and x > hi:
        raise InvalidRequestError(name, f"{name}: must be <= {hi}, got {x}")

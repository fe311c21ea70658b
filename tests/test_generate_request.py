"""The request planner (one for every entry point) and the structured errors it raises."""

from __future__ import annotations

import msgspec
import pytest

from radixgen.runtime.errors import InvalidRequestError
from radixgen.runtime.generate_request import GenerateReqInput, plan_requests
from radixgen.runtime.http_common import http_error
from radixgen.runtime.io_struct import ServerSchedulerInput, TokenizedGenerateReq
from radixgen.runtime.openai_api.serving import openai_renames
from radixgen.runtime.sampling_params import SamplingParams

CONTEXT, VOCAB = 256, 100


class CharTokenizer:
    """One token per character (ids 1..26), enough to plan requests without a model."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) - 96 for c in text]


def plan(obj: GenerateReqInput, text_field: str = "text"):  # type: ignore[no-untyped-def]
    return plan_requests(obj, CharTokenizer(), CONTEXT, VOCAB, text_field)


def test_batch_times_n_expands_in_response_order_with_per_sample_seeds() -> None:
    obj = GenerateReqInput(text=["ab", "cde"], sampling_params={"n": 3, "seed": 5, "max_new_tokens": 4}, rid=["x", "y"])
    planned, single = plan(obj)
    assert not single
    assert [p.rid for p in planned] == ["x-0", "x-1", "x-2", "y-0", "y-1", "y-2"]
    assert [p.index for p in planned] == list(range(6)) and [p.prompt_index for p in planned] == [0, 0, 0, 1, 1, 1]
    assert [p.req.sampling_params.seed for p in planned] == [5, 6, 7, 5, 6, 7]
    assert planned[3].req.input_ids == [3, 4, 5] and planned[0].base_rid == "x"
    assert all(isinstance(p.req.sampling_params, SamplingParams) for p in planned)


def test_typed_params_travel_typed_over_msgpack() -> None:
    (p,), single = plan(GenerateReqInput(input_ids=[1, 2], sampling_params=SamplingParams(stop="x", logit_bias={3: 1})))
    assert single
    wire = msgspec.msgpack.encode(p.req)
    back = msgspec.msgpack.Decoder(ServerSchedulerInput).decode(wire)
    assert isinstance(back, TokenizedGenerateReq) and back == p.req
    assert back.sampling_params.stop == ["x"] and back.sampling_params.logit_bias == {3: 1.0}


@pytest.mark.parametrize(
    ("obj", "param"),
    [
        (GenerateReqInput(text=""), "text"),
        (GenerateReqInput(), "text"),
        (GenerateReqInput(input_ids=[1, 200]), "input_ids"),
        (GenerateReqInput(input_ids=[1] * CONTEXT), "input_ids"),
        (GenerateReqInput(text="ab", sampling_params={"max_new_tokens": CONTEXT}), "max_new_tokens"),
        (GenerateReqInput(text="ab", sampling_params={"bogus": 1}), "sampling_params"),
        (GenerateReqInput(text="ab", sampling_params={"top_p": 0}), "top_p"),
        (GenerateReqInput(text="ab", sampling_params={"stop_token_ids": [VOCAB]}), "stop_token_ids"),
        (GenerateReqInput(text=["a", "b"], rid=["r", "r"]), "rid"),
        (GenerateReqInput(text="ab", top_logprobs_num=-1), "top_logprobs_num"),
    ],
)
def test_errors_carry_the_field(obj: GenerateReqInput, param: str) -> None:
    with pytest.raises(InvalidRequestError) as e:
        plan(obj)
    assert e.value.param == param and e.value.message.startswith(param), e.value.message


def test_entry_points_name_fields_in_their_own_terms() -> None:
    with pytest.raises(InvalidRequestError) as e:
        plan(GenerateReqInput(text=""), text_field="prompt")  # the offline Engine's argument
    assert e.value.param == "prompt"
    with pytest.raises(InvalidRequestError) as e:
        plan(GenerateReqInput(input_ids=[1, 2], sampling_params={"max_new_tokens": CONTEXT}))
    err = http_error(e.value, openai_renames("messages", "max_completion_tokens"))
    assert err.status == 400 and err.param == "max_completion_tokens"
    assert err.message.startswith("max_completion_tokens: prompt (2) + max_completion_tokens (256) exceeds")

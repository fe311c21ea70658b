"""Speculative decoding: proposers (n-gram lookup, draft model), exact verification, the scheduler's hooks.

``create_spec_worker`` builds the SpecWorker a Scheduler uses when ``speculative_algorithm`` is set (see
``worker.py`` for the step, ``verify.py`` for the acceptance rule, ``ngram.py`` and ``draft_model.py`` for the
proposers).
"""

from __future__ import annotations

from typing import Any

from radixgen.runtime.req_kv import ReqKVManager
from radixgen.runtime.sampler import Sampler
from radixgen.runtime.server_args import ServerArgs
from radixgen.runtime.speculative.base import Draft, Proposer
from radixgen.runtime.speculative.ngram import NgramProposer, NgramSpeculator
from radixgen.runtime.speculative.verify import VerifyRows, accept_drafts
from radixgen.runtime.speculative.worker import SpecStats, SpecWorker

__all__ = [
    "Draft",
    "NgramProposer",
    "NgramSpeculator",
    "Proposer",
    "SpecStats",
    "SpecWorker",
    "VerifyRows",
    "accept_drafts",
    "create_spec_worker",
]


def create_spec_worker(
    args: ServerArgs, runner: Any, kv: ReqKVManager, sampler: Sampler, eos_token_ids: tuple[int, ...]
) -> SpecWorker | None:
    """The SpecWorker for ``args.speculative_algorithm`` (None when speculation is off).

    ``runner`` is the target's model runner (its ``vocab_size``; the draft model is checked against its tokenizer
    and vocabulary). The worker is registered as a release hook of ``kv``, so a proposer's per-request memory goes
    when the request's does.

    Raises:
        ValueError: the draft model's vocabulary or tokenizer differs from the target's (names the flag).
    """
    algo = args.speculative_algorithm
    if algo is None:
        return None
    proposer: Proposer
    if algo == "ngram":
        proposer = NgramSpeculator(
            args.speculative_ngram_min_match_window_size, args.speculative_ngram_max_match_window_size
        )
    else:
        from radixgen.runtime.speculative.draft_model import DraftModelProposer

        proposer = DraftModelProposer(args, runner, sampler, eos_token_ids)
    worker = SpecWorker(args, proposer, sampler, runner.vocab_size, eos_token_ids)
    kv.release_hooks.append(worker.release)
    return worker

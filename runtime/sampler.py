"""Batched next-token sampling: logit bias, suppression, penalties, temperature, top-k / top-p / min-p.

Order of logit processing (as vLLM / SGLang), per row of a ``[bs, V]`` float32 logits batch:

1. ``logit_bias`` is added; 2. ``suppress_ids`` are set to -inf (eos / stop tokens before
   ``min_new_tokens``); 3. repetition penalty, then frequency / presence penalties (see
   :mod:`radixgen.runtime.penalties`);
4. greedy rows (``temperature == 0`` or ``top_k == 1``) take the argmax;
5. other rows: divide by the temperature, softmax, then keep the ``top_k`` best tokens, then the smallest
   nucleus of mass ``top_p`` (Holtzman et al. 2019, "The Curious Case of Neural Text Degeneration",
   arXiv:1904.09751), then drop tokens with probability below ``min_p`` times the largest (Nguyen et al.
   2024, "Turning Up the Heat: Min-p Sampling", arXiv:2407.01082), each step renormalising;
6. sample with the exponential race ``argmax(p / E)``, ``E ~ Exponential(1)`` i.i.d. per token, which picks
   token ``i`` with probability ``p_i / sum(p)`` (so the final renormalisation is implicit). A seeded row
   draws its ``E`` from its own ``torch.Generator`` (a ``[V]`` draw per step), so the same seed gives the
   same tokens whatever else is in the batch; unseeded rows draw in one batched call from the
   :class:`Sampler`'s generator.

Grammar masks are not handled here: the scheduler sets disallowed logits to -inf before :meth:`Sampler.sample`
(-inf survives every step above unchanged). Logprobs are computed from the raw logits
(:mod:`radixgen.runtime.logprobs`, re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radixgen.runtime.cpu import ops as cpu_ops
from radixgen.runtime.logprobs import compute_logprobs, gather_token_logprobs, top_logprobs
from radixgen.runtime.penalties import PenaltyTensors, flat_row_tokens
from radixgen.runtime.sampling_params import SamplingParams

__all__ = [
    "Sampler",
    "SamplingBatchInfo",
    "compute_logprobs",
    "filtered_probs",
    "gather_token_logprobs",
    "process_logits",
    "top_logprobs",
]

# A temperature below this is treated as greedy (as SGLang / vLLM do): dividing by it would overflow.
GREEDY_TEMPERATURE_EPS = 1e-5


@dataclass
class SamplingBatchInfo:
    """Per-batch sampling tensors, built once per step from the running requests.

    ``bs`` is the batch size and ``V`` the vocabulary size (the logits' last dimension). All tensors live on
    ``device``.

    Attributes:
        vocab_size: ``V``.
        temperatures: float32 ``[bs, 1]``; 1.0 on greedy rows (never divides by zero).
        top_ks: int64 ``[bs]`` in ``[1, V]``; ``V`` where top-k is off and on greedy rows.
        top_ps: float32 ``[bs]`` in ``(0, 1]``; 1.0 where off and on greedy rows.
        min_ps: float32 ``[bs]`` in ``[0, 1]``; 0.0 where off and on greedy rows.
        is_greedy: bool ``[bs]`` the row takes the argmax.
        all_greedy / any_greedy: host-side summaries of ``is_greedy``.
        need_top_k / need_top_p / need_min_p: some non-greedy row uses that filter (else it is skipped).
        seeded_rows: non-greedy rows that have their own generator, in order.
        seeded_generators: the generators of ``seeded_rows`` (one per entry).
        noise_rows: int64 ``[m]`` rows that draw noise from the Sampler's generator, or ``None`` for all rows
            (when no row is seeded).
        bias: ``(rows, cols, values)``: int64 ``[nnz]``, int64 ``[nnz]``, float32 ``[nnz]`` logit-bias
            entries, or ``None`` if no row has a bias.
        suppress: ``(rows, cols)``: int64 ``[nnz]`` each, logits set to -inf, or ``None``.
        penalties: repetition / frequency / presence tensors, or ``None`` if no row is penalised.
    """

    vocab_size: int
    temperatures: torch.Tensor
    top_ks: torch.Tensor
    top_ps: torch.Tensor
    min_ps: torch.Tensor
    is_greedy: torch.Tensor
    all_greedy: bool
    any_greedy: bool
    need_top_k: bool
    need_top_p: bool
    need_min_p: bool
    seeded_rows: list[int]
    seeded_generators: list[torch.Generator]
    noise_rows: torch.Tensor | None
    bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
    suppress: tuple[torch.Tensor, torch.Tensor] | None
    penalties: PenaltyTensors | None

    @property
    def batch_size(self) -> int:
        return self.is_greedy.shape[0]

    @classmethod
    def build(
        cls,
        params: list[SamplingParams],
        generators: list[torch.Generator | None],
        output_ids: list[list[int]],
        prompt_ids: list[list[int]],
        suppress_ids: list[list[int]],
        vocab_size: int,
        device: torch.device | str = "cpu",
    ) -> SamplingBatchInfo:
        """Build the batch's tensors.

        Args:
            params: each request's sampling parameters (``bs`` entries).
            generators: a per-request ``torch.Generator`` on ``device`` when the request has a seed (created
                once per request with ``manual_seed(seed)`` and kept across steps), else ``None``.
            output_ids: tokens generated so far per request (frequency / presence penalties count these).
            prompt_ids: prompt tokens per request (the repetition penalty covers prompt + output).
            suppress_ids: token ids whose logits are -inf this step, per request.
            vocab_size: ``V``, the logits' last dimension.
            device: where the tensors go.

        Raises:
            ValueError: the lists differ in length, a token id is outside ``[0, V)``, or a generator is on
                another device type.
        """
        bs, V = len(params), vocab_size
        for name, seq in (("generators", generators), ("output_ids", output_ids),
                          ("prompt_ids", prompt_ids), ("suppress_ids", suppress_ids)):
            if len(seq) != bs:
                raise ValueError(f"SamplingBatchInfo.build: {name} has {len(seq)} entries, params has {bs}")
        dev = torch.device(device)
        greedy = [p.is_greedy or p.temperature < GREEDY_TEMPERATURE_EPS for p in params]
        temps = [1.0 if g else p.temperature for p, g in zip(params, greedy, strict=True)]
        top_ks = [V if g or p.top_k <= 0 else min(p.top_k, V) for p, g in zip(params, greedy, strict=True)]
        top_ps = [1.0 if g else p.top_p for p, g in zip(params, greedy, strict=True)]
        min_ps = [0.0 if g else p.min_p for p, g in zip(params, greedy, strict=True)]

        seeded_rows: list[int] = []
        seeded_gens: list[torch.Generator] = []
        for i, g in enumerate(generators):
            if g is None:
                continue
            if g.device.type != dev.type:
                raise ValueError(f"SamplingBatchInfo.build: generator {i} is on {g.device}, batch on {dev}")
            if not greedy[i]:
                seeded_rows.append(i)
                seeded_gens.append(g)
        noise_rows = None
        if any(g is not None for g in generators):
            unseeded = [i for i, g in enumerate(generators) if g is None]
            noise_rows = torch.tensor(unseeded, dtype=torch.int64, device=dev)

        bias = None
        entries = [(i, t, b) for i, p in enumerate(params) for t, b in p.logit_bias.items()]
        if entries:
            if any(not 0 <= t < V for _, t, _ in entries):
                raise ValueError(f"logit_bias: token id out of range [0, {V})")
            r, t, b = zip(*entries, strict=True)
            bias = (torch.tensor(r, dtype=torch.int64, device=dev),
                    torch.tensor(t, dtype=torch.int64, device=dev),
                    torch.tensor(b, dtype=torch.float32, device=dev))
        suppress = None
        if any(suppress_ids):
            r, t = flat_row_tokens(suppress_ids, V, "suppress_ids")
            suppress = (r.to(dev), t.to(dev))

        return cls(
            vocab_size=V,
            temperatures=torch.tensor(temps, dtype=torch.float32, device=dev).unsqueeze(1),
            top_ks=torch.tensor(top_ks, dtype=torch.int64, device=dev),
            top_ps=torch.tensor(top_ps, dtype=torch.float32, device=dev),
            min_ps=torch.tensor(min_ps, dtype=torch.float32, device=dev),
            is_greedy=torch.tensor(greedy, dtype=torch.bool, device=dev),
            all_greedy=all(greedy),
            any_greedy=any(greedy),
            need_top_k=any(k < V for k in top_ks),
            need_top_p=any(p < 1.0 for p in top_ps),
            need_min_p=any(m > 0.0 for m in min_ps),
            seeded_rows=seeded_rows,
            seeded_generators=seeded_gens,
            noise_rows=noise_rows,
            bias=bias,
            suppress=suppress,
            penalties=PenaltyTensors.build(params, output_ids, prompt_ids, V, dev),
        )


def process_logits(logits: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
    """Logit bias, suppression and penalties (steps 1-3 of the module docstring).

    Args:
        logits: ``[bs, V]`` raw logits; never modified.
        info: the batch's sampling tensors.

    Returns:
        float32 ``[bs, V]``; the input itself (cast to float32) when nothing applies, else a new tensor.
    """
    if info.bias is None and info.suppress is None and info.penalties is None:
        return logits.to(torch.float32)
    x = logits.to(torch.float32, copy=True)
    if info.bias is not None:
        rows, cols, values = info.bias
        x.index_put_((rows, cols), values, accumulate=True)
    if info.suppress is not None:
        rows, cols = info.suppress
        x.index_put_((rows, cols), torch.tensor(float("-inf"), device=x.device))
    if info.penalties is not None:
        info.penalties.apply(x)
    return x


def plain_greedy(params: SamplingParams) -> bool:
    """True when a row's next token is simply the argmax of its (grammar-masked) logits: greedy, with no logit
    bias and no penalties — what ``Sampler.sample`` then returns, computed without building a
    ``SamplingBatchInfo`` (tens of microseconds a decode step at batch 1)."""
    greedy = params.is_greedy or params.temperature < GREEDY_TEMPERATURE_EPS
    return (
        greedy
        and not params.logit_bias
        and params.frequency_penalty == 0.0
        and params.presence_penalty == 0.0
        and params.repetition_penalty == 1.0
    )


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """int64 ``[bs]`` index of each row's largest value of ``x [bs, V]`` (the first one on ties, as ``argmax``).

    Float32 rows on the CPU take radixgen's kernel (``radixgen.runtime.cpu.ops.argmax_rows``: 7 us against
    torch.max's 18 us for one 32000-wide row called on its own; in the batch-1 int8 decode loop of bench-llama-40m
    the sample phase went from 0.071 to 0.061 ms); elsewhere
    ``torch.max(dim=-1)``: on CPU its kernel is ~3x faster than ``argmax`` for ``[64, 32000]`` float32.
    """
    cpu_float32 = x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 2
    if cpu_float32 and x.is_contiguous() and cpu_ops.available():
        return cpu_ops.argmax_rows(x)
    return torch.max(x, dim=-1).indices


def filtered_probs(logits: torch.Tensor, info: SamplingBatchInfo, renormalize: bool = True) -> torch.Tensor:
    """Temperature, softmax and top-k → top-p → min-p filtering (step 5 of the module docstring).

    Args:
        logits: float32 ``[bs, V]`` processed logits (:func:`process_logits`); never modified.
        info: the batch's sampling tensors (greedy rows are treated as temperature 1, no filter).
        renormalize: divide each row by its kept mass (the sampler skips this: the race is scale-free).

    Returns:
        float32 ``[bs, V]`` probabilities, 0 on filtered tokens.
    """
    probs = torch.softmax(logits / info.temperatures, dim=-1)
    if info.need_top_k or info.need_top_p:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)
        if info.need_top_k:
            pos = torch.arange(probs.shape[-1], device=probs.device).unsqueeze(0)
            sorted_p = sorted_p.masked_fill(pos >= info.top_ks.unsqueeze(1), 0.0)
        if info.need_top_p:
            cum = torch.cumsum(sorted_p, dim=-1)
            before = torch.cat([torch.zeros_like(cum[:, :1]), cum[:, :-1]], dim=-1)  # mass strictly above
            # keep the minimal prefix whose mass reaches top_p of what top-k kept; the best token always stays
            drop = (before >= info.top_ps.unsqueeze(1) * cum[:, -1:]) & (info.top_ps < 1.0).unsqueeze(1)
            sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(1, order, sorted_p)
    if info.need_min_p:
        threshold = probs.amax(dim=-1, keepdim=True) * info.min_ps.unsqueeze(1)
        probs = probs.masked_fill(probs < threshold, 0.0)
    if renormalize:
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


class Sampler:
    """Samples next tokens for a batch; deterministic for a given ``seed`` and sequence of batches.

    Args:
        seed: seeds the generator used by rows without their own (one generator per device, made lazily).
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        """The Sampler's generator on ``device`` (created with ``manual_seed(seed)`` on first use)."""
        g = self._generators.get(device)
        if g is None:
            g = torch.Generator(device=device)
            g.manual_seed(self.seed)
            self._generators[device] = g
        return g

    def sample(self, logits: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
        """Pick one next token per row.

        Args:
            logits: float32 ``[bs, V]`` model logits (grammar-masked with -inf if any); not modified.
            info: from :meth:`SamplingBatchInfo.build` for the same rows.

        Returns:
            int64 ``[bs]`` token ids.

        Raises:
            ValueError: ``logits`` is not ``[info.batch_size, info.vocab_size]``.
        """
        if logits.dim() != 2 or tuple(logits.shape) != (info.batch_size, info.vocab_size):
            raise ValueError(
                f"Sampler.sample: logits shape {tuple(logits.shape)} != "
                f"({info.batch_size}, {info.vocab_size}) of the SamplingBatchInfo"
            )
        x = process_logits(logits, info)
        greedy_ids = argmax_rows(x) if info.any_greedy else None
        if info.all_greedy:
            assert greedy_ids is not None
            return greedy_ids
        probs = filtered_probs(x, info, renormalize=False)
        ids = argmax_rows(probs / self._exponential_noise(probs, info))
        if greedy_ids is not None:
            ids = torch.where(info.is_greedy, greedy_ids, ids)
        return ids

    def _exponential_noise(self, probs: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
        """float32 ``[bs, V]`` i.i.d. Exponential(1) noise; a seeded row's comes from its own generator.

        Rows that are greedy and seeded are left uninitialised (their sample is replaced by the argmax).
        """
        noise = torch.empty_like(probs)
        gen = self.generator(probs.device)
        if info.noise_rows is None:
            noise.exponential_(generator=gen)
        else:
            if info.noise_rows.numel():
                shape = (info.noise_rows.numel(), probs.shape[-1])
                draw = torch.empty(shape, dtype=probs.dtype, device=probs.device).exponential_(generator=gen)
                noise[info.noise_rows] = draw
            for row, g in zip(info.seeded_rows, info.seeded_generators, strict=True):
                noise[row].exponential_(generator=g)
        # exponential_ may return exactly 0; p / 0 would be inf (or nan for a filtered p = 0).
        return noise.clamp_(min=torch.finfo(probs.dtype).tiny)

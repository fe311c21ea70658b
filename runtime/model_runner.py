"""ModelRunner: loads the model, sizes and owns the KV pools, and runs one forward per scheduler step."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import psutil
import torch

from radixgen.radix import ReqToTokenPool, TokenSlotAllocator, TokenToKVPool
from radixgen.runtime.attention import create_attention_backend
from radixgen.runtime.cpu_threads import ThreadGovernor, available_cores
from radixgen.runtime.distributed import TensorParallelGroup
from radixgen.runtime.forward_batch import DecodeStaging, ForwardBatch, ForwardMode
from radixgen.runtime.models import ModelConfig, load_model
from radixgen.runtime.models.loader import resolve_quantization
from radixgen.runtime.server_args import ServerArgs
from radixgen.runtime.tp_worker import TPBroadcast, plan_of

if TYPE_CHECKING:
    from radixgen.runtime.lora.manager import LoRAManager
    from radixgen.runtime.schedule_batch import ScheduleBatch

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# default KV budget when neither max_total_tokens nor kv_cache_budget_bytes is given: this share of the
# memory available at start-up, capped so a small model does not reserve gigabytes it can never use
_DEFAULT_KV_SHARE = 0.25
_DEFAULT_KV_MAX_BYTES = 4 * 2**30


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """``auto`` is float32 on CPU and bfloat16 on CUDA."""
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return _DTYPES[name]


class ModelRunner:
    """Owns the model and its memory.

    Attributes:
        model_config: the parsed Hugging Face config.
        context_len: longest sequence (prompt + output) a request may have, in tokens.
        max_total_tokens: KV pool size in tokens (slots), from ``max_total_tokens`` or a memory budget
            (``kv_cache_budget_bytes``, default a quarter of available RAM, at most 4 GiB) capped at
            ``max_running_requests * context_len`` and at least ``context_len``. An explicit
            ``max_total_tokens`` smaller than the model context caps ``context_len`` to it, so one request
            always fits the pool alone.
        req_to_token_pool / token_to_kv_pool / allocator: the memory pools (radix/).
        lora_manager: the LoRA adapters and their slot buffers (runtime/lora), None when LoRA is off.

    Raises:
        ValueError: from the model config or loader (missing directory, unknown architecture, bad weights).
    """

    def __init__(self, args: ServerArgs, tp_group: TensorParallelGroup | None = None) -> None:
        self.tp = tp_group if tp_group is not None else TensorParallelGroup()
        self.tp_channel = TPBroadcast(self.tp) if self.tp.world_size > 1 else None
        # intra-op threads: fixed with --num-threads; otherwise (CPU) the free cores, re-checked every second —
        # except for tensor-parallel ranks, which compute at the same time: an equal share of the cores each
        self.thread_governor: ThreadGovernor | None = None
        if args.num_threads:
            torch.set_num_threads(args.num_threads)
        elif args.device == "cpu" and self.tp.world_size > 1:
            torch.set_num_threads(max(1, available_cores() // (args.tp_size // args.nnodes)))
        elif args.device == "cpu":
            self.thread_governor = ThreadGovernor(available_cores())
        self.args = args
        self.device = torch.device(args.device)
        self.model_config = ModelConfig.from_pretrained(args.model_path)
        self.dtype = resolve_dtype(args.dtype, args.device)
        # --quantization, else the layout a pre-quantized checkpoint (GGUF, compressed-tensors) maps onto
        self.quantization = resolve_quantization(self.model_config, args.quantization_config, self.dtype)
        self.model = load_model(
            self.model_config,
            dtype=self.dtype,
            load_format=args.load_format,
            device=args.device,
            seed=args.random_seed,
            quantization=self.quantization,
            tp_group=self.tp,
        )
        cfg = self.model_config
        kv_heads = self.model.tp_partition.num_kv_heads  # this rank's KV heads (all of them without TP)
        self.vocab_size = cfg.vocab_size
        context_len = cfg.context_len if args.context_length is None else min(args.context_length, cfg.context_len)
        per_token = TokenToKVPool.bytes_per_token(
            cfg.num_hidden_layers, kv_heads, cfg.head_dim, self.dtype, args.kv_cache_dtype
        )
        if args.max_total_tokens is not None:
            total = args.max_total_tokens
        else:
            budget = args.kv_cache_budget_bytes or min(
                int(psutil.virtual_memory().available * _DEFAULT_KV_SHARE), _DEFAULT_KV_MAX_BYTES
            ) // args.dp_size  # data-parallel replicas share the default budget
            total = min(budget // per_token, args.max_running_requests * context_len)
            total = max(total, context_len)
        if self.tp_channel is not None:  # every rank's pool has rank 0's number of slots (rank 0 hands them out)
            total = self.tp_channel.sync(total)
        self.context_len = min(context_len, total)
        self.max_total_tokens = total
        self.kv_bytes = total * per_token
        self.req_to_token_pool = ReqToTokenPool(args.max_running_requests, self.context_len + 1, self.device)
        self.token_to_kv_pool = TokenToKVPool(
            total, cfg.num_hidden_layers, kv_heads, cfg.head_dim, self.dtype, self.device, args.kv_cache_dtype
        )
        self.allocator = TokenSlotAllocator(total, self.device)
        # the int64 vectors of CPU decode steps, written in place (forward_batch.DecodeStaging)
        self.decode_staging = DecodeStaging() if self.device.type == "cpu" else None
        # default: a quarter of the pool — enough for the decode batch of typical workloads, while the process
        # stays within weights + KV pool + 1 GiB (issue 7) when the whole pool is in use. The dense copy holds
        # K/V in the model dtype, so a quantized pool's quarter is counted in model-dtype bytes (the same number
        # of tokens as an unquantized pool's quarter)
        model_dtype_per_token = TokenToKVPool.bytes_per_token(cfg.num_hidden_layers, kv_heads, cfg.head_dim, self.dtype)
        dense_default = total * model_dtype_per_token // 4
        dense_bytes = dense_default if args.dense_decode_kv_mb is None else args.dense_decode_kv_mb * 2**20
        self.attn_backend = create_attention_backend(
            args.resolved_attention_backend, dense_bytes, not args.disable_shared_prefix_attention
        )
        lora_config = args.lora_config
        self.lora_manager: LoRAManager | None = None
        if lora_config is not None:
            from radixgen.runtime.lora.manager import LoRAManager

            self.lora_manager = LoRAManager(lora_config, cfg, self.dtype, self.device)
        report = self.memory_report()
        logger.info(
            "weights: %s, %.1f MiB",
            ", ".join(f"{n} x {f}" for f, n in report["weight_formats"].items()),
            report["weight_bytes"] / 2**20,
        )
        logger.info(
            "model %s loaded (%s); KV pool %d tokens (%.1f MiB), context %d",
            cfg.architecture,
            self.dtype,
            total,
            self.kv_bytes / 2**20,
            self.context_len,
        )

    def memory_report(self) -> dict[str, Any]:
        """Weight and KV formats and sizes, for ``/get_server_info``: ``weight_formats`` (format → number of
        projections), ``weight_bytes``, ``kv_cache_dtype``, ``kv_bytes_per_token``, ``kv_pool_bytes``,
        ``cpu_decode_path`` (``fused-layers``: decode steps run every layer in one native call; ``cpu-kernels``:
        attention and element-wise kernels from Python; ``torch``) and, with LoRA, ``lora_buffer_bytes`` (the
        adapter slot buffers)."""
        weights = self.model.weight_report()
        lora = {} if self.lora_manager is None else {"lora_buffer_bytes": self.lora_manager.buffer_bytes()}
        return {
            **lora,
            "weight_dtype": str(self.dtype).removeprefix("torch."),
            "checkpoint_weight_format": self.model_config.checkpoint_weight_format,
            "weight_quantization": None if self.quantization is None else self.quantization.name,
            "weight_formats": weights["formats"],
            "weight_bytes": weights["bytes"],
            "kv_cache_dtype": str(self.token_to_kv_pool.dtype).removeprefix("torch."),
            "kv_bytes_per_token": self.kv_bytes // self.max_total_tokens,
            "kv_pool_bytes": self.kv_bytes,
            "cpu_decode_path": self._cpu_decode_path(),
        }

    def _cpu_decode_path(self) -> str:
        """Which CPU decode path this runner's steps take (see ``memory_report``)."""
        if self.model.fused_layers is not None:
            return "fused-layers"
        use_kernel = getattr(self.attn_backend, "use_cpu_kernel", None)
        return "cpu-kernels" if use_kernel is not None and use_kernel(self.token_to_kv_pool) else "torch"

    @torch.inference_mode()
    def forward(self, plan: ScheduleBatch, logits_rows: torch.Tensor) -> torch.Tensor:
        """One forward pass; returns float32 logits ``[len(logits_rows), vocab]`` for the selected tokens.

        Equal to ``run(prepare(plan), logits_rows)``; the scheduler calls the two halves separately to time them.

        Args:
            plan: the scheduler's batch: ``mode``; ``input_ids``, the new tokens of every request, concatenated
                (``sum(extend_lens)``); ``req_pool_indices`` / ``prefix_lens`` / ``extend_lens`` per request
                (``[batch]``); ``out_cache_loc``, int64 ``[sum(extend_lens)]`` KV slots for the new tokens.
            logits_rows: int64 ``[k]`` indices into the new tokens whose logits are wanted.
        """
        return self.run(self.prepare(plan), logits_rows)

    def prepare(self, plan: ScheduleBatch) -> ForwardBatch:
        """Batch preparation: the ForwardBatch tensors, the attention backend's metadata and the rows' LoRA adapters
        (see ``forward``); with tensor parallelism, the plan goes to the other ranks first (runtime/tp_worker.py)."""
        if self.tp_channel is not None:
            self.tp_channel.send(plan_of(self, plan))
        batch = ForwardBatch.build(
            plan.mode,
            plan.input_ids,
            plan.req_pool_indices,
            plan.prefix_lens,
            plan.extend_lens,
            plan.out_cache_loc,
            self.req_to_token_pool,
            self.token_to_kv_pool,
            self.attn_backend,
            self.decode_staging,
        )
        self.attn_backend.init_forward_metadata(batch)
        if self.lora_manager is not None:
            batch.lora = self.lora_manager.prepare([r.lora_name for r in plan.reqs], plan.extend_lens)
        return batch

    @torch.inference_mode()
    def run(self, batch: ForwardBatch, logits_rows: torch.Tensor | None) -> torch.Tensor:
        """The model forward over a prepared batch: float32 logits ``[len(logits_rows), vocab]`` (``None``: every
        new token's row, in order — ``[num_tokens, vocab]``); a decode step whose LM head took each row's argmax
        in passing leaves it in ``batch.greedy_ids``."""
        if self.thread_governor is not None:
            self.thread_governor.maybe_adjust()
        hidden = self.model(batch)  # [num_tokens, hidden]
        if logits_rows is None or (batch.mode == ForwardMode.DECODE and logits_rows.numel() == hidden.shape[0]):
            # a decode step's rows: one per request, in order (ScheduleBatch.build) — no gather
            logits, batch.greedy_ids = self.model.compute_logits_and_argmax(hidden)  # [bs, vocab], [bs] or None
            return logits
        if logits_rows.numel() == 0:
            return torch.empty((0, self.vocab_size), dtype=torch.float32)
        return self.model.compute_logits(hidden[logits_rows.to(hidden.device)])  # [k, vocab]

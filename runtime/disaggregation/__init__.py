"""Prefill/decode disaggregation (DESIGN.md, "Parallelism"): a prefill server computes a prompt's KV and a decode
server, which received the request, pulls that KV over ZeroMQ page by page into its own pool and radix cache, then
generates as if the prompt were cached (DistServe: Zhong et al. 2024; Splitwise: Patel et al. 2024; the flag and
field names follow SGLang's disaggregation: ``--disaggregation-mode``, ``--disaggregation-bootstrap-port``, the
request's ``bootstrap_host`` / ``bootstrap_port``).

Modules: ``transfer`` (wire format, page read/write), ``prefill`` (the prefill server's sender), ``decode`` (the
decode server's receiver), ``router`` (an HTTP front end pairing one prefill and one decode server). This module is
torch-free: ``validate_disaggregation`` runs inside ``ServerArgs``.
"""

from __future__ import annotations

from typing import Any

DISAGGREGATION_MODES = ("null", "prefill", "decode")


def validate_disaggregation(args: Any) -> None:
    """Check the ``disaggregation_*`` fields of a ServerArgs and what they cannot be combined with.

    Raises:
        ValueError: naming the field: an unknown mode, a bad port or timeout; with a mode set, tensor / data
            parallelism, LoRA, speculative decoding, a quantized KV cache (its scales are not transferred) or a
            disabled radix cache (both sides keep the transferred prefix in it).
    """
    if args.disaggregation_mode not in DISAGGREGATION_MODES:
        allowed = ", ".join(DISAGGREGATION_MODES)
        raise ValueError(f"disaggregation_mode: must be one of {allowed}, got {args.disaggregation_mode!r}")
    port = args.disaggregation_bootstrap_port
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"disaggregation_bootstrap_port: must be in 1..65535, got {port!r}")
    t = args.disaggregation_transfer_timeout
    if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t < float("inf"):
        raise ValueError(f"disaggregation_transfer_timeout: must be a positive number of seconds, got {t!r}")
    if args.disaggregation_mode == "null":
        return
    conflicts = (
        ("tp_size", args.tp_size > 1),
        ("dp_size", args.dp_size > 1),
        ("enable_lora", bool(args.enable_lora or args.lora_paths)),
        ("speculative_algorithm", args.speculative_algorithm is not None),
        ("kv_cache_dtype", args.kv_cache_dtype != "auto"),
        ("disable_radix_cache", args.disable_radix_cache),
    )
    for name, on in conflicts:
        if on:
            raise ValueError(f"{name}: not supported together with --disaggregation-mode {args.disaggregation_mode}")

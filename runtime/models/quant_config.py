"""Weight-quantization settings: which linear layers are quantized, to what, and how the choice is named.

Import-light (no torch): ServerArgs validates ``--quantization`` with it, and checkpoint loaders (GGUF,
compressed-tensors) return one to say which layout their pre-quantized weights map onto. The kernels that
apply it live in ``radixgen.runtime.models.linear``.
"""

from __future__ import annotations

from dataclasses import dataclass

QUANTIZATION_METHODS: tuple[str, ...] = ("int8wo", "int4wo", "w8a8_int8")
INT4_GROUP_SIZES: tuple[int, ...] = (32, 64, 128)
DEFAULT_INT4_GROUP_SIZE = 128


@dataclass(frozen=True)
class QuantizationConfig:
    """Quantization of the model's linear layers (torchao's schemes, SGLang's ``--torchao-config`` and
    ``--quantization w8a8_int8``).

    Attributes:
        method: ``int8wo`` (int8 weights, one float scale per output channel; activations in the model dtype),
            ``int4wo`` (int4 weights in groups of ``group_size`` input channels along each row, a scale and zero
            point per group) or ``w8a8_int8`` (``int8wo``'s weights times int8 activations quantized per token at
            run time, accumulated in int32: SGLang's ``w8a8_int8``, torchao's
            ``Int8DynamicActivationInt8WeightConfig``).
        group_size: the int4 group size in input channels (32, 64 or 128); ignored by the int8 methods.
        quantize_lm_head: also quantize the LM head (with tied embeddings, a quantized copy of the table is
            made for the head; the embedding lookup keeps the float table).

    Raises:
        ValueError: an unknown method or group size; the message names ``quantization``.
    """

    method: str
    group_size: int = DEFAULT_INT4_GROUP_SIZE
    quantize_lm_head: bool = False

    def __post_init__(self) -> None:
        if self.method not in QUANTIZATION_METHODS:
            raise ValueError(
                f"quantization: {self.method!r} is not supported (choose from {list(QUANTIZATION_METHODS)}, "
                f"int4wo optionally with a group size: {[f'int4wo-{g}' for g in INT4_GROUP_SIZES]})"
            )
        if self.group_size not in INT4_GROUP_SIZES:
            raise ValueError(f"quantization: int4 group size {self.group_size} not in {list(INT4_GROUP_SIZES)}")

    @classmethod
    def parse(cls, spec: str, quantize_lm_head: bool = False) -> QuantizationConfig:
        """``"int8wo"``, ``"w8a8_int8"``, ``"int4wo"`` (group 128) or ``"int4wo-<group>"`` → a config.

        Raises:
            ValueError: an unknown spec, naming ``quantization``.
        """
        method, _, group = spec.partition("-")
        if group and method == "int4wo":
            if not group.isdigit():
                raise ValueError(f"quantization: bad int4 group size in {spec!r}")
            return cls(method, int(group), quantize_lm_head)
        if group:
            raise ValueError(f"quantization: {spec!r} is not supported (a group size applies to int4wo only)")
        return cls(method, quantize_lm_head=quantize_lm_head)

    @property
    def name(self) -> str:
        """The spec string this config parses from (``int8wo``, ``w8a8_int8``, ``int4wo-64``)."""
        return f"int4wo-{self.group_size}" if self.method == "int4wo" else self.method

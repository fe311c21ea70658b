"""Multi-LoRA serving (issue 20): PEFT adapters over one base model, mixed in one batch (S-LoRA / Punica).

Modules: ``config`` (server and adapter settings, where LoRA attaches; torch-free, the HTTP process reads it),
``adapter`` (reading a PEFT directory), ``manager`` (slots, stacked buffers, references; ``LoRABatchInfo`` used by
the linear layers), ``ops`` (the segmented matmuls on CPU; ``radixgen.kernels.lora`` on CUDA).
"""

"""radixgen: structured-generation LLM programs (the DSL arrives with the frontend issue).

The runtime lives in ``radixgen.runtime``; ``radixgen.runtime.Engine`` is the offline entry point.
"""

__version__ = "0.1.0"

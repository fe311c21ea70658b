"""radixgen.runtime: the serving runtime (scheduler, model runner, models, sampler, offline Engine).

``Engine`` is imported lazily so that light processes (the HTTP server, the detokenizer) can import message
types from this package without loading torch.
"""

from typing import Any

__all__ = ["Engine"]


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from radixgen.runtime.engine import Engine

        return Engine
    raise AttributeError(name)

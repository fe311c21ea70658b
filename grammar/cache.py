"""GrammarManager: synchronous validation, asynchronous compilation, and an LRU cache of compiled grammars.

The scheduler validates a request's constraint when the request arrives (:meth:`GrammarManager.validate`, cheap
and cached, raises GrammarError) and then calls :meth:`GrammarManager.submit`, which returns a
``concurrent.futures.Future`` at once: a cache hit is an already-completed future; a miss is compiled on a
``ThreadPoolExecutor`` (xgrammar and outlines-core release the GIL while compiling, so the scheduler thread keeps
running). Requests asking for a grammar being compiled share its future. The scheduler polls ``future.done()``
each step and never blocks on it.

Cache key: ``(backend, kind, normalised spec)``; at most ``cache_size`` completed entries (least recently used
evicted first). Failed compilations are cached too, so a repeated bad spec fails fast.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from radixgen.grammar.base import CompiledGrammar, GrammarBackend, GrammarError, GrammarLimits
from radixgen.grammar.validation import PreparedSpec, prepare_spec

BackendFactory = Callable[[], GrammarBackend]
#: the grammar backends, the default first
BACKENDS = ("xgrammar", "llguidance", "outlines")


def backend_class(name: str) -> type[GrammarBackend]:
    """The backend class for ``grammar_backend`` (xgrammar | llguidance | outlines).

    Raises:
        GrammarError: unknown name.
    """
    if name == "xgrammar":
        from radixgen.grammar.xgrammar_backend import XGrammarBackend

        return XGrammarBackend
    if name == "llguidance":
        from radixgen.grammar.llguidance_backend import LLGuidanceBackend

        return LLGuidanceBackend
    if name == "outlines":
        from radixgen.grammar.outlines_backend import OutlinesBackend

        return OutlinesBackend
    raise GrammarError(f"grammar_backend: must be one of {', '.join(BACKENDS)}, got {name!r}")


class GrammarManager:
    """Validates, compiles and caches constraints for one backend.

    Args:
        backend: ``"xgrammar"``, ``"llguidance"`` or ``"outlines"``.
        make_backend: builds the backend (tokenizer description included) on first use, on a worker thread.
        limits: size and nesting bounds applied by :meth:`validate`.
        cache_size: completed grammars kept (LRU).
        max_workers: compile threads.
        strict_json_schema: close every object of every JSON schema (``schema_strict``; the server's
            ``--grammar-strict-json-schema``); default: JSON Schema's own semantics.

    Raises:
        GrammarError: unknown backend name.
    """

    def __init__(
        self,
        backend: str,
        make_backend: BackendFactory,
        limits: GrammarLimits | None = None,
        cache_size: int = 256,
        max_workers: int = 2,
        strict_json_schema: bool = False,
    ) -> None:
        self.backend_name = backend
        self.strict_json_schema = strict_json_schema
        self.backend_cls = backend_class(backend)
        self.limits = limits or GrammarLimits()
        self.cache_size = cache_size
        self._make_backend = make_backend
        self._backend: GrammarBackend | None = None
        self._backend_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grammar-compile")
        self._compiled: OrderedDict[tuple[str, str, str], Future[CompiledGrammar]] = OrderedDict()
        self._prepared: OrderedDict[tuple[str, str, bool], PreparedSpec | GrammarError] = OrderedDict()
        self.num_compiles = 0
        self.num_cache_hits = 0

    @property
    def backend(self) -> GrammarBackend:
        """The backend instance (built on first use; thread-safe)."""
        with self._backend_lock:
            if self._backend is None:
                self._backend = self._make_backend()
            return self._backend

    def validate(self, kind: str, spec: object, best_effort: bool = False) -> PreparedSpec:
        """Check a constraint synchronously (no tokenizer needed) and return what will be compiled.

        Raises:
            GrammarError: the message names the field and the problem.
        """
        key = (kind, spec if isinstance(spec, str) else repr(spec), best_effort)
        hit = self._prepared.get(key)
        if hit is None:
            try:
                hit = prepare_spec(
                    kind,
                    spec,
                    self.backend_cls.support,
                    self.backend_cls.check_syntax,
                    self.limits,
                    best_effort,
                    self.strict_json_schema,
                )
            except GrammarError as e:
                hit = e
            self._prepared[key] = hit
            if len(self._prepared) > 4 * self.cache_size:
                self._prepared.popitem(last=False)
        else:
            self._prepared.move_to_end(key)
        if isinstance(hit, GrammarError):
            raise GrammarError(str(hit))
        return hit

    def submit(self, kind: str, spec: object, best_effort: bool = False) -> Future[CompiledGrammar]:
        """The compiled grammar, as a future (completed already on a cache hit). Never blocks.

        Raises:
            GrammarError: validation fails (see :meth:`validate`).
        """
        prepared = self.validate(kind, spec, best_effort)
        key = (self.backend_name, prepared.kind, prepared.spec)
        fut = self._compiled.get(key)
        if fut is not None:
            self._compiled.move_to_end(key)
            self.num_cache_hits += 1
            return fut
        self.num_compiles += 1
        fut = self._executor.submit(self._compile, prepared)
        self._compiled[key] = fut
        self._evict()
        return fut

    def _compile(self, prepared: PreparedSpec) -> CompiledGrammar:
        return self.backend.compile(prepared.kind, prepared.spec)

    def _evict(self) -> None:
        done = [k for k, f in self._compiled.items() if f.done()]
        for k in done[: max(len(self._compiled) - self.cache_size, 0)]:
            del self._compiled[k]

    def shutdown(self) -> None:
        """Stop the compile threads (running compilations finish in the background)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

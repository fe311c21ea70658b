"""LoRAHooks: what the scheduler does for LoRA — bind requests to adapters, keep each batch within the adapter
slots, and carry out load / unload requests (an unload of an adapter in use is answered when its last request ends).
"""

from __future__ import annotations

from radixgen.runtime.errors import InvalidRequestError, LoRAError
from radixgen.runtime.io_struct import LoadLoRAAdapterReq, LoRAUpdateOut, UnloadLoRAAdapterReq
from radixgen.runtime.lora.manager import LoRAManager
from radixgen.runtime.req import Req


class LoRAHooks:
    """The scheduler's side of multi-LoRA serving.

    Args:
        manager: the model runner's ``LoRAManager``, or None when LoRA is off (then a request naming an adapter is
            refused, and load / unload answer with an error).
    """

    def __init__(self, manager: LoRAManager | None) -> None:
        self.manager = manager
        self._replies: list[LoRAUpdateOut] = []

    def bind(self, lora_path: str | None) -> tuple[str | None, int | None]:
        """A new request's adapter: ``(name, uid)``, ``(None, None)`` for the base model; takes a reference.

        Raises:
            InvalidRequestError: LoRA is off (400) or the adapter is not loaded (404), naming ``lora_path``.
        """
        if lora_path is None:
            return None, None
        if self.manager is None:
            raise InvalidRequestError("lora_path", "lora_path: this server serves no LoRA adapters (start it with "
                                      "--enable-lora or --lora-paths)")
        return lora_path, self.manager.acquire(lora_path)

    def unbind(self, req: Req) -> None:
        """A request ended: drop its reference (completing a pending unload answers it)."""
        if req.lora_name is None or self.manager is None:
            return
        if self.manager.release(req.lora_name):
            self._replies.append(LoRAUpdateOut(True, self.manager.loaded()))

    def fits(self, req: Req, batch: set[str]) -> bool:
        """Whether ``req`` can join a batch already using the adapters ``batch`` (``--max-loras-per-batch``);
        adds its adapter to ``batch`` when it can."""
        if req.lora_name is None or req.lora_name in batch:
            return True
        assert self.manager is not None
        if len(batch) >= self.manager.num_slots:
            return False
        batch.add(req.lora_name)
        return True

    def load(self, msg: LoadLoRAAdapterReq) -> LoRAUpdateOut:
        """Load an adapter; the reply carries the error (status, field) when it cannot be."""
        if self.manager is None:
            return LoRAUpdateOut(False, {}, "lora_path: LoRA is off (start the server with --enable-lora)", 400)
        try:
            self.manager.load(msg.lora_name, msg.lora_path)
        except LoRAError as e:
            return LoRAUpdateOut(False, self.manager.loaded(), e.message, e.status, e.param)
        return LoRAUpdateOut(True, self.manager.loaded())

    def unload(self, msg: UnloadLoRAAdapterReq) -> LoRAUpdateOut | None:
        """Unload an adapter: the reply now, or None when it waits for the adapter's requests (``take_replies``)."""
        if self.manager is None:
            return LoRAUpdateOut(False, {}, "lora_name: LoRA is off (start the server with --enable-lora)", 400)
        try:
            done = self.manager.unload(msg.lora_name)
        except LoRAError as e:
            return LoRAUpdateOut(False, self.manager.loaded(), e.message, e.status, e.param)
        return LoRAUpdateOut(True, self.manager.loaded()) if done else None

    def take_replies(self) -> list[LoRAUpdateOut]:
        """Replies to unloads completed since the last call."""
        out, self._replies = self._replies, []
        return out

"""The PD router: one HTTP front end for a prefill server and a decode server (``--disaggregation-mode``).

``python -P -m radixgen.runtime.disaggregation.router --prefill http://H:P --decode http://H:P [--host --port]``

Each ``POST /generate`` goes to the decode server with ``bootstrap_host`` / ``bootstrap_port`` (SGLang's request
fields) naming the prefill server's KV bootstrap address — the prefill server's host and its
``disaggregation_bootstrap_port`` (read once from its ``/get_server_info``, which must report
``disaggregation_mode: prefill``). The decode server pulls the prompt's KV from there (runtime/disaggregation/
decode.py) and generates; the router relays its answer (JSON or SSE) unchanged. SGLang's router sends each request
to both servers with a shared ``bootstrap_room`` instead (a push design); this one needs only the decode side.

Errors (the error body of ``http_common``): the decode server unreachable → 503; the decode server gone in the middle
of a request → 502 naming it (mid-stream: a final SSE ``error`` event); the prefill server unreachable or not a
prefill server → 503; a body that sets ``bootstrap_host`` / ``bootstrap_port`` itself → 400 naming the field.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse

from radixgen.runtime.http_common import install_error_handlers, openai_error, read_json_object, sse_event

logger = logging.getLogger(__name__)


class PDRouter:
    """Pairs one prefill server with one decode server (base URLs like ``http://127.0.0.1:30000``).

    Args:
        timeout: seconds an upstream request may take (httpx read timeout).
    """

    def __init__(self, prefill_url: str, decode_url: str, timeout: float = 600.0) -> None:
        self.prefill_url = prefill_url.rstrip("/")
        self.decode_url = decode_url.rstrip("/")
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=5.0))
        self.bootstrap: tuple[str, int] | None = None

    async def bootstrap_address(self) -> tuple[str, int]:
        """The prefill server's (host, KV bootstrap port), read once from its ``/get_server_info``.

        Raises:
            ConnectionError: the prefill server is unreachable or not a ``--disaggregation-mode prefill`` server.
        """
        if self.bootstrap is None:
            try:
                r = await self.client.get(f"{self.prefill_url}/get_server_info")
                info = r.json() if r.status_code == 200 else {}
            except (httpx.HTTPError, ValueError) as e:
                raise ConnectionError(f"prefill server {self.prefill_url} is unreachable: {e}") from e
            if info.get("disaggregation_mode") != "prefill":
                raise ConnectionError(f"{self.prefill_url} is not a ready --disaggregation-mode prefill server")
            host = urlsplit(self.prefill_url).hostname or "127.0.0.1"
            self.bootstrap = (host, int(info["disaggregation_bootstrap_port"]))
        return self.bootstrap

    async def healthy(self) -> bool:
        """True when both servers answer ``/health`` with 200."""
        try:
            for url in (self.prefill_url, self.decode_url):
                if (await self.client.get(f"{url}/health")).status_code != 200:
                    return False
        except httpx.HTTPError:
            return False
        return True


def create_app(router: PDRouter) -> FastAPI:
    """The router's FastAPI app: ``POST /generate``, ``GET /health``."""
    app = FastAPI(title="radixgen PD router")
    install_error_handlers(app)

    @app.get("/health")
    async def health() -> Response:
        if await router.healthy():
            return Response(status_code=200)
        return openai_error(503, "the prefill or the decode server is not ready")

    @app.post("/generate")
    async def generate(request: Request) -> Response:
        body = await read_json_object(request)
        for name in ("bootstrap_host", "bootstrap_port"):
            if body.get(name) is not None:
                return openai_error(400, f"{name}: set by the PD router; do not send it", name)
        try:
            body["bootstrap_host"], body["bootstrap_port"] = await router.bootstrap_address()
        except ConnectionError as e:
            return openai_error(503, str(e))
        url = f"{router.decode_url}/generate"
        upstream = router.client.build_request("POST", url, json=body)
        try:
            resp = await router.client.send(upstream, stream=True)
        except httpx.ConnectError as e:
            return openai_error(503, f"decode server {router.decode_url} is unreachable: {e}")
        except httpx.HTTPError as e:
            return openai_error(502, f"decode server {router.decode_url} failed: {type(e).__name__}: {e}")
        media = resp.headers.get("content-type", "application/json")
        if not media.startswith("text/event-stream"):
            try:
                content = await resp.aread()
            except httpx.HTTPError as e:
                return openai_error(502, f"decode server {router.decode_url} failed: {type(e).__name__}: {e}")
            finally:
                await resp.aclose()
            return Response(content, status_code=resp.status_code, media_type=media)
        return StreamingResponse(_relay(resp, router.decode_url), status_code=resp.status_code, media_type=media)

    return app


async def _relay(resp: httpx.Response, decode_url: str) -> AsyncIterator[bytes]:
    """An upstream SSE body, chunk by chunk; a final ``error`` event if the decode server goes away."""
    try:
        async for chunk in resp.aiter_raw():
            yield chunk
    except httpx.HTTPError as e:
        message = f"decode server {decode_url} failed: {type(e).__name__}: {e}"
        yield sse_event({"error": {"message": message, "type": "server_error", "param": None, "code": 502}})
    finally:
        await resp.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the router until SIGINT / SIGTERM; returns the exit status."""
    import uvicorn

    parser = argparse.ArgumentParser(description="radixgen prefill/decode router")
    parser.add_argument("--prefill", required=True, help="base URL of the --disaggregation-mode prefill server")
    parser.add_argument("--decode", required=True, help="base URL of the --disaggregation-mode decode server")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="listen port (default: 8000)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per upstream request (default: 600)")
    ns = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.info("PD router: prefill %s, decode %s", ns.prefill, ns.decode)
    app = create_app(PDRouter(ns.prefill, ns.decode, ns.timeout))
    uvicorn.run(app, host=ns.host, port=ns.port, log_config=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

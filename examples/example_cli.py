"""What every example's command line shares: ``--model`` / ``--url`` / ``--chat-template`` and opening the backend."""

from __future__ import annotations

import argparse
from pathlib import Path

import radixgen as rg

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
DEFAULT_MODEL = SHARED / "models" / "stories260K"


def example_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser with the shared options; the description is the first line of ``doc`` (the example's docstring)."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0] if doc else None)
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model directory (default: stories260K)")
    parser.add_argument("--url", help="use a running server at this URL instead of starting one")
    parser.add_argument("--chat-template", default="chatml", help="built-in template name, or 'server'")
    return parser


def open_backend(args: argparse.Namespace) -> rg.Backend:
    """``--url``: a running server; otherwise start a local one on ``--model`` (stopped by the context manager)."""
    template = None if args.chat_template == "server" else args.chat_template
    if args.url:
        return rg.RuntimeEndpoint(args.url, chat_template=template)
    print(f"starting a radixgen runtime on {Path(args.model).resolve()} ...")
    return rg.Runtime(args.model, chat_template=template)

"""The ``radixgen`` console script: ``radixgen COMMAND [flags]``.

``radixgen --help`` lists the commands with one line each; ``radixgen COMMAND --help`` gives a command's flags.
Server and engine flags are those of ``ServerArgs`` (one flag per field, see ``server_args.add_cli_args``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


def _serve(argv: list[str], prog: str) -> int:
    from radixgen.runtime.launch_server import main as serve_main

    return serve_main(argv, prog=prog)


def _generate(argv: list[str], prog: str) -> int:
    from radixgen.runtime.server_args import add_cli_args

    parser = argparse.ArgumentParser(prog=prog, description="Generate for one prompt with the in-process Engine.")
    parser.add_argument("--prompt", required=True, help="the prompt text")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate at most (default: 128)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default: 0.0)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: none)")
    parser.add_argument("--stream", action="store_true", help="print the text as it is generated")
    add_cli_args(parser)
    ns = vars(parser.parse_args(argv))
    prompt, stream = ns.pop("prompt"), ns.pop("stream")
    sampling = {k: ns.pop(k) for k in ("max_new_tokens", "temperature", "seed")}
    if sampling["seed"] is None:
        del sampling["seed"]
    from radixgen.runtime import Engine

    try:
        engine = Engine(ns.pop("model_path"), **ns)
    except ValueError as e:
        parser.error(str(e))
    with engine:
        try:
            if stream:
                printed = 0
                for chunk in engine.generate(prompt, sampling, stream=True):  # type: ignore[union-attr]
                    print(chunk["text"][printed:], end="", flush=True)
                    printed = len(chunk["text"])
                print()
            else:
                out = engine.generate(prompt, sampling)
                assert isinstance(out, dict)
                print(out["text"])
        except ValueError as e:
            parser.error(str(e))
    return 0


def _env(argv: list[str], prog: str) -> int:
    from radixgen.runtime.env_report import env_report

    parser = argparse.ArgumentParser(prog=prog, description="Print the versions radixgen runs with.")
    parser.add_argument("--diff-lock", metavar="FILE", help="also list the packages whose version differs from FILE")
    ns = parser.parse_args(argv)
    try:
        print(env_report(ns.diff_lock))
    except FileNotFoundError as e:
        parser.error(f"--diff-lock: {e}")
    return 0


# name → (one-line help, handler(argv, prog) → exit status)
COMMANDS: dict[str, tuple[str, Callable[[list[str], str], int]]] = {
    "serve": ("start the OpenAI/SGLang-compatible HTTP server", _serve),
    "generate": ("generate for one prompt offline (in-process Engine)", _generate),
    "env": ("print Python, radixgen and dependency versions", _env),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: it only lists the commands (each command parses its own flags)."""
    parser = argparse.ArgumentParser(prog="radixgen", description="radixgen: structured-generation LLM serving.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (help_text, _) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    parser.epilog = "Run 'radixgen COMMAND --help' for the flags of a command."
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to its command; returns the exit status (2 for a usage error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        return COMMANDS[args[0]][1](args[1:], f"radixgen {args[0]}")
    parser = build_parser()
    if not args:
        parser.print_help()
        return 2
    parser.parse_args(args)  # prints help (exit 0) or the usage error (exit 2)
    return 2


if __name__ == "__main__":
    sys.exit(main())

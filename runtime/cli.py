"""The ``radixgen`` console script.

``radixgen serve --model PATH [flags]`` starts the HTTP server (see ``radixgen.runtime.launch_server``); the
flags are those of ServerArgs (``radixgen serve --help``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

_USAGE = "usage: radixgen serve --model PATH [flags]   (radixgen serve --help lists the flags)"


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch the subcommand; returns the process exit status (2 for a usage error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "serve":
        from radixgen.runtime.launch_server import main as serve_main

        return serve_main(rest, prog="radixgen serve")
    print(f"radixgen: unknown command {command!r}\n{_USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

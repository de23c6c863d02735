"""The ``earwitness`` command: one entry point, one subcommand per job.

    earwitness sim       the whole network on this machine (simulated town)
    earwitness server    the central server            (--config server.toml)
    earwitness node      a field node                  (--config node.toml)
    earwitness locate    locate shots in recordings    (PATH to a recording set)
    earwitness keys      server and node keys (CURVE)
    earwitness audit     verify the tamper-evident record
    earwitness review    candidates for review; verdicts on candidates and shots
    earwitness import-shotspotter   convert ShotSpotter's public test data
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "sim": ("sim.main", "run the server and simulated nodes on this machine"),
    "server": ("server.main", "run the central server"),
    "node": ("node.main", "run a field node"),
    "locate": ("server.locate", "locate shots in a recording set"),
    "keys": ("server.keys", "create and manage server/node keys"),
    "audit": ("server.audit", "verify the tamper-evident record"),
    "review": ("server.review", "list candidates for review; record verdicts on candidates and shots"),
    "import-shotspotter": ("server.import_shotspotter", "convert ShotSpotter's Pittsburgh data to recording sets"),
}


def usage() -> str:
    lines = ["usage: earwitness COMMAND [options]   (earwitness COMMAND --help for more)", "", "commands:"]
    lines += [f"  {name:<20} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from node.pipeline import VERSION
        print(f"earwitness {VERSION}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"earwitness: unknown command {cmd!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[cmd][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

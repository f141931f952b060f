"""The `targetclip` command line (also `python -m targetclip_core`).

Each command family module registers its commands with `add_parsers(subparsers)` and maps each command
name to its handler in `COMMANDS`; this module only strings the families together, so it names no command.
"""

from __future__ import annotations

import argparse
import sys

from targetclip_core.cli import bench, essence, generate, metrics, photo, sat3d, train
from targetclip_core.errors import TargetCLIPError

# In this order in `targetclip --help`.
FAMILIES = (generate, essence, photo, bench, train, metrics, sat3d)


def build_parser() -> argparse.ArgumentParser:
    """The `targetclip` parser: every family's commands, as subcommands."""
    p = argparse.ArgumentParser(prog="targetclip", description="TargetCLIP essence transfer and StyleGAN2 tools.")
    sub = p.add_subparsers(dest="command", required=True)
    for family in FAMILIES:
        family.add_parsers(sub)
    return p


def command_table() -> dict:
    """Command name -> handler(args) -> exit code, merged from the families' COMMANDS."""
    table: dict = {}
    for family in FAMILIES:
        clash = table.keys() & family.COMMANDS.keys()
        if clash:
            raise RuntimeError(f"{family.__name__} registers commands another family has: {sorted(clash)}")
        table.update(family.COMMANDS)
    return table


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return command_table()[args.command](args)
    except TargetCLIPError as e:
        print(f"targetclip: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("targetclip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

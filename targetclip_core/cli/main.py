"""The `targetclip` command line (also `python -m targetclip_core`).

Each command family module registers its commands with `add_parsers(subparsers)` and maps each command
name to its handler in `COMMANDS`; this module only strings the families together, so it names no command.
"""

from __future__ import annotations

import sys

from targetclip_core.cli import bench, directions, essence, generate, metrics, photo, sat3d, train, video
from targetclip_core.cli.args import ArgumentParser, one_line_warnings, run_command

# In this order in `targetclip --help`.
FAMILIES = (generate, essence, directions, photo, video, bench, train, metrics, sat3d)


def build_parser() -> ArgumentParser:
    """The `targetclip` parser: every family's commands, as subcommands (values like -30,0 taken as values)."""
    p = ArgumentParser(prog="targetclip", description="TargetCLIP essence transfer, SAT3D and StyleGAN2/StyleGAN3/EG3D tools.")
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
    """Parse `argv` (a usage error exits 2) and run its command; a user's mistake ends as one error line, exit 2,
    and each warning is one `targetclip: warning:` line."""
    args = build_parser().parse_args(argv)
    with one_line_warnings():
        return run_command(command_table()[args.command], args)


if __name__ == "__main__":
    sys.exit(main())

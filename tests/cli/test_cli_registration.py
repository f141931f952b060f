"""How the `targetclip` command families register: one add_parsers + COMMANDS table per module, none named by main."""

from __future__ import annotations

import argparse
import ast
import inspect

import pytest

from targetclip_core.cli import main as cli_main
from targetclip_core.cli.main import FAMILIES, build_parser, command_table

COMMANDS_IN_HELP_ORDER = (
    "convert", "download", "render", "optimize", "apply", "directions", "invert", "encode", "edit", "edit-video", "animate",
    "bench", "train-encoder",
    "score", "eval", "interpret", "fid", "sat3d-train", "sat3d-transfer",
)


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return list(sub.choices)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_every_family_has_add_parsers_and_a_command_table(family):
    assert callable(family.add_parsers)
    assert isinstance(family.COMMANDS, dict) and family.COMMANDS
    assert all(callable(handler) for handler in family.COMMANDS.values())
    # the family's table covers exactly the commands it registers
    parser = argparse.ArgumentParser()
    family.add_parsers(parser.add_subparsers(dest="command"))
    assert sorted(_subcommands(parser)) == sorted(family.COMMANDS)


def test_every_subcommand_has_exactly_one_handler():
    names = _subcommands(build_parser())
    assert len(names) == len(set(names))
    assert sorted(names) == sorted(command_table())
    owners = {name: [f.__name__ for f in FAMILIES if name in f.COMMANDS] for name in names}
    assert all(len(o) == 1 for o in owners.values()), owners


def test_help_lists_the_commands_in_order(capsys):
    assert tuple(_subcommands(build_parser())) == COMMANDS_IN_HELP_ORDER
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "{" + ",".join(COMMANDS_IN_HELP_ORDER) + "}" in out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("    ") and not line.startswith("     ")]
    assert tuple(listed) == COMMANDS_IN_HELP_ORDER


def test_main_names_no_command():
    tree = ast.parse(inspect.getsource(cli_main))
    strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert not strings & set(COMMANDS_IN_HELP_ORDER)

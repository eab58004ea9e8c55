"""README tells a newcomer the truth: every setting is listed, every command shown exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from workers.cli import app
from workers.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme() -> None:
    missing = [
        f"FLEET_{name.upper()}"
        for name in Settings.model_fields
        if f"`FLEET_{name.upper()}`" not in README
    ]
    assert missing == [], "add them to README's settings table"


def _commands_shown() -> list[list[str]]:
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip().rstrip("&").strip()
            if "fleet " not in line:
                continue
            words = shlex.split(line[line.index("fleet ") :])
            path = [w for w in words[1:3] if re.fullmatch(r"[a-z][a-z-]*", w)]
            commands.append(["fleet", *path])
    return commands


@pytest.mark.parametrize("command", _commands_shown(), ids=" ".join)
def test_every_command_in_the_readme_exists(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command[1:], "--help"])
    assert result.exit_code == 0, result.output

"""Global options (--config, --server, -v) are accepted before the command and after it, at any depth."""

from __future__ import annotations

import pytest

from gateway.cli import parse_args


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "X", "run"],
        ["run", "--config", "X"],
        ["run", "--config=X", "--only", "http"],
        ["--config", "other", "run", "--config", "X"],  # the later one wins, as with any repeated option
        ["audit", "verify", "--config", "X"],
        ["audit", "--config", "X", "verify"],
        ["token", "verify", "--config", "X", "TOKEN"],
        ["sessions", "--config", "X", "--live"],
    ],
)
def test_config_before_or_after(argv: list[str]) -> None:
    """Every spelling users type reaches the command with the same config."""
    assert parse_args(argv).config == "X"


def test_config_before_is_kept_by_the_command() -> None:
    """A command not given --config does not reset the one given before it."""
    args = parse_args(["--config", "X", "audit", "verify"])
    assert (args.config, args.audit_cmd) == ("X", "verify")


@pytest.mark.parametrize(
    "argv",
    [
        ["--server", "http://gw:8080", "requests"],
        ["requests", "--server", "http://gw:8080"],
        ["--server", "http://gw:8080", "token", "r_123"],  # the `token REQ` shorthand skips the option's value
        ["token", "r_123", "--server", "http://gw:8080"],
        ["--server", "http://gw:8080", "revoke", "g_1", "--reason", "INC-1"],
        ["kill", "s_1", "--server", "http://gw:8080"],
    ],
)
def test_server_before_or_after(argv: list[str]) -> None:
    """--server works on either side of the API commands."""
    assert parse_args(argv).server == "http://gw:8080"


@pytest.mark.parametrize("argv", [["-v", "sessions"], ["sessions", "-v"], ["audit", "export", "--verbose"]])
def test_verbose_before_or_after(argv: list[str]) -> None:
    """-v works on either side."""
    assert parse_args(argv).verbose is True


def test_defaults_when_given_nowhere() -> None:
    """No global option: the same defaults as before (config from $GATEWAY_CONFIG or ./gateway.toml)."""
    args = parse_args(["sessions"])
    assert (args.config, args.server, args.verbose) == (None, None, False)


def test_token_shorthand_still_expands() -> None:
    """`gateway --config X token REQ` is still `token get REQ`."""
    args = parse_args(["--config", "X", "token", "r_1"])
    assert (args.token_cmd, args.id, args.config) == ("get", "r_1", "X")


def test_ssh_arguments_after_the_target_stay_ssh_arguments() -> None:
    """What follows the target of `gateway ssh` belongs to ssh (-v there is ssh's verbose, not ours)."""
    args = parse_args(["ssh", "web-1", "-v", "true"])
    assert args.args == ["-v", "true"]
    assert args.verbose is False

"""The terminal model shared by the SSH front end and the reviewer side: escape parser, line editor, screen rows."""

from gateway.terminal.keys import InputLine
from gateway.terminal.lines import CommandTracker, Enter, rebuild
from gateway.terminal.screen import MAX_LINE, EchoLine, LineScreen
from gateway.terminal.vt import VTParser

__all__ = ["MAX_LINE", "CommandTracker", "EchoLine", "Enter", "InputLine", "LineScreen", "VTParser", "rebuild"]

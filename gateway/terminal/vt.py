"""The one terminal escape parser: a streaming tokenizer of terminal text (output, or what a reviewer is shown).

Tokens are text, the C0 controls that move the cursor (LF, CR, TAB, BS), CSI sequences and ESC sequences.
Strings (OSC, DCS, SOS, PM, APC, also as 8-bit controls) and every other control are consumed and dropped:
nothing that reads tokens can be made to act on them. Used by the SSH front end's echo model
(`gateway.terminal.screen.EchoLine`) and by the reviewer side (`gateway.review.sanitize`).
"""

from __future__ import annotations

import re

# Token kinds produced by the parser.
TEXT, CTL, CSI, ESC = "text", "ctl", "csi", "esc"
Token = tuple[str, str, str, str]  # (kind, params or text, intermediates, final)

# C0, DEL, C1, and the bidi embedding/override/isolate controls (they reorder what follows on terminals
# that implement bidi, so "nimda" can show as "admin"): never text.
_SPECIAL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_STRING_END = re.compile(r"[\x07\x18\x1a\x1b\x9c]")
_MAX_CSI = 64  # a longer control sequence is malformed or hostile: it is dropped whole

_GROUND, _ESCAPE, _ESC_INTER, _CSI, _STRING = range(5)
_STRING_INTRODUCERS = {"]", "P", "X", "^", "_"}  # OSC, DCS, SOS, PM, APC
_C1_STRINGS = {"\x90", "\x98", "\x9d", "\x9e", "\x9f"}  # the same, as 8-bit controls
DIGIT_PARAMS = re.compile(r"[0-9;]*")
"""CSI parameters that are plain numbers (no private-mode marker)."""


class VTParser:
    """Streaming tokenizer: text, C0 controls, CSI and ESC sequences; strings and C1 are dropped."""

    def __init__(self) -> None:
        self._state = _GROUND
        self._buf = ""  # the partial CSI / ESC sequence collected so far

    def feed(self, data: str) -> list[Token]:
        """Tokenize `data`; an unfinished sequence is kept for the next call."""
        tokens: list[Token] = []
        i, n = 0, len(data)
        while i < n:
            state = self._state
            if state == _GROUND:
                m = _SPECIAL.search(data, i)
                end = m.start() if m else n
                if end > i:
                    tokens.append((TEXT, data[i:end], "", ""))
                if m is None:
                    break
                i = end + 1
                self._ground_control(data[end], tokens)
            elif state == _STRING:
                m = _STRING_END.search(data, i)
                if m is None:
                    break  # the rest of this chunk is inside the string: discard it
                i = m.end()
                self._state = _GROUND
                if m.group() == "\x1b":  # ESC ends the string and starts a new sequence (xterm)
                    self._state, self._buf = _ESCAPE, ""
            else:
                i = self._sequence_char(data[i], tokens, i)
        return tokens

    def _ground_control(self, ch: str, tokens: list[Token]) -> None:
        """Handle one control character met in ground state."""
        if ch == "\x1b":
            self._state, self._buf = _ESCAPE, ""
        elif ch == "\x9b":
            self._state, self._buf = _CSI, ""
        elif ch in _C1_STRINGS:
            self._state = _STRING
        elif ch in "\n\r\t\b":
            tokens.append((CTL, ch, "", ""))
        # every other C0/C1 control (BEL, SO/SI, NUL, DEL, 8-bit ones) is dropped

    def _sequence_char(self, ch: str, tokens: list[Token], i: int) -> int:
        """Advance an ESC or CSI sequence by one character; returns the next index to read."""
        code = ord(ch)
        state = self._state
        if ch == "\x1b" or code < 0x20 or code > 0x7E:
            # A control or non-ASCII character aborts the sequence; it is then read in ground state.
            self._state, self._buf = _GROUND, ""
            return i
        if state == _ESCAPE:
            if ch == "[":
                self._state, self._buf = _CSI, ""
            elif ch in _STRING_INTRODUCERS:
                self._state = _STRING
            elif 0x20 <= code <= 0x2F:
                self._state, self._buf = _ESC_INTER, ch
            else:
                tokens.append((ESC, "", "", ch))
                self._state = _GROUND
        elif state == _ESC_INTER:
            if 0x20 <= code <= 0x2F:
                self._buf += ch
            else:
                tokens.append((ESC, "", self._buf, ch))
                self._state, self._buf = _GROUND, ""
        else:  # _CSI
            if 0x40 <= code <= 0x7E:
                buf = self._buf
                if len(buf) <= _MAX_CSI:
                    split = len(buf.rstrip(" !\"#$%&'()*+,-./"))
                    tokens.append((CSI, buf[:split], buf[split:], ch))
                self._state, self._buf = _GROUND, ""
            else:
                self._buf = self._buf + ch if len(self._buf) <= _MAX_CSI else self._buf
        return i + 1

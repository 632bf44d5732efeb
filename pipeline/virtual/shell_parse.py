"""Lexer and parser of the virtual device shell: POSIX-sh words and operators, nothing that could reach a host shell.

Words are lexed like POSIX sh (single/double quotes, backslashes, ``$VAR``/``${VAR}``/``$$``/``$?``,
``&&``/``||``/``;``, ``> >> < 2> 2>&1``); command substitution, pipes and ``&`` are refused
(:class:`ShellSyntaxError`, reported as ``sh: …`` with status 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ASSIGN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")


class ShellSyntaxError(Exception):
    """A command line the virtual shell cannot (or will not) parse; reported as ``sh: …`` with status 2."""


Part = tuple[str, str, bool]  # ("lit"|"var", text, quoted)


@dataclass
class Word:
    parts: list[Part]


@dataclass
class Op:
    text: str


@dataclass
class Command:
    words: list[Word] = field(default_factory=list)
    redirects: list[tuple[str, Word | None]] = field(default_factory=list)


REDIRECT_OPS = {">", ">>", "<", "2>", "2>>", "2>&1", ">&2", "1>", "1>>", "1>&2"}


def lex(text: str) -> list[Word | Op]:
    """Split a command line into words (with quoting info) and operators, like POSIX sh."""
    out: list[Word | Op] = []
    cur: list[Part] | None = None
    buf: list[str] = []
    i, n = 0, len(text)

    def flush_lit() -> None:
        nonlocal cur
        if buf:
            (cur := cur if cur is not None else []).append(("lit", "".join(buf), False))
            buf.clear()

    def add(kind: str, s: str, quoted: bool) -> None:
        nonlocal cur
        flush_lit()
        (cur := cur if cur is not None else []).append((kind, s, quoted))

    def end_word() -> None:
        nonlocal cur
        flush_lit()
        if cur is not None:
            out.append(Word(cur))
            cur = None

    def var_at(j: int, quoted: bool) -> int:
        """Parse after a '$' at j; returns the index after the expansion."""
        if j + 1 >= n:
            add("lit", "$", quoted)
            return j + 1
        c = text[j + 1]
        if c in "$?#!":
            add("var", c, quoted)
            return j + 2
        if c == "(":
            raise ShellSyntaxError("command substitution $(...) is not supported by the virtual device shell")
        if c == "{":
            end = text.find("}", j + 2)
            if end < 0:
                raise ShellSyntaxError("bad substitution: missing '}'")
            name = text[j + 2:end]
            if not (_NAME.fullmatch(name) or name in ("$", "?")):
                raise ShellSyntaxError(f"${{{name}}}: bad substitution")
            add("var", name, quoted)
            return end + 1
        m = _NAME.match(text, j + 1)
        if m:
            add("var", m.group(0), quoted)
            return m.end()
        if c.isdigit():
            add("var", c, quoted)
            return j + 2
        add("lit", "$", quoted)
        return j + 1

    while i < n:
        c = text[i]
        if c in " \t":
            end_word()
            i += 1
        elif c == "\n":
            end_word()
            out.append(Op(";"))
            i += 1
        elif c == "#" and cur is None and not buf:
            nl = text.find("\n", i)
            i = n if nl < 0 else nl
        elif c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ShellSyntaxError("unterminated quoted string")
            add("lit", text[i + 1:end], True)
            i = end + 1
        elif c == '"':
            add("lit", "", True)  # "" is an (empty) word
            i += 1
            seg: list[str] = []
            while True:
                if i >= n:
                    raise ShellSyntaxError("unterminated quoted string")
                d = text[i]
                if d == '"':
                    i += 1
                    break
                if d == "\\" and i + 1 < n and text[i + 1] in '$`"\\\n':
                    if text[i + 1] != "\n":
                        seg.append(text[i + 1])
                    i += 2
                elif d == "$":
                    if seg:
                        add("lit", "".join(seg), True)
                        seg.clear()
                    i = var_at(i, True)
                elif d == "`":
                    raise ShellSyntaxError("command substitution `...` is not supported by the virtual device shell")
                else:
                    seg.append(d)
                    i += 1
            if seg:
                add("lit", "".join(seg), True)
        elif c == "\\":
            if i + 1 < n:
                if text[i + 1] != "\n":
                    add("lit", text[i + 1], True)
                i += 2
            else:
                buf.append("\\")
                i += 1
        elif c == "$":
            i = var_at(i, False)
        elif c == "`":
            raise ShellSyntaxError("command substitution `...` is not supported by the virtual device shell")
        elif c in ";&|<>":
            prefix = ""
            if c in "<>" and cur is None and len(buf) == 1 and buf[0] in "12":
                prefix = buf.pop()
            end_word()
            two = text[i:i + 2]
            if two in ("&&", "||", ">>", ";;"):
                op, i = two, i + 2
            elif text[i:i + 3] in (">&1", ">&2"):
                op, i = text[i:i + 3], i + 3
            else:
                op, i = c, i + 1
            out.append(Op(prefix + op))
        else:
            buf.append(c)
            i += 1
    end_word()
    return out


def parse(tokens: list[Word | Op]) -> list[list[tuple[str, Command]]]:
    """Tokens → list of and-or lists: each is [(connector, command)] with connector '' / '&&' / '||'."""
    program: list[list[tuple[str, Command]]] = []
    andor: list[tuple[str, Command]] = []
    cmd = Command()
    connector = ""
    need_cmd = False  # after && / ||
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if isinstance(tok, Word):
            cmd.words.append(tok)
        elif tok.text in REDIRECT_OPS:
            if tok.text in ("2>&1", ">&2", "1>&2"):
                cmd.redirects.append((tok.text, None))
            else:
                nxt = tokens[i + 1] if i + 1 < len(tokens) else None
                if not isinstance(nxt, Word):
                    raise ShellSyntaxError(f"syntax error: {tok.text} needs a file name")
                i += 1
                cmd.redirects.append((tok.text, nxt))
        elif tok.text in ("&&", "||", ";"):
            if cmd.words or cmd.redirects:
                andor.append((connector, cmd))
                cmd, need_cmd = Command(), False
            elif need_cmd or (tok.text != ";" and not andor):
                raise ShellSyntaxError(f"syntax error: unexpected {tok.text!r}")
            if tok.text == ";":
                if andor:
                    program.append(andor)
                andor, connector = [], ""
            else:
                connector, need_cmd = tok.text, True
        elif tok.text == "|":
            raise ShellSyntaxError("pipes are not supported by the virtual device shell")
        elif tok.text == "&":
            raise ShellSyntaxError("background jobs (&) are not supported by the virtual device shell")
        else:
            raise ShellSyntaxError(f"syntax error: unexpected {tok.text!r}")
        i += 1
    if cmd.words or cmd.redirects:
        andor.append((connector, cmd))
    elif need_cmd:
        raise ShellSyntaxError(f"syntax error: command expected after {connector}")
    if andor:
        program.append(andor)
    return program


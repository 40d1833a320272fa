"""The user's notes in one of our events: the body as plain text, without the block we generate.

Our body (``shared.rules.event_render``) is the activity's description, then our block (contact,
company, deal, the link back to the CRM) between two marker lines::

    Llevar la lista de precios.
    ──────── CRM ────────
    Contacto: Ana Pérez · ana@acme.example
    Abrir en el CRM
    ─────────────────────

**Why text markers.** Outlook does not keep our HTML: Exchange wraps it in its own
``<html><head><meta …><style>…</head><body>``, Outlook on the web turns ``<div>``/``<p>`` into
``<p class="elementToProof"><span style=…>`` (OfficeDev/office-js#5482), ids come back prefixed with
``x_`` (OfficeDev/office-js#828) and Outlook for Windows saves Word HTML (``MsoNormal``, ``<o:p>``,
``&nbsp;`` paragraphs). Any mark in the markup (an id, a class, a data attribute, a comment) can be
renamed or dropped; the visible text survives every one of those rewrites. So the body is read as
text (``html_to_text``: the way a browser lays it out, ``<head>``/``<style>`` ignored, block
elements and ``<br>`` as line breaks, whitespace and ``&nbsp;`` collapsed) and the block is found
by its two marker lines. Both our own render and Outlook's rewrite of it read back to the same
text, so comparing them never shows a change that the user did not make.

**Notes** = the lines before the start marker plus any the user typed after the end marker. A
body without the start marker (the user deleted our block) is all notes (a stray end marker line
is dropped). Blank-line runs become one blank line; lines are trimmed; leading and trailing blank
lines go.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

BLOCK_START = "──────── CRM ────────"
BLOCK_END = "─────────────────────"
_START = re.compile(r"^─{3,}\s*CRM\s*─{3,}$")
_END = re.compile(r"^─{3,}$")
# The Teams block Outlook appends to an online meeting's body (a rule of underscores, a line naming
# Microsoft Teams, the join link and dial-in lines, often a closing rule): Outlook's, not the user's notes.
_RULE = re.compile(r"^_{10,}$")
_TEAMS = re.compile(r"Microsoft Teams", re.IGNORECASE)
_BLOCK_TAGS = frozenset(
    "address article aside blockquote center dd div dl dt fieldset figure footer form h1 h2 h3 h4 h5 h6 "
    "header hr li main nav ol p pre section table tbody thead tfoot tr ul".split()
)
_HIDDEN_TAGS = frozenset(("head", "style", "script", "title", "xml", "template"))
_CELL_TAGS = frozenset(("td", "th"))
_HTML_SPACE = re.compile(r"[ \t\r\n\f]+")


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.line: list[str] = []
        self.hidden = 0

    def _push(self) -> None:
        self.lines.append("".join(self.line))
        self.line = []

    def _soft_break(self) -> None:
        """End the current line if it holds anything (a block boundary never makes a blank line)."""
        if "".join(self.line).strip(" "):
            self._push()
        else:
            self.line = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN_TAGS:
            self.hidden += 1
        elif self.hidden:
            return
        elif tag == "br":
            self._push()
        elif tag in _BLOCK_TAGS:
            self._soft_break()
        elif tag in _CELL_TAGS and self.line:
            self.line.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _HIDDEN_TAGS:
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN_TAGS:
            self.hidden = max(0, self.hidden - 1)
        elif not self.hidden and tag in _BLOCK_TAGS:
            self._soft_break()

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.line.append(_HTML_SPACE.sub(" ", data))

    def text(self) -> str:
        self.close()
        self._soft_break()
        return normalise("\n".join(self.lines))


def html_to_text(content: str) -> str:
    parser = _Text()
    parser.feed(content)
    return parser.text()


def normalise(text: str) -> str:
    """Trimmed lines, ``&nbsp;`` and space runs as one space, at most one blank line in a row, no
    blank lines around."""
    lines = [re.sub(r"[ \t\u00a0]+", " ", line).strip() for line in text.replace("\r\n", "\n").split("\n")]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out)


def body_text(body: Any) -> str:
    """A Graph ``itemBody`` as text: HTML laid out, text as it is."""
    if not isinstance(body, dict):
        return ""
    content = str(body.get("content") or "")
    if str(body.get("contentType") or "text").lower() == "html":
        return html_to_text(content)
    return normalise(content)


@dataclass(frozen=True, slots=True)
class SplitBody:
    notes: str  # the user's notes (normalised)
    block: str  # our block's text between the markers ("" when the start marker is gone)
    marked: bool  # the start marker was found


def _without_teams_block(lines: list[str]) -> list[str]:
    """``lines`` without the Teams join block (from its opening rule to its closing one, or the end)."""
    for i, line in enumerate(lines):
        if not _RULE.fullmatch(line):
            continue
        following = next((x for x in lines[i + 1 :] if x), "")
        if not _TEAMS.search(following):
            continue
        close = next((j for j in range(i + 1, len(lines)) if _RULE.fullmatch(lines[j])), len(lines) - 1)
        return lines[:i] + _without_teams_block(lines[close + 1 :])
    return lines


def split_body(text: str) -> SplitBody:
    lines = _without_teams_block(text.split("\n"))
    start = next((i for i, line in enumerate(lines) if _START.fullmatch(line)), None)
    if start is None:
        return SplitBody(normalise("\n".join(line for line in lines if not _END.fullmatch(line))), "", False)
    end = next((i for i in range(start + 1, len(lines)) if _END.fullmatch(lines[i])), len(lines))
    parts = (normalise("\n".join(lines[:start])), normalise("\n".join(lines[end + 1 :])))
    notes = "\n".join(part for part in parts if part)
    return SplitBody(notes, normalise("\n".join(lines[start + 1 : end])), True)


def notes_of(body: Any) -> SplitBody:
    """The notes and our block of a Graph event ``body`` (ours as rendered, or as Outlook shows it)."""
    return split_body(body_text(body))

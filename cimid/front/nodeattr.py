"""`cimid:node`: the provider extension attribute naming the node a resource is on (the counterpart of
`cimid:target` at create). The nodes do not know it: the front adds it to every resource it serves
from a node, sorts on it in its merge (every node's rows share one value, so each node's page stays
sorted), and applies `$filter` terms on it by choosing which nodes to ask. It evaluates the simple
forms only: `cimid:node='n1'` or `cimid:node!='n1'` (either side), joined to the rest of a filter with
`and`; anything else naming it is refused with 400, since no node could evaluate it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr

from aiohttp import web

from ..errors import BadRequest
from ..wire.cimi1.xml import EXT_NS

NODE = "cimid:node"

_STRING = r"""'(?:[^']|'')*'|"(?:[^"]|"")*\""""
_TERM = re.compile(rf"\s*(?:{re.escape(NODE)}\s*(?P<op1>!=|=)\s*(?P<v1>{_STRING})"
                   rf"|(?P<v2>{_STRING})\s*(?P<op2>!=|=)\s*{re.escape(NODE)})\s*")
_WORD = re.compile(r"(?<![\w:])(and|or)(?![\w:])", re.IGNORECASE)


@dataclass
class NodeFilter:
    filters: list[str] = field(default_factory=list)  # the $filter values the nodes are asked
    only: set[str] | None = None  # the node must be one of these (cimid:node='x' terms)
    not_: set[str] = field(default_factory=set)  # and none of these (cimid:node!='x')

    def admits(self, node: str) -> bool:
        return (self.only is None or node in self.only) and node not in self.not_


def split(filters: list[str]) -> NodeFilter:
    """Every $filter (ANDed, as the nodes take them) with its cimid:node terms taken out."""
    result = NodeFilter()
    for text in filters:
        masked = _mask(text)
        if NODE not in masked:
            result.filters.append(text)
            continue
        rest = []
        for start, end in _conjuncts(text, masked):
            part, part_masked = text[start:end], masked[start:end]
            if NODE not in part_masked:
                rest.append(part.strip())
                continue
            term = _TERM.fullmatch(part)
            if term is None:
                raise BadRequest(f"$filter: {NODE} is evaluated by the front, which takes it only as {NODE}='name' "
                                 f"or {NODE}!='name' joined to the rest with 'and' (not under 'or' or "
                                 f"in parentheses), not as {part.strip()!r}")
            literal = term["v1"] or term["v2"]
            value = literal[1:-1].replace(literal[0] * 2, literal[0])
            if (term["op1"] or term["op2"]) == "=":
                result.only = {value} if result.only is None else result.only & {value}
            else:
                result.not_.add(value)
        if rest:
            result.filters.append(" and ".join(rest))
    return result


def _mask(text: str) -> str:
    """`text` with the inside of every quoted string blanked, so words in values are not seen."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c in "'\"":
            j = i + 1
            while j < len(text):
                if text[j] == c and text[j + 1:j + 2] == c:
                    j += 2
                elif text[j] == c:
                    break
                else:
                    j += 1
            out.append(c + " " * (min(j, len(text)) - i - 1) + (c if j < len(text) else ""))
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _conjuncts(text: str, masked: str) -> list[tuple[int, int]]:
    """The spans of `text` joined by `and` outside parentheses; 400 if `or` joins anything there."""
    depth, spans, start = 0, [], 0
    levels = []
    for i, c in enumerate(masked):
        depth += c == "("
        depth -= c == ")"
        levels.append(depth)
    for word in _WORD.finditer(masked):
        if levels[word.start()] != 0:
            continue
        if word[1].lower() == "or":
            raise BadRequest(f"$filter: {NODE} is evaluated by the front, which cannot take it in a filter "
                             f"joined with 'or' ({text!r}); ask once per node, or filter on {NODE} with 'and'")
        spans.append((start, word.start()))
        start = word.end()
    spans.append((start, len(text)))
    return spans


def mark(response: web.Response, node: str) -> None:
    """A node's answer for one resource, as it came, with its cimid:node added: spliced into the bytes
    (the GET a front serves most, kept as cheap as forwarding): before the closing brace of the JSON
    object, or as an attribute of the XML root element, which DSP8009 admits from other namespaces."""
    body = response.body
    if not isinstance(body, bytes) or not body:
        return
    if response.content_type.endswith("json"):
        end = body.rstrip().rfind(b"}")
        if end > 0:
            response.body = body[:end] + f',{json.dumps(NODE)}:{json.dumps(node)}'.encode() + body[end:]
    elif response.content_type.endswith("xml"):
        start = body.find(b"<", body.find(b"?>") + 1 if body.startswith(b"<?") else 0)
        close = body.find(b">", start)
        if start >= 0 and close > 0:
            extra = f' xmlns:cimid="{EXT_NS}" cimid:node={quoteattr(node)}'.encode()
            response.body = body[:close] + extra + body[close:]

"""Structured Field Values for HTTP (RFC 8941): parsing of Dictionaries, Lists and Items.

Written for CDN-Cache-Control (RFC 9213 §2.2), which runs once per origin response: a handful of
compiled patterns matched at a position, no character-by-character loop. Values come back as Python
objects: Integer -> int, Decimal -> float, String -> str, Token -> Token (a str subclass, so a token is
told apart from a string), Byte Sequence -> bytes, Boolean -> bool (check `type(v) is int`, not
isinstance: a bool is an int in Python). A member or item is (value, parameters); an Inner List's value
is a list of items. Any syntax error raises SFError: RFC 8941 §4.2 then has the whole field ignored.
"""

from __future__ import annotations

import base64
import binascii
import re


class SFError(ValueError):
    """A field value that does not parse as the structured type asked for (RFC 8941 §4.2)."""


class Token(str):
    """An sf-token (RFC 8941 §3.3.4): a str, but not an sf-string."""

    __slots__ = ()


BareItem = int | float | str | bytes | bool
Parameters = dict[str, BareItem]
Item = tuple[BareItem, Parameters]
Member = tuple[BareItem | list[Item], Parameters]  # an Item, or an Inner List (a list of Items)

# RFC 8941 §3.1.2 key: ( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" ) - lower case only.
_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
# RFC 8941 §4.2.3.1, the first character says which bare item follows:
_BARE = re.compile(
    # §4.2.4 Integer (at most 15 digits) or Decimal (at most 12 digits, ".", 1 to 3 digits); a longer run is
    # left unconsumed, and what follows an item must then be ";", "," or the end: it fails as §4.2.4 says.
    r"(-?[0-9]{1,12}\.[0-9]{1,3}|-?[0-9]{1,15})"
    r'|"((?:[ !#-\[\]-~]|\\["\\])*)"'  # §4.2.5 String: printable ASCII, only \" and \\ escaped
    r"|([A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*)"  # §4.2.6 Token: ALPHA or "*", then tchar, ":" or "/"
    r"|:([A-Za-z0-9+/=]*):"  # §4.2.7 Byte Sequence: base64 between colons
    r"|\?([01])"  # §4.2.8 Boolean
)
_ESCAPE = re.compile(r"\\(.)")


def parse_dictionary(value: str) -> dict[str, Member]:
    """A Dictionary field value (RFC 8941 §4.2.2); a later duplicate key overwrites an earlier one."""
    s, i, n = _field(value)
    out: dict[str, Member] = {}
    while i < n:
        m = _KEY.match(s, i)
        if m is None:
            raise SFError(f"a dictionary key expected at {i}")
        key, i = m.group(), m.end()
        if i < n and s[i] == "=":
            member, i = _item_or_inner_list(s, i + 1, n)
        else:  # a bare key is Boolean true, with any parameters (§4.2.2)
            params, i = _parameters(s, i, n)
            member = (True, params)
        out[key] = member
        i = _after_member(s, i, n)
    return out


def parse_list(value: str) -> list[Member]:
    """A List field value (RFC 8941 §4.2.1)."""
    s, i, n = _field(value)
    out: list[Member] = []
    while i < n:
        member, i = _item_or_inner_list(s, i, n)
        out.append(member)
        i = _after_member(s, i, n)
    return out


def parse_item(value: str) -> Item:
    """An Item field value (RFC 8941 §4.2.3)."""
    s, i, n = _field(value)
    item, i = _item(s, i, n)
    if i != n:
        raise SFError(f"unexpected {s[i]!r} at {i}")
    return item


def _field(value: str) -> tuple[str, int, int]:
    """The value, where parsing starts and where it ends: ASCII only, leading and trailing SP dropped (§4.2)."""
    if not value.isascii():
        raise SFError("not ASCII")
    end = len(value.rstrip(" "))
    start = 0
    while start < end and value[start] == " ":
        start += 1
    return value, start, end


def _after_member(s: str, i: int, n: int) -> int:
    """Past the OWS, comma and OWS after a list or dictionary member; n at the end (§4.2.1 / §4.2.2)."""
    while i < n and s[i] in " \t":
        i += 1
    if i == n:
        return n
    if s[i] != ",":
        raise SFError(f"',' expected at {i}")
    i += 1
    while i < n and s[i] in " \t":
        i += 1
    if i == n:
        raise SFError("a trailing comma")
    return i


def _item_or_inner_list(s: str, i: int, n: int) -> tuple[Member, int]:
    if i < n and s[i] == "(":  # §4.2.1.2 Inner List: items separated by SP, then parameters
        i += 1
        items: list[Item] = []
        while True:
            while i < n and s[i] == " ":
                i += 1
            if i == n:
                raise SFError("an inner list without ')'")
            if s[i] == ")":
                params, i = _parameters(s, i + 1, n)
                return (items, params), i
            item, i = _item(s, i, n)
            items.append(item)
            if i == n or s[i] not in " )":
                raise SFError(f"' ' or ')' expected at {i}")
    return _item(s, i, n)


def _item(s: str, i: int, n: int) -> tuple[Item, int]:
    value, i = _bare_item(s, i, n)
    params, i = _parameters(s, i, n)
    return (value, params), i


def _parameters(s: str, i: int, n: int) -> tuple[Parameters, int]:
    """§4.2.3.2: ';' key ['=' bare item], SP allowed after ';'; a later duplicate key overwrites."""
    params: Parameters = {}
    while i < n and s[i] == ";":
        i += 1
        while i < n and s[i] == " ":
            i += 1
        m = _KEY.match(s, i)
        if m is None:
            raise SFError(f"a parameter key expected at {i}")
        key, i = m.group(), m.end()
        value: BareItem = True
        if i < n and s[i] == "=":
            value, i = _bare_item(s, i + 1, n)
        params[key] = value
    return params, i


def _bare_item(s: str, i: int, n: int) -> tuple[BareItem, int]:
    m = _BARE.match(s, i, n)
    if m is None:
        raise SFError(f"an item expected at {i}")
    number, string, token, octets, boolean = m.groups()
    if number is not None:
        return (float(number) if "." in number else int(number)), m.end()
    if string is not None:
        return (_ESCAPE.sub(r"\1", string) if "\\" in string else string), m.end()
    if token is not None:
        return Token(token), m.end()
    if octets is not None:
        # Missing "=" padding is accepted (§4.2.7: parsers SHOULD NOT fail on it); misplaced "=" is not.
        bare = octets.rstrip("=")
        try:
            return base64.b64decode(bare + "=" * (-len(bare) % 4), validate=True), m.end()
        except binascii.Error:
            raise SFError(f"bad base64 at {i}") from None
    return boolean == "1", m.end()

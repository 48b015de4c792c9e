"""HTML built so that nothing is left unescaped by accident: ``tag`` escapes every string
it is given, unless it is ``Safe`` — markup this module made.  Prompts shown in the
console are attacker-written; no page concatenates HTML by hand.
"""

from __future__ import annotations

import html
from collections.abc import Iterable

#: The console's pages: no script at all, styles only from the proxy itself.  (A referrer
#: policy of ``no-referrer`` would make browsers send ``Origin: null`` with the console's
#: own form posts, which the Origin check refuses: ``same-origin`` keeps the origin.)
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "same-origin", "Cache-Control": "no-store",
           "X-Frame-Options": "DENY"}


class Safe(str):
    """Markup made by ``tag``: written as it is."""

    __slots__ = ()


def escape(value: object) -> Safe:
    return Safe(html.escape(str(value), quote=True))


def render(child: object) -> Safe:
    if child is None:
        return Safe("")
    if isinstance(child, Safe):
        return child
    if isinstance(child, str | int | float):
        return escape(child)
    if isinstance(child, Iterable):
        return Safe("".join(render(one) for one in child))
    return escape(child)


def tag(element: str, /, *children: object, **attrs: object) -> Safe:
    """``<name attrs>children</name>``; ``class_`` for ``class``; an attribute of None or
    False is left out, True writes it bare."""
    parts = [element]
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        attr = key.rstrip("_").replace("_", "-")
        parts.append(attr if value is True else f'{attr}="{escape(value)}"')
    opening = "<" + " ".join(parts) + ">"
    if element in ("input", "meta", "link", "br"):
        return Safe(opening)
    return Safe(f"{opening}{render(children)}</{element}>")


NAV = (("/console", "Overview"), ("/console/decisions", "Decisions"),
       ("/console/tenants", "Tenants"), ("/console/playground", "Playground"))


def page(title: str, *body: object, signed_in: bool = True) -> Safe:
    """A whole console page."""
    nav = tag("nav", [tag("a", label, href=href) for href, label in NAV],
              tag("form", tag("button", "Sign out", type="submit"), method="post",
                  action="/console/logout", class_="signout") if signed_in else None)
    return Safe("<!doctype html>" + tag(
        "html",
        tag("head", tag("meta", charset="utf-8"),
            tag("meta", name="viewport", content="width=device-width, initial-scale=1"),
            tag("title", f"{title} · guardproxy console"),
            tag("link", rel="stylesheet", href="/console/console.css")),
        tag("body", tag("header", tag("strong", "guardproxy"), nav if signed_in else None),
            tag("main", tag("h1", title), *body)),
        lang="en"))


def table(headers: Iterable[str], rows: Iterable[Iterable[object]], **attrs: object) -> Safe:
    return tag("table", tag("thead", tag("tr", [tag("th", h) for h in headers])),
               tag("tbody", [tag("tr", [tag("td", cell) for cell in row]) for row in rows]),
               **attrs)


def select(name: str, options: Iterable[str], chosen: str | None, label: str) -> Safe:
    return tag("label", label, tag(
        "select", tag("option", "any", value=""),
        [tag("option", option, value=option, selected=option == chosen) for option in options],
        name=name))

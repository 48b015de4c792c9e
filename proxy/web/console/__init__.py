"""The operator's console and the JSON for tools, on the admin listener only."""

from __future__ import annotations

from aiohttp import web

from proxy.web.console import auth, pages
from proxy.web.console.playground import api_playground


def add_console_routes(app: web.Application) -> None:
    app.router.add_get("/console", pages.overview_page)
    app.router.add_get("/console/console.css", pages.css)
    app.router.add_get("/console/login", auth.login_form)
    app.router.add_post("/console/login", auth.login)
    app.router.add_post("/console/logout", auth.logout)
    app.router.add_get("/console/decisions", pages.decisions_page)
    app.router.add_get("/console/decisions/{id}", pages.decision_page)
    app.router.add_get("/console/tenants", pages.tenants_page)
    app.router.add_get("/console/playground", pages.playground_get)
    app.router.add_post("/console/playground", pages.playground_post)
    app.router.add_get("/api/decisions", pages.api_decisions)
    app.router.add_post("/api/playground", api_playground)

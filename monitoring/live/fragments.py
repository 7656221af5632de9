"""The dashboard's live parts, rendered from the same partials as the page.

Each partial's outer element carries a fixed id; pushed, it also carries
``hx-swap-oob="true"`` and htmx's ws extension swaps it in by that id. A
``Screen`` remembers what one browser was sent and sends only what changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.context_processors import PermWrapper
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse

from monitoring.live.dashboard import Dashboard, Trends

# Element id -> partial. Master rows are apart: one per master, and the body
# holding them when masters come, go or change order.
PARTS = {
    "live-status": "monitoring/_live_status.html",
    "totals": "monitoring/_totals.html",
    "alerts": "monitoring/_alerts.html",
    "failovers": "monitoring/_failovers.html",
    "load": "monitoring/_load.html",
    "events": "monitoring/_events.html",
}
# Parts drawn from the dashboard's trends alone.
FROM_TRENDS = {"load"}
ROWS = "monitoring/_master_rows.html"
ROW = "monitoring/_master_row.html"


@dataclass(frozen=True)
class Audience:
    """Who a screen is for: what they may do, and the CSRF token their forms carry."""

    user: Any
    csrf_token: str
    # The newest event when their page was rendered (0: none): later ones are marked new.
    after: int | None = None

    def context(self, **values: Any) -> dict[str, Any]:
        return {
            "user": self.user,
            "perms": PermWrapper(self.user),
            "csrf_token": self.csrf_token,
            # For partials that link back to the page they are on (?next=).
            "request": self.page_request(),
            "after": self.after,
            "oob": True,
        } | values

    def page_request(self) -> HttpRequest:
        request = HttpRequest()
        request.path = request.path_info = reverse("home")
        request.user = self.user
        return request


@dataclass
class Screen:
    """What one browser shows: the HTML last sent for each part."""

    audience: Audience
    sent: dict[str, str] = field(default_factory=dict)
    order: tuple[int, ...] | None = None
    version: int = 0
    trends: Trends | None = None  # the trends last rendered (the feed reuses them for 30 s)

    def update(self, dashboard: Dashboard) -> list[str]:
        """Return the parts that changed since the last update, as websocket frames.

        The first update returns every part (a reconnect catches up that way).
        An older dashboard than the last one sent returns nothing. Table rows
        travel in a frame of their own: htmx parses each frame as one
        fragment, where a <tr> after a <p> is no longer a row.
        """
        if dashboard.version <= self.version:
            return []
        self.version = dashboard.version
        context = self.audience.context(dashboard=dashboard)
        parts, rows = [], []
        for element_id, template in PARTS.items():
            if element_id in FROM_TRENDS and dashboard.trends is self.trends:
                continue  # the slowest part to render, and unchanged
            parts += self._changed(element_id, render_to_string(template, context))
        self.trends = dashboard.trends
        rendered = {
            f"master-{row.master.pk}": render_to_string(ROW, context | {"row": row})
            for row in dashboard.rows
        }
        if dashboard.master_order != self.order:
            self.order = dashboard.master_order
            rows.append(render_to_string(ROWS, context))
            self.sent = {k: v for k, v in self.sent.items() if not k.startswith("master-")}
            self.sent.update(rendered)
        else:
            for element_id, html in rendered.items():
                rows += self._changed(element_id, html)
        return ["\n".join(frame) for frame in (parts, rows) if frame]

    def _changed(self, element_id: str, html: str) -> list[str]:
        if self.sent.get(element_id) == html:
            return []
        self.sent[element_id] = html
        return [html]

"""`userctl dashboard`: a live web page of the fleet, built from the topics and Delta only.

``state.Watch`` folds the topics into what the page shows; ``app.build_app`` serves it
(Starlette, Jinja2 templates, a small hand-written script under ``static/``).
"""

from infra.dashboard.app import build_app
from infra.dashboard.state import Watch

__all__ = ["Watch", "build_app"]

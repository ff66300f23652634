"""A Jupyter server extension: the run index and the reports under ``runs_dir``, served as pages
that link to each other.

Why not ``/files/``: JupyterLab's HTML viewer shows a copy of the page (a ``blob:`` document)
whose ``<base>`` is the file's ``/files/…?_xsrf=…`` URL. A click on a relative link
(``20261205/101500-000003-40_evaluate_candidate.html``) drops that query and a ``blob:`` page
sends no Referer, so the server's XSRF/Referer check on ``/files/`` answers "403 : Forbidden —
Blocking request from unknown origin". ``/files/`` opened in a browser tab does no better: the
server sandboxes HTML there (an opaque origin, which sends no Referer either), so the second page
is refused the same way. Both checks stay as they are; this extension adds one read-only route
instead:

- ``<base_url>ops/runs/<path>`` serves the files under ``runs_dir`` (``index.html`` for the
  folder itself) to a logged-in user allowed to read contents — the same authentication and
  authorization as ``/files/``, hidden files refused alike. Like the Lab page itself, a GET
  needs no XSRF token, so relative links between the pages work in both directions (index →
  report → ``../index.html``, history pages, …). What that opens up is covered by the page's
  Content-Security-Policy: no script, plugin, form or framing by another site runs or loads
  (the pages are static: inline CSS and ``data:`` images, no scripts). A notebook (``.ipynb``)
  is sent as a download, as ``/files/`` does.
- Kernels the server starts get ``OPS_LAB_RUNS_URL`` (``Settings.lab_runs_url``) and
  ``OPS_RUNS_DIR`` set to the folder served, so the dashboard links the run index and reports
  there (``opslib.ops.monitor.ReportLinks``); each opens in a browser tab of its own.

Enabled by ``make lab`` (``--ServerApp.jpserver_extensions``), or for any ``jupyter lab`` by
``{"ServerApp": {"jpserver_extensions": {"opslib.ops.lab_runs": true}}}`` in a Jupyter config file
(``jupyter server extension enable`` only toggles extensions that ship such a file). ``runs_dir``
is read from the ``OPS_*`` settings of the server's environment when it starts.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import AuthenticatedFileHandler
from jupyter_server.utils import url_path_join
from pydantic import ValidationError
from tornado import web

from opslib.settings import Settings

if TYPE_CHECKING:
    from jupyter_server.serverapp import ServerApp

ROUTE = "ops/runs/"
# Static pages only: inline CSS and data: images; nothing else loads or runs, and no other site
# may frame them (the Lab page itself may: frame-ancestors 'self').
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "style-src 'unsafe-inline'",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'self'",
    )
)


class RunsFileHandler(AuthenticatedFileHandler):
    """A file under ``runs_dir`` for a logged-in user with read access to contents."""

    @property
    def content_security_policy(self) -> str:
        return CONTENT_SECURITY_POLICY

    def _attachment_if_notebook(self, path: str) -> None:
        if path.lower().endswith(".ipynb"):
            self.set_attachment_header(path.rsplit("/", 1)[-1])

    # The same decorators as /files/ (login, then the "contents" read permission); unlike
    # /files/, no check_xsrf_cookie(): see the module docstring.
    @web.authenticated
    @authorized
    def get(self, path: str, **kwargs: Any) -> Awaitable[None]:  # type: ignore[override]
        self._attachment_if_notebook(path)
        return web.StaticFileHandler.get(self, path, **kwargs)

    @web.authenticated
    @authorized
    def head(self, path: str) -> Awaitable[None]:  # type: ignore[override]
        self._attachment_if_notebook(path)
        return web.StaticFileHandler.head(self, path)


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": __name__}]


def _load_jupyter_server_extension(serverapp: ServerApp) -> None:
    try:
        settings = Settings()
    except ValidationError as exc:  # Lab still starts; the dashboard then links files as before
        serverapp.log.error("opslib.ops.lab_runs: runs/ not served, the OPS_* settings are invalid:\n%s", exc)
        return
    url = url_path_join(serverapp.base_url, ROUTE)
    # jupyter_server's web app overrides add_handlers without annotations.
    serverapp.web_app.add_handlers(  # type: ignore[no-untyped-call]
        ".*$",
        [
            (
                url_path_join(url, "(.*)"),
                RunsFileHandler,
                {"path": str(settings.runs_dir), "default_filename": "index.html"},
            )
        ],
    )
    # For the kernels this server starts (they inherit its environment), through the settings'
    # own spelling: where the run reports are served, and the one runs folder that is served.
    served = settings.model_copy(update={"lab_runs_url": url}).as_env()
    for key in ("OPS_LAB_RUNS_URL", "OPS_RUNS_DIR"):
        os.environ[key] = served[key]
    serverapp.log.info("opslib.ops.lab_runs: serving %s at %s", settings.runs_dir, url)

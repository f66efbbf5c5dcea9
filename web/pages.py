"""The placeholder dashboard page: recent runs. The live htmx dashboard replaces it (issue 6)."""

from __future__ import annotations

from html import escape

from litestar import MediaType, get
from litestar.datastructures import State

from jetdag.engine.client import Client


@get("/", media_type=MediaType.HTML)
async def index(state: State) -> str:
    client: Client = state.client
    runs = await client.runs_list(limit=25)
    rows = "".join(
        f"<tr><td><a href='/api/v1/runs/{escape(r['run_id'])}'>{escape(r['run_id'])}</a></td>"
        f"<td>{escape(r['workflow'])}</td><td class='{escape(r['status'])}'>{escape(r['status'])}</td></tr>"
        for r in runs
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>jetdag</title>
<style>
 body {{ font: 15px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }}
 table {{ border-collapse: collapse; width: 100%; }} td, th {{ text-align: left; padding: .2rem .6rem; }}
 .succeeded {{ color: #15803d; }} .failed {{ color: #b91c1c; }} .running {{ color: #1d4ed8; }}
 @media (prefers-color-scheme: dark) {{ body {{ background: #111; color: #ddd; }} a {{ color: #8ab4f8; }} }}
</style></head><body>
<h1>jetdag</h1>
<p>The live dashboard is on its way. Meanwhile: <a href="/api/v1/health">health</a>,
<a href="/api/v1/runs">runs (JSON)</a>, <a href="/schema">API schema</a>.</p>
<h2>Recent runs</h2>
<table><thead><tr><th>run</th><th>workflow</th><th>status</th></tr></thead><tbody>{rows}</tbody></table>
</body></html>"""

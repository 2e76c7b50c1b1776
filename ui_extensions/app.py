"""The shifters' content app: DQM pages, the p3s-style dashboard, their JSON, read-only.

``create_app(settings)`` builds it; ``p3s ui serve`` runs it with uvicorn. Templates and static
files ship in this package (no CDN); plots are the payloads' PNGs plus a few drawn here.
"""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateName,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)

from p3s.dqm.links import PAYLOAD_PAGES, flow_run_ui_url, page_path, prefect_ui_url, product_path
from p3s.files.names import RawFile
from p3s.jobs.states import P3S_FILTERS, p3s_state
from p3s.system.datatypes import dqm_payload_of
from p3s.system.settings import Settings

from . import content, plots
from .access import Access
from .dashboard import STATES, WINDOWS, Summary, build_summary
from .landing import build_landing
from .prefect_api import PrefectApi
from .shared_refresh import SharedRefresh

HERE = Path(__file__).resolve().parent
PNG = "image/png"


def _api_auth_configured() -> bool:
    return bool(os.environ.get("PREFECT_API_AUTH_STRING"))


def job_run_filter(state: str | None = None, jobtype: str | None = None) -> FlowRunFilter:
    """Flow runs in a p3s state (failed: not time limits or refusals) and of a job type."""
    flt = FlowRunFilter()
    if jobtype:
        flt.tags = FlowRunFilterTags(all_=[f"jobtype:{jobtype}"])
    if state:
        if state not in P3S_FILTERS:
            raise HTTPException(
                400, f"unknown p3s state {state!r}; use one of {', '.join(P3S_FILTERS)}"
            )
        types, name = P3S_FILTERS[state]
        names = FlowRunFilterStateName(any_=[name]) if name else None
        if state == "failed":
            names = FlowRunFilterStateName(not_any_=["TimeLimit", "Refused"])
        flt.state = FlowRunFilterState(type=FlowRunFilterStateType(any_=types), name=names)
    return flt


def create_app(settings: Settings) -> FastAPI:
    """The content app for ``settings`` (catalog, storage, Prefect API, refresh, page size)."""
    app = FastAPI(title="p3s shifters' pages", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(
        refresh=settings.ui.refresh_seconds,
        prefect_ui=prefect_ui_url(settings),
        payload_pages=PAYLOAD_PAGES,
        page_path=page_path,
        product_path=product_path,
    )
    templates.env.filters["num"] = _num
    access = Access(settings.api_url, configured=_api_auth_configured())

    async def current_summary(credentials: str | None) -> Summary:
        client = PrefectApi(settings.api_url, credentials)
        try:
            return await build_summary(client, settings)
        finally:
            await client.aclose()

    # Every page reloads each refresh period: serve the newest summary at once while it is
    # younger than three periods, and compute the next one in the background.
    summaries = SharedRefresh(
        current_summary,
        fresh_s=max(2.0, settings.ui.refresh_seconds / 2),
        stale_s=3.0 * settings.ui.refresh_seconds,
    )
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def _access(request: Request, call_next: Any) -> Response:
        refused = await access.check(request)
        if refused is not None:
            return refused
        if request.method != "HEAD":
            return await call_next(request)
        # HEAD is GET without the body (FastAPI routes answer GET only).
        request.scope["method"] = "GET"
        response = await call_next(request)
        async for _ in response.body_iterator:
            pass
        return Response(status_code=response.status_code, headers=dict(response.headers))

    def api(request: Request) -> PrefectApi:
        return PrefectApi(settings.api_url, request.state.credentials)

    def page(request: Request, name: str, **context: Any) -> Response:
        return templates.TemplateResponse(request, name, context)

    async def summary(request: Request, at: datetime | None) -> Summary:
        """The summary now (shared, see :class:`SharedRefresh`), or as of ``at``."""
        if at is None:
            return await summaries.get(request.state.credentials)
        client = api(request)
        try:
            return await build_summary(client, settings, at)
        finally:
            await client.aclose()

    # -- dashboard and jobs ------------------------------------------------------------------

    @app.get("/")
    async def landing(request: Request, at: datetime | None = None) -> Response:
        """The shifter-first page: only what is wrong now."""
        found = await _landing(request, at)
        return page(request, "landing.html", w=found)

    @app.get("/api/landing.json")
    async def landing_json(request: Request, at: datetime | None = None) -> JSONResponse:
        return JSONResponse((await _landing(request, at)).as_json())

    async def _landing(request: Request, at: datetime | None) -> Any:
        found = await summary(request, at)
        client = api(request)
        try:
            return await build_landing(client, settings, found, at)
        finally:
            await client.aclose()

    @app.get("/dashboard")
    async def dashboard(request: Request, at: datetime | None = None) -> Response:
        found = await summary(request, at)
        return page(request, "dashboard.html", s=found, windows=list(WINDOWS), states=STATES)

    @app.get("/api/summary.json")
    async def summary_json(request: Request, at: datetime | None = None) -> JSONResponse:
        """The dashboard as JSON; ``at`` (ISO 8601) fixes the windows' end."""
        return JSONResponse((await summary(request, at)).as_json())

    async def _jobs(
        request: Request, state: str | None, jobtype: str | None, flow: str | None, page_no: int
    ) -> dict[str, Any]:
        size = settings.ui.page_size
        flow_filter = FlowFilter(name=FlowFilterName(any_=[flow])) if flow else None
        run_filter = job_run_filter(state, jobtype)
        client = api(request)
        try:
            total, runs, names = await asyncio.gather(
                client.count_flow_runs(flow_filter, run_filter),
                client.read_flow_runs(
                    flow_filter, run_filter, limit=size, offset=(max(1, page_no) - 1) * size
                ),
                client.read_flow_names(),
            )
        finally:
            await client.aclose()
        rows = [
            {
                "id": str(r.id),
                "name": r.name,
                "flow": names.get(str(r.flow_id), ""),
                "jobtype": next((t[8:] for t in r.tags if t.startswith("jobtype:")), ""),
                "p3s_state": p3s_state(r.state),
                "prefect_state": r.state.name if r.state else "",
                "message": (r.state.message or "") if r.state else "",
                "expected_start": r.expected_start_time.isoformat()
                if r.expected_start_time
                else "",
            }
            for r in runs
        ]
        pages = max(1, -(-total // size))
        return {
            "total": total,
            "page": max(1, page_no),
            "pages": pages,
            "rows": rows,
            "filters": {"state": state, "jobtype": jobtype, "flow": flow},
            "flows": sorted(set(names.values())),
        }

    @app.get("/jobs")
    async def jobs(
        request: Request,
        state: str | None = None,
        jobtype: str | None = None,
        flow: str | None = None,
        page_no: int = Query(1, alias="page"),
    ) -> Response:
        found = await _jobs(request, state or None, jobtype or None, flow or None, page_no)
        return page(request, "jobs.html", j=found, states=list(P3S_FILTERS))

    @app.get("/api/jobs.json")
    async def jobs_json(
        request: Request,
        state: str | None = None,
        jobtype: str | None = None,
        flow: str | None = None,
        page_no: int = Query(1, alias="page"),
    ) -> JSONResponse:
        return JSONResponse(await _jobs(request, state, jobtype, flow, page_no))

    @app.get("/jobs/{run_id}")
    async def job(request: Request, run_id: str) -> Response:
        client = api(request)
        try:
            run = await client.read_flow_run(run_id)
            artifacts = await client.read_artifacts(run_id)
            names = await client.read_flow_names()
        except Exception as exc:
            raise HTTPException(404, f"no flow run {run_id}") from exc
        finally:
            await client.aclose()
        parameters = dict(run.parameters or {})
        content_link = None
        url = str(parameters.get("file_url", ""))
        flow_name = names.get(str(run.flow_id), "")
        payload = dqm_payload_of(flow_name)
        if payload is not None:
            raw = RawFile.from_params(url, parameters.get("run"), parameters.get("subrun"), None)
            content_link = page_path(payload, raw.run, raw.subrun)
        return page(
            request,
            "job.html",
            run=run,
            flow=flow_name,
            p3s=p3s_state(run.state),
            parameters=parameters,
            artifacts=artifacts,
            ui_link=flow_run_ui_url(settings, str(run.id)),
            content_link=content_link,
        )

    # -- DQM content -------------------------------------------------------------------------

    @app.get("/runs")
    def runs(request: Request) -> Response:
        return page(request, "runs.html", runs=content.runs())

    @app.get("/purity")
    def purity(
        request: Request, run: int | None = None, page_no: int = Query(1, alias="page")
    ) -> Response:
        found = content.purity_page(run, page_no, settings.ui.page_size)
        tpcs = content.purity_tpcs(run)
        overlays = []
        if run is not None and content.subruns(run, "purity"):
            subrun = content.subruns(run, "purity")[-1]
            overlays = [(subrun, h) for h in content.overlay_keys(run, subrun, "purity")]
        return page(
            request,
            "purity.html",
            p=found,
            run=run,
            tpcs=tpcs,
            label=content.tpc_label,
            overlays=overlays,
            reference=_reference("purity"),
        )

    @app.get("/api/purity.json")
    def purity_json(run: int | None = None, page_no: int = Query(1, alias="page")) -> JSONResponse:
        found = content.purity_page(run, page_no, settings.ui.page_size)
        return JSONResponse(
            {
                "run": run,
                "page": found.page,
                "pages": found.pages,
                "total": found.total,
                "rows": found.rows,
            }
        )

    @app.get("/plots/lifetime/tpc{tpc}.png")
    def lifetime_png(tpc: int, run: int | None = None) -> Response:
        points = content.purity_series(run).get(tpc, [])
        return Response(plots.lifetime_vs_time(content.tpc_label(tpc), points), media_type=PNG)

    @app.get("/plots/noisy-trend.png")
    def noisy_trend_png() -> Response:
        return Response(plots.noisy_trend(content.noisy_trend()), media_type=PNG)

    @app.get("/plots/channel-map/{run}/{subrun}.png")
    def channel_map_png(run: int, subrun: int) -> Response:
        found = content.find_product(run, subrun, "tpc_monitor", "channels.csv")
        if found is None:
            raise HTTPException(404, f"run {run} subrun {subrun} has no TPC monitor channels")
        rows = content.read_csv(found["url"])
        title = f"dead and noisy channels, run {run} subrun {subrun}"
        return Response(plots.channel_map(title, rows), media_type=PNG)

    def _reference(payload: str) -> int | None:
        from p3s.dqm.catalog import open_catalog

        return open_catalog().reference_run(payload)

    def _latest(run: int, payload: str) -> int:
        subruns = content.subruns(run, payload)
        if not subruns:
            raise HTTPException(404, f"run {run} has no {payload} products")
        return subruns[-1]

    @app.get("/tpc/{run}")
    def tpc_latest(run: int) -> Response:
        return RedirectResponse(f"/tpc/{run}/{_latest(run, 'tpc_monitor')}")

    @app.get("/tpc/{run}/{subrun}")
    def tpc(request: Request, run: int, subrun: int) -> Response:
        items = content.products(run, subrun, "tpc_monitor")
        if not items:
            raise HTTPException(404, f"run {run} subrun {subrun} has no TPC monitor products")
        names = {p["name"] for p in items}
        return page(
            request,
            "tpc.html",
            run=run,
            subrun=subrun,
            subruns=content.subruns(run, "tpc_monitor"),
            ffts=content.fft_images(items),
            per_channel=[
                n for n in ("rms_vs_channel.png", "pedestal_vs_channel.png") if n in names
            ],
            planes=content.channel_status(run, subrun),
            result=content.result(run, subrun, "tpc_monitor"),
            overlays=content.overlay_keys(run, subrun, "tpc_monitor"),
            reference=_reference("tpc_monitor"),
        )

    @app.get("/evdisplay/{run}")
    def evdisplay_latest(run: int) -> Response:
        return RedirectResponse(f"/evdisplay/{run}/{_latest(run, 'evdisplay')}")

    @app.get("/evdisplay/{run}/{subrun}")
    def evdisplay(request: Request, run: int, subrun: int) -> Response:
        result = content.result(run, subrun, "evdisplay")
        names = {p["name"] for p in content.products(run, subrun, "evdisplay")}
        if result is None or not names:
            raise HTTPException(404, f"run {run} subrun {subrun} has no event display")
        events: dict[int, dict[tuple[int, str], dict[str, str]]] = {}
        for image in result["summary"].get("images", []):
            file = image["name"].replace("/", "_") + ".png"
            if file in names:
                cell = events.setdefault(image["event"], {}).setdefault(
                    (image["apa"], image["plane"]), {}
                )
                cell[image["kind"]] = file
        return page(
            request,
            "evdisplay.html",
            run=run,
            subrun=subrun,
            subruns=content.subruns(run, "evdisplay"),
            events=dict(sorted(events.items())),
        )

    @app.get("/beam/{run}")
    def beam_run(request: Request, run: int) -> Response:
        return _beam(request, run, content.subruns(run, "beam"))

    @app.get("/beam/{run}/{subrun}")
    def beam(request: Request, run: int, subrun: int) -> Response:
        return _beam(request, run, [subrun])

    def _beam(request: Request, run: int, subruns: list[int]) -> Response:
        sections = []
        for subrun in subruns:
            images = [
                p["name"]
                for p in content.products(run, subrun, "beam")
                if p["name"].endswith(".png")
            ]
            result = content.result(run, subrun, "beam")
            if images:
                sections.append(
                    {
                        "subrun": subrun,
                        "images": images,
                        "summary": (result or {}).get("summary", {}),
                        "overlays": content.overlay_keys(run, subrun, "beam"),
                    }
                )
        if not sections:
            raise HTTPException(404, f"run {run} has no beam instrumentation histograms")
        return page(request, "beam.html", run=run, sections=sections, reference=_reference("beam"))

    # -- data quality ------------------------------------------------------------------------

    @app.get("/quality/{run}")
    def quality(request: Request, run: int) -> Response:
        from p3s.dqm.catalog import open_catalog

        catalog = open_catalog()
        flags = catalog.dq_flags(run)
        if not flags:
            raise HTTPException(404, f"run {run} has no quality flag")
        return page(
            request,
            "quality.html",
            run=run,
            flags=flags,
            checks=catalog.dq_checks(run),
            references=catalog.references(),
        )

    @app.get("/trends")
    def trends(request: Request) -> Response:
        from p3s.dqm.catalog import open_catalog
        from p3s.dqm.trends import quality_strip, trend_series

        catalog = open_catalog()
        series = trend_series(catalog)
        strip = quality_strip(catalog)
        return page(request, "trends.html", series=series, strip=strip)

    @app.get("/api/trends.json")
    def trends_json(payload: str | None = None) -> JSONResponse:
        """Every key number per payload, quantity and place across runs, and the flags."""
        from p3s.dqm.catalog import open_catalog
        from p3s.dqm.trends import quality_strip, trend_series

        catalog = open_catalog()
        return JSONResponse(
            {"trends": trend_series(catalog, payload=payload), "quality": quality_strip(catalog)}
        )

    @app.get("/plots/trend/{payload}/{quantity}.png")
    def trend_png(payload: str, quantity: str) -> Response:
        from p3s.dqm.catalog import open_catalog
        from p3s.dqm.trends import trend_series

        found = trend_series(open_catalog(), payload=payload).get(payload, {}).get(quantity)
        if found is None:
            raise HTTPException(404, f"no key number {quantity!r} of payload {payload!r}")
        title = f"{payload} {quantity.replace('_', ' ')}"
        return Response(plots.trend(title, found["unit"], found["places"]), media_type=PNG)

    @app.get("/plots/quality-strip.png")
    def quality_strip_png() -> Response:
        from p3s.dqm.catalog import open_catalog
        from p3s.dqm.trends import quality_strip

        strip = quality_strip(open_catalog())
        return Response(plots.quality_strip(strip["runs"], strip["areas"]), media_type=PNG)

    @app.get("/plots/overlay/{run}/{subrun}/{payload}.png")
    def overlay_png(run: int, subrun: int, payload: str, h: str) -> Response:
        """Histogram ``h`` of a run's ROOT product with the reference run's overlaid."""
        from p3s.dqm.catalog import open_catalog
        from p3s.dqm.references import overlay

        found = overlay(open_catalog(), run, subrun, payload, h)
        if found is None:
            raise HTTPException(404, f"run {run} subrun {subrun} has no {payload} histogram {h}")
        png = plots.overlay(
            f"{h} · run {run} subrun {subrun}",
            found.xlabel,
            found.edges,
            found.values,
            f"run {run}",
            found.reference,
            f"reference run {found.reference_run}" if found.reference_run is not None else "",
            log=h.endswith("profiled_fft"),
        )
        return Response(png, media_type=PNG)

    @app.get("/products/{run}/{subrun}/{payload}/{name}")
    def product(run: int, subrun: int, payload: str, name: str) -> Response:
        media = content.MEDIA_TYPES.get(Path(name).suffix.lower())
        found = content.find_product(run, subrun, payload, name) if media else None
        if found is None:
            raise HTTPException(404, "no such product")
        return Response(
            content.read_product(found["url"]),
            media_type=media,
            headers={"Cache-Control": "max-age=60", "ETag": f'"{found["sha256"]}"'},
        )

    return app


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)

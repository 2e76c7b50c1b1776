"""``p3s dqm ...`` prints the catalog in tables that fit 80 columns, or as JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from p3s.cli import app
from p3s.dqm.catalog import Catalog, ProductInfo

NAME = "np04_raw_run004649_0003_dl1.h5"


@pytest.fixture
def catalog_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    catalog = Catalog(url)
    common = {"file_url": f"root://eos.cern.ch//eos/np04/claimed/{NAME}", "run": 4649, "subrun": 3}
    catalog.record_payload(
        NAME,
        "purity",
        outcome="completed",
        purity=[
            {"tpc": t, "timestamp": "2018-10-01T07:03:00Z", "lifetime_ms": 3.5 + t,
             "error_ms": 0.25, "count": 12}
            for t in (1, 2, 5)
        ],
        products=[
            ProductInfo(
                "tpc1_dqdt.png", "root://eos.cern.ch//eos/np04/outbox/x.png", 29951, "a" * 64,
                "7350f864",
            )
        ],
        **common,
    )  # fmt: skip
    catalog.record_payload(
        NAME,
        "tpc_monitor",
        outcome="completed",
        planes=[
            {"apa": a, "plane_name": p, "n_channels": 800, "n_dead": 2, "n_noisy": 11,
             "mean_rms": 4.567, "mean_pedestal": 2345.4}
            for a in range(6) for p in "UVX"
        ],
        **common,
    )  # fmt: skip
    catalog.record_payload(
        NAME, "beam", outcome="corrupt", reason="corrupt input: truncated", **common
    )
    catalog.dispose()
    return url


def _run(*args: str) -> str:
    result = CliRunner().invoke(app, ["dqm", *args], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(
    "args",
    [
        ["files"],
        ["results"],
        ["purity"],
        ["purity", "--run", "4649"],
        ["channels", "--run", "4649"],
        ["products", "--run", "4649"],
    ],
)
def test_tables_fit_80_columns(catalog_url: str, args: list[str]) -> None:
    output = _run(*args, "--catalog", catalog_url)
    assert "4649" in output or NAME in output or "tpc1_dqdt.png" in output
    assert max(len(line) for line in output.splitlines()) <= 80, output


def test_files_show_each_payload_outcome(catalog_url: str) -> None:
    output = _run("files", "--catalog", catalog_url)
    assert NAME in output
    assert "purity:ok" in output and "tpc:ok" in output and "beam:corrupt" in output


def test_json_lines_carry_every_field(catalog_url: str) -> None:
    rows = [
        json.loads(line) for line in _run("purity", "--json", "--catalog", catalog_url).splitlines()
    ]
    assert [(r["run"], r["tpc"], r["lifetime_ms"], r["count"]) for r in rows] == [
        (4649, 1, 4.5, 12),
        (4649, 2, 5.5, 12),
        (4649, 5, 8.5, 12),
    ]
    (product,) = [json.loads(x) for x in _run("products", "-r", "4649", "--json",
                                                "--catalog", catalog_url).splitlines()]  # fmt: skip
    assert product["sha256"] == "a" * 64 and product["url"].startswith("root://")
    channels = _run("channels", "--run", "4649", "--json", "--catalog", catalog_url)
    assert len(channels.splitlines()) == 18


def test_an_empty_answer_says_so(catalog_url: str) -> None:
    result = CliRunner().invoke(app, ["dqm", "channels", "--run", "1", "--catalog", catalog_url])
    assert result.exit_code == 0
    assert "no channel status for run 1" in result.output

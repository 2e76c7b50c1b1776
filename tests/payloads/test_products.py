"""PayloadResult.write: ROOT, PNG, CSV and JSON products that read back."""

from __future__ import annotations

import json

import hist
import numpy as np
import pandas as pd
import pytest
import uproot
from p3s.payloads.products import PayloadResult, new_figure, safe_name


def _result() -> PayloadResult:
    rng = np.random.default_rng(1)
    h1 = hist.Hist.new.Reg(20, 0.0, 1.0, name="x", label="x [cm]").Double()
    h1.fill(rng.random(500))
    h2 = hist.Hist.new.Reg(4, 0, 4, name="x").Reg(3, 0, 3, name="y").Int64()
    h2.fill([0.5, 1.5, 1.5, 3.5], [0.5, 2.5, 2.5, 1.5])
    fig = new_figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    return PayloadResult(
        payload="beam",
        run=4649,
        subrun=3,
        summary={"n": np.int64(7), "mean": np.float32(0.25), "bad": float("nan"), "ids": [1, 2]},
        histograms={"fiber03/persistent_fft": h1, "profile": h2},
        tables={"per/channel": pd.DataFrame({"channel": [1, 2], "rms": [3.5, 4.0]})},
        figures={"overview/momentum": fig},
    )


def test_write_products_read_back_with_equal_values(tmp_path):
    result = _result()
    expected_1d = result.histograms["fiber03/persistent_fft"].values().copy()
    expected_2d = result.histograms["profile"].values().copy()

    paths = result.write(tmp_path / "out")

    names = sorted(p.name for p in paths)
    assert names == sorted(
        ["beam.root", "overview_momentum.png", "per_channel.csv", "summary.json"]
    )
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    with uproot.open(tmp_path / "out" / "beam.root") as root:
        np.testing.assert_array_equal(root["fiber03/persistent_fft"].values(), expected_1d)
        np.testing.assert_array_equal(root["profile"].values(), expected_2d)
        assert root.classnames()["fiber03;1"] == "TDirectory"
    assert (tmp_path / "out" / "overview_momentum.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(tmp_path / "out" / "per_channel.csv")
    assert table["rms"].tolist() == [3.5, 4.0]


def test_summary_json_lists_products_and_converts_numpy(tmp_path):
    _result().write(tmp_path)
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc["payload"] == "beam" and doc["run"] == 4649 and doc["subrun"] == 3
    assert doc["summary"] == {"n": 7, "mean": 0.25, "bad": None, "ids": [1, 2]}
    assert sorted(doc["products"]) == ["beam.root", "overview_momentum.png", "per_channel.csv"]


def test_write_leaves_no_temporary_files_and_closes_figures(tmp_path):
    result = _result()
    fig = result.figures["overview/momentum"]
    result.write(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert fig.axes == []


def test_failed_write_leaves_no_partial_file(tmp_path):
    result = PayloadResult("beam", 1, 1, {}, histograms={"h": object()})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        result.write(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_result_without_histograms_writes_no_root_file(tmp_path):
    paths = PayloadResult("purity", 2, 1, {"tau_ms": 3.0}).write(tmp_path)
    assert [p.name for p in paths] == ["summary.json"]


@pytest.mark.parametrize("bad", ["", "  ", ".."])
def test_safe_name_refuses_names_that_are_not_files(bad):
    with pytest.raises(ValueError, match="cannot be used as a file name"):
        safe_name(bad)

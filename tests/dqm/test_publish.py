"""Artifact keys and summaries of the DQM flows, and which stage failures are retried."""

from __future__ import annotations

import re

import pytest
from p3s.tasks.publish import _jsonable, artifact_key, summary_markdown
from p3s.tasks.stage import transient_storage_failure
from prefect.states import Completed, Failed

from p3s.dqm.catalog import ProductInfo
from p3s.files import storage

PURITY_SUMMARY = {
    "n_events": 2,
    "n_tracks": 5,
    "purity": [
        {"run": 42, "tpc": 1, "timestamp": "2018-10-01T07:03:00Z", "lifetime_ms": 3.4615,
         "error_ms": 0.327, "count": 5},
        {"run": 42, "tpc": 2, "timestamp": "2018-10-01T07:03:00Z", "lifetime_ms": float("nan"),
         "error_ms": float("nan"), "count": 0},
    ],
}  # fmt: skip


@pytest.mark.parametrize("payload", ["tpc_monitor", "purity", "evdisplay", "beam"])
def test_artifact_keys_are_lowercase_letters_digits_and_dashes(payload: str) -> None:
    key = artifact_key("summary", payload, 4649, 3)
    assert re.fullmatch(r"[a-z0-9-]+", key)
    assert key.endswith("-run004649-0003")


def test_summary_lists_key_numbers_purity_rows_and_products() -> None:
    product = ProductInfo("purity.root", "file:///o/purity.root", 27023, "0" * 64, "6794abc2")
    text = summary_markdown(
        "purity",
        file_name="np04_raw_run000042_0007_dl1.h5",
        run=42,
        subrun=7,
        summary=PURITY_SUMMARY,
        products=[product],
        outbox_url="file:///o",
    )
    assert "# purity · run 42 subrun 7" in text
    assert "| n tracks | 5 |" in text
    assert "| 1 | 3.462 | 0.327 | 5 |" in text
    assert "| 2 | n/a | n/a | 0 |" in text
    assert "| [purity.root](file:///o/purity.root) | 27023 | 6794abc2 |" in text


def test_summary_json_for_the_catalog_has_no_nan() -> None:
    import numpy as np

    clean = _jsonable({"a": np.float32(1.5), "b": [float("nan"), np.int64(3)], "c": {"d": None}})
    assert clean == {"a": 1.5, "b": [None, 3], "c": {"d": None}}


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (storage.StorageUnavailable("server unreachable"), True),
        (storage.ChecksumMismatch("copy differs"), True),
        (storage.FileVanished("gone"), False),
        (ValueError("a bug"), False),
    ],
)
def test_only_transient_storage_failures_are_retried(error: Exception, retried: bool) -> None:
    assert transient_storage_failure(None, None, Failed(data=error)) is retried  # type: ignore[arg-type]


def test_a_completed_state_is_not_retried() -> None:
    assert transient_storage_failure(None, None, Completed(data=1)) is False  # type: ignore[arg-type]

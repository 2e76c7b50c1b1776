"""The check files: the packaged ones load; a malformed one is refused naming file, line, field;
the statistics and reasons say what they should."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from p3s.dqm.checks import (
    PACKAGED_CHECKS,
    CheckFileError,
    RangeCheck,
    chi2_pvalue,
    judge,
    ks_distance,
    load_check_file,
    load_checks,
    peak_excess_db,
)

GOOD_FILE = """\
payload: purity
version: 3
checks:
  - name: lifetime
    quantity: lifetime_ms
    per: tpc
    good: [2.0, null]
    medium: [1.5, null]
"""


def test_every_payload_has_a_packaged_check_file() -> None:
    checks = load_checks(PACKAGED_CHECKS)
    assert set(checks) == {"tpc_monitor", "purity", "beam", "evdisplay"}
    assert checks["tpc_monitor"].version.startswith("v1-")


def test_the_version_changes_with_the_text(tmp_path: Path) -> None:
    path = tmp_path / "purity.yaml"
    path.write_text(GOOD_FILE)
    first = load_check_file(path).version
    path.write_text(GOOD_FILE.replace("2.0", "2.5"))
    assert load_check_file(path).version != first
    assert load_check_file(path).version.startswith("v3-")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (("    per: tpc\n", "    per: tpcs\n"), "line 4 (lifetime), field per: 'tpcs'"),
        (("    good: [2.0, null]\n", "    good: [3.0, 2.0]\n"), "field good: min 3 is above max 2"),
        (("    good: [2.0, null]\n", ""), "line 4 (lifetime): field good is missing"),
        (("    medium:", "    mediun:"), "line 4: unknown field 'mediun'"),
        (("version: 3", "version: three"), "field version: 'three' is not an integer"),
        (("  - name: lifetime", "  - name: Life Time"), "line 4, field name: 'Life Time'"),
        (("    quantity: lifetime_ms\n", ""), "give exactly one of the fields quantity"),
        (("checks:", "checks: {"), "not valid YAML"),
    ],
)
def test_a_malformed_check_file_is_refused_naming_file_line_and_field(
    tmp_path: Path, change: tuple[str, str], words: str
) -> None:
    path = tmp_path / "purity.yaml"
    path.write_text(GOOD_FILE.replace(*change))
    with pytest.raises(CheckFileError) as info:
        load_check_file(path)
    assert str(info.value).startswith(str(path))
    assert words in str(info.value)


def test_a_file_named_for_another_payload_is_refused(tmp_path: Path) -> None:
    (tmp_path / "beam.yaml").write_text(GOOD_FILE)
    with pytest.raises(CheckFileError, match="field payload: 'purity' is not 'beam'"):
        load_checks(tmp_path)


def test_reasons_name_value_limit_and_unit() -> None:
    check = RangeCheck("noise-rms", "mean_rms", good=(2.0, 6.0), medium=(1.5, 8.0))
    assert judge(check, 7.0, "ADC", "mean_rms in APA 1 plane U") == (
        "medium",
        "mean_rms in APA 1 plane U is 7 ADC, above the limit 6 ADC (noise-rms).",
    )
    assert judge(check, 1.0, "ADC", "x")[1] == "x is 1 ADC, below the limit 1.5 ADC (noise-rms)."
    assert judge(check, 3.0, "ADC", "x") == ("good", "x is 3 ADC, within 2-6 ADC (noise-rms).")
    assert judge(check, None, "ADC", "x")[0] == "bad"


def test_histogram_statistics_tell_same_shapes_from_different_ones() -> None:
    rng = np.random.default_rng(1)
    a = np.histogram(rng.normal(0, 1, 5000), bins=40, range=(-4, 4))[0]
    b = np.histogram(rng.normal(0, 1, 5000), bins=40, range=(-4, 4))[0]
    c = np.histogram(rng.normal(0.5, 1, 5000), bins=40, range=(-4, 4))[0]
    assert chi2_pvalue(a, b) > 0.001 > chi2_pvalue(a, c)
    assert ks_distance(a, b) < 0.05 < ks_distance(a, c)
    spectrum = 1.0 / (1 + np.arange(1000) / 100.0) * rng.uniform(0.9, 1.1, 1000)
    line = spectrum.copy()
    line[300:302] *= 100
    assert peak_excess_db(spectrum, spectrum) == 0.0
    assert peak_excess_db(line, spectrum) > 12

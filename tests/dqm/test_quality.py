"""Quality flags of simulated runs: each fault flagged bad for the right APA/TPC and reason.

Five runs go through the real TPC and purity monitors into a SQLite catalog: run 100 (clean,
the reference run), 101 (clean), 102 (40 more noisy channels in APA 1), 103 (a coherent line
at 150 kHz in fiber 21 of APA 1) and 104 (electron lifetime 1 ms in TPC 2). The checks are
the packaged ones (p3s/dqm/checks).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from p3s.dqm.catalog import Catalog
from p3s.dqm.checks import load_checks
from p3s.dqm.quality import evaluate_file, recheck
from tests.dqm.simruns import process, simulate_run

FAULTS = {
    100: {},
    101: {},
    102: {"extra_noisy": {1: 40}},
    103: {"coherent_lines": {21: [150.0]}},
    104: {"lifetimes_ms": {1: 3.0, 2: 1.0}},
}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    folder = tmp_path_factory.mktemp("quality")
    catalog = Catalog(f"sqlite:///{folder / 'catalog.sqlite'}")
    for run, faults in FAULTS.items():
        process(catalog, simulate_run(folder, run, **faults), folder / "outbox")
    catalog.set_reference(100)
    for row in catalog.completed():
        evaluate_file(catalog, row["file"], row["payload"])
    return catalog


def _flags(catalog: Catalog, run: int) -> dict[str, dict]:
    return {f["area"]: f for f in catalog.dq_flags(run)}


def test_clean_runs_are_good_in_every_area(catalog: Catalog) -> None:
    for run in (100, 101):
        flags = _flags(catalog, run)
        assert set(flags) == {"APA 0", "APA 1", "TPC 1", "TPC 2", "run"}
        assert {area: f["quality"] for area, f in flags.items() if f["quality"] != "good"} == {}


def test_purity_measures_a_signal_to_noise_per_tpc_and_checks_it(catalog: Catalog) -> None:
    checks = [c for c in catalog.dq_checks(101) if c["check"] == "signal-to-noise"]
    assert sorted(c["place"] for c in checks) == ["TPC 1", "TPC 2"]
    for check in checks:
        assert check["quality"] == "good", check["reason"]
        assert 20 < check["value"] < 1000
        assert check["unit"] == "times the noise"
        assert check["reason"].endswith(
            " times the noise, at least 20 times the noise (signal-to-noise)."
        )


def test_extra_noisy_channels_flag_their_apa_bad_naming_value_limit_and_unit(
    catalog: Catalog,
) -> None:
    flags = _flags(catalog, 102)
    assert flags["APA 1"]["quality"] == "bad"
    assert flags["APA 0"]["quality"] == "good"
    assert flags["run"]["quality"] == "bad"
    (reason,) = [r for r in flags["APA 1"]["reasons"] if "noisy-fraction" in r]
    assert reason.startswith("noisy_fraction in APA 1 is 8.2 %, above the limit 5 %")


def test_a_coherent_line_in_one_fiber_flags_its_apa_bad(catalog: Catalog) -> None:
    flags = _flags(catalog, 103)
    assert flags["APA 1"]["quality"] == "bad"
    assert flags["APA 0"]["quality"] == "good"
    reasons = flags["APA 1"]["reasons"]
    assert "coherent_lines in APA 1 fiber 21 is 1 lines, above the limit 0 lines" in reasons[0]
    # The reference comparison of the same fiber's profiled FFT sees the line too.
    assert any(
        r.startswith("apa1/fiber021/profiled_fft against reference run 100 is ")
        and "above the limit 9 dB" in r
        for r in reasons
    )
    bad_places = {c["place"] for c in catalog.dq_checks(103, worse_than_good=True)}
    assert bad_places == {"APA 1 fiber 21"}


def test_a_low_lifetime_flags_its_tpc_bad(catalog: Catalog) -> None:
    flags = _flags(catalog, 104)
    assert flags["TPC 2"]["quality"] == "bad"
    assert flags["TPC 1"]["quality"] == "good"
    assert {a for a, f in flags.items() if f["quality"] != "good"} == {"TPC 2", "run"}
    (reason,) = flags["TPC 2"]["reasons"]
    assert reason.startswith("lifetime_ms in TPC 2 is ")
    assert reason.endswith(" ms, below the limit 1.5 ms (lifetime).")


def test_flags_carry_the_check_files_versions(catalog: Catalog) -> None:
    checks = load_checks()
    run_flag = _flags(catalog, 101)["run"]
    assert run_flag["versions"] == (
        f"purity {checks['purity'].version}, tpc_monitor {checks['tpc_monitor'].version}"
    )
    assert {c["version"] for c in catalog.dq_checks(101) if c["payload"] == "purity"} == {
        checks["purity"].version
    }


def test_a_changed_limit_and_recheck_change_flags_without_a_payload_run(
    catalog: Catalog, tmp_path: Path
) -> None:
    folder = tmp_path / "checks"
    shutil.copytree(load_checks()["purity"].path.parent, folder)
    purity = folder / "purity.yaml"
    text = purity.read_text()
    purity.write_text(
        text.replace("version: 1", "version: 2")
        .replace("good: [2.0, null]", "good: [0.5, null]")
        .replace("medium: [1.5, null]", "medium: [0.5, null]")  # fmt: skip
    )
    results_before = catalog.results(run=104)
    report = recheck(catalog, run=104, checks=load_checks(folder))
    assert report.changes[(104, "TPC 2")] == ("bad", "good")
    assert report.changes[(104, "run")] == ("bad", "good")
    assert _flags(catalog, 104)["TPC 2"]["versions"].startswith("purity v2-")
    # No payload ran: the results (and their flow run ids, times) are those of before.
    assert catalog.results(run=104) == results_before
    # Back to the packaged limits: bad again.
    report = recheck(catalog, run=104)
    assert report.changes[(104, "TPC 2")] == ("good", "bad")


def test_reference_set_list_unset_on_the_command_line(catalog: Catalog) -> None:
    from typer.testing import CliRunner

    from p3s.cli import app

    runner = CliRunner()
    url = catalog.url
    done = runner.invoke(app, ["dqm", "reference", "set", "101", "-p", "purity", "--catalog", url])
    assert done.exit_code == 0, done.output
    listed = runner.invoke(app, ["dqm", "reference", "list", "--json", "--catalog", url])
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert rows == [{"payload": "*", "run": 100}, {"payload": "purity", "run": 101}]
    assert catalog.reference_run("purity") == 101
    assert catalog.reference_run("tpc_monitor") == 100
    refused = runner.invoke(app, ["dqm", "reference", "set", "999", "--catalog", url])
    assert refused.exit_code == 1
    assert "run 999 has no completed result of any payload" in refused.output
    wrong = runner.invoke(app, ["dqm", "reference", "set", "100", "-p", "tpc", "--catalog", url])
    assert wrong.exit_code == 2
    assert "'tpc' is not a DQM payload" in wrong.output
    done = runner.invoke(app, ["dqm", "reference", "unset", "-p", "purity", "--catalog", url])
    assert done.exit_code == 0, done.output
    assert catalog.references() == {"*": 100}


def test_recheck_on_the_command_line_after_a_changed_limit(
    catalog: Catalog, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from p3s.cli import app

    folder = tmp_path / "checks"
    shutil.copytree(load_checks()["tpc_monitor"].path.parent, folder)
    tpc = folder / "tpc_monitor.yaml"
    tpc.write_text(tpc.read_text().replace("good: [0.0, 2.0]\n    medium: [0.0, 5.0]", "good: [0.0, 10.0]\n    medium: [0.0, 20.0]"))  # noqa: E501 # fmt: skip
    runner = CliRunner()
    results_before = catalog.results(run=102)
    args = ["dqm", "recheck", "--run", "102", "--json", "--checks", str(folder)]
    done = runner.invoke(app, [*args, "--catalog", catalog.url], env={"PREFECT_API_URL": ""})
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["evaluated"] == 2
    assert {"run": 102, "area": "APA 1", "before": "bad", "after": "good"} in report["changed"]
    assert _flags(catalog, 102)["APA 1"]["quality"] == "good"
    assert catalog.results(run=102) == results_before
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "purity.yaml").write_text("payload: purity\nversion: 1\nchecks:\n  - name: x\n")
    refused = runner.invoke(app, ["dqm", "recheck", "--checks", str(bad), "--catalog", catalog.url])
    assert refused.exit_code == 1
    assert "purity.yaml, line 4 (x): field good is missing" in refused.output.replace("\n", "")
    done = runner.invoke(app, ["dqm", "recheck", "--since", "2018-01-01", "--catalog", catalog.url])
    assert done.exit_code == 0, done.output
    assert _flags(catalog, 102)["APA 1"]["quality"] == "bad"

"""``p3s simulate --noisy APA=N --coherent-line FIBER=KHZ``: the faults the quality tests use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from p3s.payloads.rawformat import Geometry
from p3s.payloads.simulate import load_truth
from typer.testing import CliRunner

from p3s.cli import app


def test_simulate_injects_noisy_channels_in_one_apa_and_a_line_in_one_fiber(
    tmp_path: Path,
) -> None:
    args = ["simulate", str(tmp_path), "--apas", "2", "--events", "1", "--ticks", "300"]
    args += ["--noisy", "1=30", "--coherent-line", "21=150", "--seed", "4"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    truth = load_truth(done.stdout.strip())  # tests may read /truth; payloads never do
    assert truth.coherent_lines == {21: [150.0]}
    geometry = Geometry.reduced(n_apas=2)
    apa = geometry.apa[np.isin(geometry.channel, truth.noisy_channels)]
    assert np.sum(apa == 1) >= 30
    assert np.sum(apa == 0) <= 5  # only the ~0.5 % drawn at random


def test_no_coherent_line_at_all_and_bad_values_are_refused(tmp_path: Path) -> None:
    args = ["simulate", str(tmp_path), "--events", "1", "--ticks", "300", "--coherent-line"]
    done = CliRunner().invoke(app, [*args, "none"])
    assert done.exit_code == 0, done.output
    assert load_truth(done.stdout.strip()).coherent_lines == {}
    refused = CliRunner().invoke(app, [*args, "21:150"])
    assert refused.exit_code == 2
    assert "'21:150' is not KEY=VALUE" in refused.output

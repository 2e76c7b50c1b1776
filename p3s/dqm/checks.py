"""Data-quality checks: declared in one YAML file per payload, evaluated on stored outputs.

A check file (``p3s/dqm/checks/<payload>.yaml``, or ``P3S_DQM_CHECKS_DIR``) reads::

    payload: tpc_monitor
    version: 1                 # raise it with every change of a limit
    aggregate: worst           # worst of the checks per APA/TPC and per run
    checks:
      - name: noise-rms
        quantity: mean_rms     # a key number (p3s.dqm.keynumbers)
        per: plane             # only key numbers measured per plane (apa, plane, fiber, tpc, run)
        good: [2.0, 6.0]       # inclusive [min, max]; null leaves a side open
        medium: [1.5, 8.0]     # outside good but inside medium is medium; outside both is bad
      - name: rms-shape
        histogram: "apa*/rms_plane*"   # glob over the ROOT product's histogram paths
        test: chi2             # chi2: p-value of a chi-square homogeneity test
        good: [0.01, null]     # ks: Kolmogorov distance of the normalised cumulative contents
        medium: [0.001, null]  # peaks: narrow peaks of a spectrum above the reference's [dB]

Each check may also say ``counts: false`` (shown, never flags the run) and ``missing: bad``
(the quality when the value could not be measured; default bad). Every result carries a
one-sentence reason naming the value, the limit and the unit.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from p3s.dqm.keynumbers import KeyNumber, area_of, key_numbers

__all__ = [
    "PACKAGED_CHECKS",
    "CheckFile",
    "CheckFileError",
    "CheckResult",
    "HistogramCheck",
    "RangeCheck",
    "chi2_pvalue",
    "evaluate",
    "ks_distance",
    "peak_excess_db",
    "load_check_file",
    "load_checks",
]

PACKAGED_CHECKS = Path(__file__).with_name("checks")
"""The check files shipped with p3s."""
PER = ("apa", "plane", "fiber", "tpc", "run")
TESTS = ("chi2", "ks", "peaks")
TEST_UNITS = {"chi2": "p-value", "ks": "KS distance", "peaks": "dB"}
PEAK_WINDOW_BINS = 31
"""Width of the running median a spectrum's narrow peaks are measured against [bins]."""
PEAK_SMOOTH_BINS = 5
"""Width of the running mean a spectrum is smoothed with first [bins]: a fiber's mean
spectrum is dominated by its few noisy channels, so single bins fluctuate by several dB."""
QUALITIES = ("good", "medium", "bad")
_CHECK_KEYS = {
    "name",
    "description",
    "quantity",
    "per",
    "histogram",
    "test",
    "good",
    "medium",
    "counts",
    "missing",
}


class CheckFileError(ValueError):
    """A check file that cannot be used; the message names the file, line and field."""


Limits = tuple[float | None, float | None]


@dataclass(frozen=True)
class RangeCheck:
    """A key number in a range: good inside ``good``, medium inside ``medium``, else bad."""

    name: str
    quantity: str
    good: Limits
    medium: Limits | None = None
    per: str | None = None
    counts: bool = True
    missing: str = "bad"
    description: str = ""


@dataclass(frozen=True)
class HistogramCheck:
    """Each histogram matching ``pattern`` compared with the reference run's (``test``)."""

    name: str
    pattern: str
    test: str
    good: Limits
    medium: Limits | None = None
    counts: bool = True
    missing: str = "bad"
    description: str = ""


@dataclass(frozen=True)
class CheckFile:
    """One payload's checks, as read from its file; ``version`` labels the results."""

    payload: str
    number: int
    digest: str
    path: Path
    aggregate: str
    checks: tuple[RangeCheck | HistogramCheck, ...]

    @property
    def version(self) -> str:
        """``v<number>-<first 8 hex digits of the file's sha256>``."""
        return f"v{self.number}-{self.digest[:8]}"


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check at one place."""

    check: str
    payload: str
    area: str
    place: str
    quality: str
    value: float | None
    unit: str
    reason: str
    version: str
    counts: bool = True
    product: str = ""
    reference_run: int | None = None

    def as_row(self) -> dict[str, Any]:
        """The catalog row (:meth:`p3s.dqm.catalog.Catalog.record_checks`)."""
        return {
            "check": self.check,
            "area": self.area,
            "place": self.place,
            "quality": self.quality,
            "value": self.value,
            "unit": self.unit,
            "reason": self.reason,
            "version": self.version,
            "counts": self.counts,
            "product": self.product,
            "reference_run": self.reference_run,
        }


# -- reading ---------------------------------------------------------------------------------


def _limits(value: Any, where: str) -> Limits:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(
            v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in value
        )  # fmt: skip
    ):
        raise CheckFileError(f"{where}: expected [min, max] with numbers or null, got {value!r}")
    lo, hi = (None if v is None else float(v) for v in value)
    if lo is not None and hi is not None and lo > hi:
        raise CheckFileError(f"{where}: min {lo:g} is above max {hi:g}")
    return lo, hi


def _check(entry: Any, where: str) -> RangeCheck | HistogramCheck:
    if not isinstance(entry, dict):
        raise CheckFileError(f"{where}: a check is a mapping, got {type(entry).__name__}")
    unknown = sorted(set(entry) - _CHECK_KEYS)
    if unknown:
        raise CheckFileError(
            f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(sorted(_CHECK_KEYS))})"
        )
    name = entry.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise CheckFileError(f"{where}, field name: {name!r} is not a lowercase name")
    where = f"{where} ({name})"
    if "good" not in entry:
        raise CheckFileError(f"{where}: field good is missing")
    good = _limits(entry["good"], f"{where}, field good")
    medium = _limits(entry["medium"], f"{where}, field medium") if "medium" in entry else None
    missing = entry.get("missing", "bad")
    if missing not in QUALITIES:
        raise CheckFileError(f"{where}, field missing: {missing!r} is not one of {QUALITIES}")
    counts = entry.get("counts", True)
    if not isinstance(counts, bool):
        raise CheckFileError(f"{where}, field counts: {counts!r} is not true or false")
    common = {
        "name": name,
        "good": good,
        "medium": medium,
        "counts": counts,
        "missing": missing,
        "description": str(entry.get("description", "")),
    }
    if ("quantity" in entry) == ("histogram" in entry):
        raise CheckFileError(f"{where}: give exactly one of the fields quantity and histogram")
    if "quantity" in entry:
        per = entry.get("per")
        if per is not None and per not in PER:
            raise CheckFileError(f"{where}, field per: {per!r} is not one of {PER}")
        if "test" in entry:
            raise CheckFileError(f"{where}, field test: only a histogram check has a test")
        return RangeCheck(quantity=str(entry["quantity"]), per=per, **common)
    test = entry.get("test")
    if test not in TESTS:
        raise CheckFileError(f"{where}, field test: {test!r} is not one of {TESTS}")
    return HistogramCheck(pattern=str(entry["histogram"]), test=test, **common)


def load_check_file(path: str | Path) -> CheckFile:
    """Read and validate one check file.

    Raises:
        CheckFileError: not YAML, or a field is missing, unknown or wrong; the message names
            the file, the line of the check and the field.
    """
    path = Path(path)
    text = path.read_text()
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CheckFileError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise CheckFileError(f"{path}: expected a mapping with payload, version and checks")
    for key in ("payload", "version", "checks"):
        if key not in data:
            raise CheckFileError(f"{path}: field {key} is missing")
    unknown = sorted(set(data) - {"payload", "version", "aggregate", "checks", "description"})
    if unknown:
        raise CheckFileError(f"{path}: unknown top-level field {unknown[0]!r}")
    if not isinstance(data["version"], int) or isinstance(data["version"], bool):
        raise CheckFileError(f"{path}, field version: {data['version']!r} is not an integer")
    aggregate = data.get("aggregate", "worst")
    if aggregate != "worst":
        raise CheckFileError(f"{path}, field aggregate: {aggregate!r}; only 'worst' is known")
    if not isinstance(data["checks"], list):
        raise CheckFileError(f"{path}, field checks: expected a list of checks")
    nodes = {k.value: v for k, v in root.value}["checks"].value
    checks = []
    for entry, node in zip(data["checks"], nodes, strict=True):
        checks.append(_check(entry, f"{path}, line {node.start_mark.line + 1}"))
    names = [c.name for c in checks]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise CheckFileError(f"{path}: check name {doubled[0]!r} is used twice")
    return CheckFile(
        payload=str(data["payload"]),
        number=data["version"],
        digest=hashlib.sha256(text.encode()).hexdigest(),
        path=path,
        aggregate=aggregate,
        checks=tuple(checks),
    )


def load_checks(folder: str | Path | None = None) -> dict[str, CheckFile]:
    """Every check file of ``folder`` (default ``settings.dqm_checks_dir``, else packaged)."""
    if folder is None:
        from p3s.system.settings import get_settings

        folder = get_settings().dqm_checks_dir or PACKAGED_CHECKS
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckFileError(f"{folder}: the checks folder does not exist")
    files = {}
    for path in sorted(folder.glob("*.yaml")):
        checks = load_check_file(path)
        if checks.payload != path.stem:
            raise CheckFileError(f"{path}, field payload: {checks.payload!r} is not {path.stem!r}")
        files[checks.payload] = checks
    return files


# -- statistics ------------------------------------------------------------------------------


def chi2_pvalue(counts: np.ndarray, reference: np.ndarray) -> float:
    """p-value of a chi-square test that two histograms' contents share one shape.

    Args:
        counts, reference: bin contents (any positive scale: only the shapes are compared),
            1-D ``numpy.ndarray`` of equal length.

    Returns:
        The probability (0 to 1) of a chi-square at least this large for histograms of one
        shape (the unweighted two-sample test, bins empty in both left out); 1.0 when fewer
        than two bins are filled.
    """
    from scipy.stats import chi2

    a, b = np.asarray(counts, float).ravel(), np.asarray(reference, float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"histograms of {a.size} and {b.size} bins cannot be compared")
    n_a, n_b = a.sum(), b.sum()
    filled = (a + b) > 0
    if n_a <= 0 or n_b <= 0 or filled.sum() < 2:
        return 1.0
    a, b = a[filled], b[filled]
    stat = float(np.sum((a * math.sqrt(n_b / n_a) - b * math.sqrt(n_a / n_b)) ** 2 / (a + b)))
    return float(chi2.sf(stat, filled.sum() - 1))


def ks_distance(contents: np.ndarray, reference: np.ndarray) -> float:
    """Kolmogorov distance between two histograms: the largest difference of their
    normalised cumulative contents (0: same shape, 1: disjoint), for any non-negative contents
    (a spectrum in ADC^2/Hz as well as counts)."""
    a, b = np.asarray(contents, float).ravel(), np.asarray(reference, float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"histograms of {a.size} and {b.size} bins cannot be compared")
    a, b = np.clip(np.nan_to_num(a), 0, None), np.clip(np.nan_to_num(b), 0, None)
    if a.sum() <= 0 or b.sum() <= 0:
        return 0.0 if a.sum() == b.sum() else 1.0
    return float(np.max(np.abs(np.cumsum(a) / a.sum() - np.cumsum(b) / b.sum())))


def peak_excess_db(spectrum: np.ndarray, reference: np.ndarray) -> float:
    """How far a spectrum's narrow peaks stand above the reference's, in dB.

    Each spectrum (1-D, any power unit such as ADC^2/Hz; the DC bin is left out) is smoothed
    over :data:`PEAK_SMOOTH_BINS` bins and taken in dB over its own running median of
    :data:`PEAK_WINDOW_BINS` bins, which removes its level and broad shape (noise shaping,
    track signal); the result is the largest difference of the two over the bins: 1-4 dB
    between clean simulated runs, 11 dB and more for a new coherent line of 2-4 ADC.
    """
    from scipy.ndimage import median_filter, uniform_filter1d

    a, b = np.asarray(spectrum, float).ravel(), np.asarray(reference, float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"spectra of {a.size} and {b.size} bins cannot be compared")
    if a.size < 3:
        return 0.0

    def excess(x: np.ndarray) -> np.ndarray:
        smooth = uniform_filter1d(np.nan_to_num(x[1:]), PEAK_SMOOTH_BINS, mode="nearest")
        level = 10 * np.log10(np.maximum(smooth, 1e-30))
        return level - median_filter(level, size=PEAK_WINDOW_BINS, mode="nearest")

    return float(np.max(excess(a) - excess(b)))


_TESTS = {"chi2": chi2_pvalue, "ks": ks_distance, "peaks": peak_excess_db}


# -- evaluation ------------------------------------------------------------------------------


def _inside(value: float, limits: Limits) -> bool:
    lo, hi = limits
    return (lo is None or value >= lo) and (hi is None or value <= hi)


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.4g}"


def _limit_words(value: float, limits: Limits, unit: str) -> str:
    lo, hi = limits
    if lo is not None and value < lo:
        return f"below the limit {_fmt(lo)} {unit}".rstrip()
    return f"above the limit {_fmt(hi if hi is not None else value)} {unit}".rstrip()


def _range_words(limits: Limits, unit: str) -> str:
    lo, hi = limits
    if lo is None:
        return f"at most {_fmt(hi)} {unit}".rstrip() if hi is not None else "any value"
    if hi is None:
        return f"at least {_fmt(lo)} {unit}".rstrip()
    return f"within {_fmt(lo)}-{_fmt(hi)} {unit}".rstrip()


def judge(
    check: RangeCheck | HistogramCheck, value: float | None, unit: str, subject: str
) -> tuple[str, str]:
    """The quality of ``value`` against ``check``'s limits and its one-sentence reason."""
    if value is None:
        return check.missing, f"{subject} could not be measured ({check.name}: {check.missing})."
    shown = f"{subject} is {_fmt(value)} {unit}".rstrip()
    if _inside(value, check.good):
        return "good", f"{shown}, {_range_words(check.good, unit)} ({check.name})."
    if check.medium is not None and _inside(value, check.medium):
        return "medium", f"{shown}, {_limit_words(value, check.good, unit)} ({check.name})."
    limits = check.medium if check.medium is not None else check.good
    return "bad", f"{shown}, {_limit_words(value, limits, unit)} ({check.name})."


def _selected(check: RangeCheck, number: KeyNumber) -> bool:
    if number.quantity != check.quantity:
        return False
    if check.per is None:
        return True
    have = {
        "fiber": number.fiber is not None,
        "plane": number.plane is not None and number.fiber is None,
        "apa": number.apa is not None and number.plane is None and number.fiber is None,
        "tpc": number.tpc is not None and number.apa is None,
        "run": number.apa is None and number.tpc is None,
    }
    return have[check.per]


_PLACE_RE = {
    "apa": re.compile(r"apa(\d+)"),
    "tpc": re.compile(r"tpc(\d+)"),
    "fiber": re.compile(r"fiber(\d+)"),
    "plane": re.compile(r"plane([UVX])"),
}


def place_of_histogram(payload: str, key: str) -> tuple[str, str]:
    """(area, place in words) of a histogram path such as ``apa1/fiber021/profiled_fft``."""
    found = {k: m.group(1) for k, r in _PLACE_RE.items() if (m := r.search(key))}
    apa = int(found["apa"]) if "apa" in found else None
    tpc = int(found["tpc"]) if "tpc" in found else None
    area = area_of(payload, apa=apa, tpc=tpc)
    words = [area]
    if "plane" in found:
        words.append(f"plane {found['plane']}")
    if "fiber" in found:
        words.append(f"fiber {int(found['fiber'])}")
    return area, " ".join(words)


HistogramSource = Callable[[Sequence[str]], Mapping[str, np.ndarray]]
"""Lazily read histograms whose paths match any of some glob patterns: path -> bin contents
(1-D or 2-D ``numpy.ndarray``)."""


@dataclass
class Outputs:
    """The stored outputs of one payload on one file that the checks read.

    Attributes:
        summary: the summary (``summary.json``'s ``summary``).
        histograms: path -> contents of the ROOT product (read when a histogram check needs
            it), or None when the payload wrote no ROOT file.
        reference: the same for the reference run (None: no reference run set or stored).
        reference_run: the reference run's number.
        product: the ROOT product's name, for the reasons and links.
    """

    summary: Mapping[str, Any]
    histograms: HistogramSource | None = None
    reference: HistogramSource | None = None
    reference_run: int | None = None
    product: str = ""
    _cache: dict[str, Mapping[str, np.ndarray]] = field(default_factory=dict)

    def read(self, which: str, patterns: Sequence[str]) -> Mapping[str, np.ndarray] | None:
        """The histograms of the run (``own``) or of the reference (``ref``) that match
        ``patterns``: all the histogram checks' patterns are read at the first call."""
        source = self.histograms if which == "own" else self.reference
        if source is None:
            return None
        if which not in self._cache:
            self._cache[which] = source(patterns)
        return self._cache[which]


def _histogram_results(
    checks: CheckFile, check: HistogramCheck, outputs: Outputs
) -> list[CheckResult]:
    patterns = [c.pattern for c in checks.checks if isinstance(c, HistogramCheck)]
    own, ref = outputs.read("own", patterns), outputs.read("ref", patterns)
    if own is None or ref is None:
        return []  # nothing to compare with: no reference run set (or no ROOT product)
    unit = TEST_UNITS[check.test]
    results = []
    for key in sorted(k for k in own if fnmatch.fnmatchcase(k, check.pattern)):
        area, place = place_of_histogram(checks.payload, key)
        subject = f"{key} against reference run {outputs.reference_run}"
        if key not in ref:
            quality, reason = (
                check.missing,
                (
                    f"{key} has no counterpart in reference run {outputs.reference_run} "
                    f"({check.name}: {check.missing})."
                ),
            )
            value = None
        else:
            value = _TESTS[check.test](own[key], ref[key])
            quality, reason = judge(check, value, unit, subject)
        results.append(
            CheckResult(
                check.name,
                checks.payload,
                area,
                place,
                quality,
                value,
                unit,
                reason,
                checks.version,
                check.counts,
                f"{outputs.product}:{key}",
                outputs.reference_run,
            )  # fmt: skip
        )
    return results


def evaluate(checks: CheckFile, outputs: Outputs) -> list[CheckResult]:
    """Every check of ``checks`` on one payload's stored outputs.

    Histogram checks need a reference run; without one they give no result (the run is
    judged on its numbers alone).
    """
    numbers = key_numbers(checks.payload, outputs.summary)
    results: list[CheckResult] = []
    for check in checks.checks:
        if isinstance(check, HistogramCheck):
            results += _histogram_results(checks, check, outputs)
            continue
        for number in numbers:
            if not _selected(check, number):
                continue
            subject = f"{number.quantity} in {number.place}"
            quality, reason = judge(check, number.value, number.unit, subject)
            results.append(
                CheckResult(
                    check.name,
                    checks.payload,
                    number.area,
                    number.place,
                    quality,
                    number.value,
                    number.unit,
                    reason,
                    checks.version,
                    check.counts,
                )  # fmt: skip
            )
    return results


def read_root_histograms(source: Any, patterns: Sequence[str] = ("*",)) -> dict[str, np.ndarray]:
    """path -> bin contents of the histograms of a ROOT file (a path or an open file object)
    whose paths match any of the glob ``patterns`` (the others are not read)."""
    import uproot

    out: dict[str, np.ndarray] = {}
    with uproot.open(source) as root:
        for key, classname in root.classnames(cycle=False).items():
            if not classname.startswith(("TH1", "TH2", "TH3", "TProfile")):
                continue
            if any(fnmatch.fnmatchcase(key, p) for p in patterns):
                out[key] = np.asarray(root[key].values(flow=False))
    return out


def worst(qualities: Sequence[str]) -> str:
    """The worst of some qualities (good when there are none)."""
    return max(qualities, key=QUALITIES.index, default="good")

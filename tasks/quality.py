"""The quality flag of a DQM run: the data-quality checks on what the payload just stored.

:func:`evaluate_quality` runs after the catalog has the payload's result (``record_result``):
it evaluates the payload's check file (:mod:`p3s.dqm.checks`) on the stored summary and ROOT
product against the reference run, records the checks and the run's flags per APA/TPC in the
catalog and emits ``p3s.dqm.quality`` for each flag that became worse (the bad-flag alarm).
A check file that cannot be read is logged as an error naming the file, line and field; the
DQM run itself stays completed (its products are good; ``p3s dqm recheck`` evaluates it once
the file is fixed); so does any error of the evaluation, logged with its traceback.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from p3s.dqm.catalog import open_catalog
from p3s.dqm.checks import CheckFileError, load_checks
from p3s.dqm.events import emit_quality
from p3s.dqm.quality import evaluate_file


@task(name="quality", retries=0, persist_result=False, cache_policy=NO_CACHE)
def evaluate_quality(payload: str, *, file_name: str) -> list[str]:
    """Evaluate ``payload``'s checks on its stored outputs of ``file_name``.

    Returns:
        ``"AREA: quality"`` for each flag of the file's run (``run`` is the whole run).
    """
    logger = get_run_logger()
    try:
        checks = load_checks()
    except CheckFileError as exc:
        logger.error("data-quality checks not evaluated: %s", exc)
        return []
    try:
        changes = evaluate_file(open_catalog(), file_name, payload, checks)
    except Exception:  # noqa: BLE001 - the run's products stand; recheck evaluates them later
        logger.exception("data-quality checks of %s on %s failed", payload, file_name)
        return []
    emitted = emit_quality(changes)
    flags = [f"{c.area}: {c.quality}" for c in changes]
    if flags:
        logger.info("quality of run %s: %s", changes[0].run, ", ".join(flags))
    if emitted:
        logger.warning("%d flag(s) got worse: %s", emitted, "; ".join(
            r for c in changes if c.quality != "good" for r in c.reasons[:1]))  # fmt: skip
    return flags

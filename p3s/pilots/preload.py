"""Imported once by each pilot's fork server, so that every flow-run child starts warm.

Everything imported here is shared (copy-on-write) by the children forked for flow runs: the
Prefect flow engine and client, every flow module of ``p3s.flows`` and every DQM payload
module. A flow module that fails to import is skipped here; the child reports the error when
it needs that flow.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import pkgutil

import prefect.flow_engine  # noqa: F401
import prefect.flows  # noqa: F401
from prefect.client.orchestration import get_client  # noqa: F401


def _import_flows() -> None:
    with contextlib.suppress(Exception):
        # By name, as a worker loads a deployment's entrypoint: the pilots do not depend on them.
        flows = importlib.import_module("p3s.flows")
        for info in pkgutil.iter_modules(flows.__path__):
            with contextlib.suppress(Exception):
                importlib.import_module(f"p3s.flows.{info.name}")


_import_flows()
# Every DQM payload module (numpy, scipy, hist, uproot, matplotlib: about 0.8 CPU-s), which the
# DQM flows import only when a payload runs: held here once, each DQM child starts with them.
with contextlib.suppress(Exception):
    from p3s.payloads.runner import PAYLOADS, load_payload

    for _name in PAYLOADS:
        load_payload(_name)
# One TLS context for every client of every child, built here once (see share_tls_contexts).
with contextlib.suppress(Exception):
    import certifi
    from prefect.client import orchestration

    from p3s.pilots.run_process import share_tls_contexts

    share_tls_contexts()
    orchestration.ssl.create_default_context(cafile=certifi.where())  # as Prefect calls it
with contextlib.suppress(Exception):
    from p3s.pilots.execute import settle_client_handshakes

    settle_client_handshakes()
with contextlib.suppress(Exception):
    from p3s.pilots.execute import settle_result_storage

    settle_result_storage()
# Children fork from here: keep the collector off the objects imported so far, so that a
# child's first collection does not write to (and so copy) every page that holds them.
gc.collect()
gc.freeze()

"""The Prefect block that stores a registered p3s workflow template (GraphML) by name.

Templates live on the Prefect server, beside the deployments, so that the ``p3s-workflow``
deployment can run one by name on any worker. The block document's name is the template name
in lowercase with ``_`` and ``.`` turned into ``-`` (Prefect's rule for block names); the
template's own name is kept in :attr:`WorkflowTemplate.template_name`.
"""

from __future__ import annotations

import re

from prefect.blocks.core import Block
from pydantic import Field


def block_document_name(template_name: str) -> str:
    """The block document name of a template (lowercase letters, digits and dashes)."""
    return re.sub(r"[^a-z0-9-]", "-", template_name.lower())


class WorkflowTemplate(Block):
    """A p3s workflow template (GraphML), as registered with ``p3s workflow add``."""

    _block_type_name = "p3s Workflow Template"
    _block_type_slug = "p3s-workflow-template"
    _description = (
        "A p3s GraphML workflow template: nodes are jobs, edges the files between them. "
        "Run it with `p3s workflow submit NAME` or the p3s-workflow/template deployment."
    )

    template_name: str = Field(description="The template's name, as given to p3s workflow add.")
    graphml: str = Field(description="The GraphML document as registered.")
    source: str = Field("", description="The file it was registered from.")
    registered_at: str = Field("", description="When it was registered (ISO 8601, UTC).")
    nodes: int = Field(0, description="Number of nodes (jobs).")
    edges: int = Field(0, description="Number of edges (files).")

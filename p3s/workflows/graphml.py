"""p3s workflow templates in GraphML: read, validate, draw as a NetworkX graph, write back.

A template is a directed acyclic graph whose nodes are jobs and whose edges are the files that
pass between them (schema: ``tests/data/p3s-reference/README.md``). Keys are matched by their
``attr.name`` whatever their ids (``d101`` or ``payload``); keys of other names (graph editors
add colours and positions) are ignored.

The reader refuses a template, naming the file, the line, the node or edge and the attribute
at fault, when it has: a cycle, an edge to an unknown node, a missing required attribute, a
value of the wrong type, an ``env`` that is not a JSON object, an edge data type that is not
registered (``settings.workflow.datatypes``), or a payload outside the payload roots
(:func:`p3s.jobs.policy.resolve_command`, with the site path map). Every fault found is
reported at once, one per line.

NetworkX's own GraphML reader is not used for reading: it creates the unknown end of an edge
silently, merges repeated edges and knows no line numbers. The graph it returns
(:meth:`Template.graph`) is a :class:`networkx.DiGraph`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.parsers import expat

import networkx as nx
from pydantic import BaseModel, Field

from p3s.jobs.model import ENV_NAME_RE, env_name_problem
from p3s.jobs.policy import PayloadRefused, resolve_command

NS = "http://graphml.graphdrawing.org/xmlns"
#: Node attributes of the p3s schema: name -> (python type, required).
NODE_SCHEMA: dict[str, tuple[type, bool]] = {
    "payload": (str, True),
    "env": (str, False),
    "jobtype": (str, True),
    "timelimit": (int, True),
    "priority": (int, False),
}
#: Edge attributes of the p3s schema: name -> (python type, required).
EDGE_SCHEMA: dict[str, tuple[type, bool]] = {
    "name": (str, True),
    "dirpath": (str, True),
    "datatype": (str, True),
    "datatag": (str, True),
    "comment": (str, False),
}
#: The key ids p3s used; :func:`to_graphml` writes these.
P3S_KEY_IDS = {
    ("node", "payload"): "d101",
    ("node", "env"): "d102",
    ("node", "jobtype"): "d103",
    ("node", "timelimit"): "d104",
    ("node", "priority"): "d105",
    ("edge", "name"): "d1",
    ("edge", "dirpath"): "d2",
    ("edge", "datatype"): "d3",
    ("edge", "datatag"): "d4",
    ("edge", "comment"): "d5",
}
GRAPHML_TYPES = {"boolean", "int", "long", "float", "double", "string"}
NOOP = "noop"
#: Node ids and template names: letters, digits, ``_ . -`` (``:`` joins edge ends in fileinfo).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: A datatag becomes an environment variable.
DATATAG_RE = re.compile(rf"^{ENV_NAME_RE.pattern}$")
#: Templates larger than this are refused before parsing (bytes).
MAX_TEMPLATE_BYTES = 20_000_000
_LINE = "{urn:p3s}line"


class TemplateError(ValueError):
    """A template that cannot be accepted; the message says where and why, one fault a line."""


class NodeSpec(BaseModel):
    """One node of a template: a job."""

    id: str
    payload: str = ""
    env: dict[str, str] = Field(default_factory=dict)
    jobtype: str
    timelimit: int = Field(ge=0, description="Time limit in seconds; 0 means none.")
    priority: int = Field(0, ge=0, le=10)
    line: int | None = None

    @property
    def noop(self) -> bool:
        """A node that runs nothing and completes at once."""
        return self.jobtype == NOOP


class EdgeSpec(BaseModel):
    """One edge of a template: a file that its source writes and its target reads."""

    source: str
    target: str
    name: str
    dirpath: str
    datatype: str
    datatag: str
    comment: str = ""
    line: int | None = None

    @property
    def key(self) -> str:
        """How fileinfo JSON names this edge: ``"source:target"``."""
        return f"{self.source}:{self.target}"

    @property
    def path(self) -> str:
        """``dirpath + name`` as p3s set it (a missing ``/`` between them is added)."""
        return file_path(self.dirpath, self.name)

    def label(self) -> str:
        return f"edge '{self.source} -> {self.target}'"


class Template(BaseModel):
    """A validated workflow template."""

    name: str
    nodes: list[NodeSpec]
    edges: list[EdgeSpec]
    source: str = "<template>"

    def node(self, node_id: str) -> NodeSpec:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(f"template {self.name!r} has no node {node_id!r}")

    def graph(self) -> nx.DiGraph:
        """The template as a NetworkX graph; node and edge attributes are the specs' fields."""
        graph = nx.DiGraph(name=self.name)
        for node in self.nodes:
            graph.add_node(node.id, **node.model_dump(exclude={"id", "line"}))
        for edge in self.edges:
            graph.add_edge(
                edge.source, edge.target, **edge.model_dump(exclude={"source", "target", "line"})
            )
        return graph


def file_path(dirpath: str, name: str) -> str:
    """p3s's ``dirpath + name``; a ``/`` is put between them when ``dirpath`` lacks one."""
    return dirpath + name if dirpath.endswith("/") else f"{dirpath}/{name}"


def check_file_name(name: str) -> str | None:
    """Why ``name`` cannot be an edge's file name, or None if it can."""
    if not name or name in {".", ".."} or "/" in name or "\0" in name:
        return f"{name!r} is not a plain file name (no '/', not empty, not '.' or '..')"
    return None


def check_dirpath(dirpath: str) -> str | None:
    """Why ``dirpath`` cannot be an edge's folder, or None if it can."""
    if not dirpath.startswith("/") or "\0" in dirpath:
        return f"{dirpath!r} is not an absolute folder path"
    if ".." in dirpath.split("/"):
        return f"{dirpath!r} contains '..'"
    return None


def anchor_payload(payload: str, roots: Sequence[Path]) -> str:
    """Resolve a payload's relative first word (``bin/p3s-dqm``) under the payload roots.

    A template that names its executable relative to a payload root runs wherever the roots
    are; the first root that holds the file wins. Absolute paths, bare command names and
    payloads whose first word is quoted are returned unchanged.
    """
    text = payload.strip()
    word = text.split(None, 1)[0] if text else ""
    if not word or word.startswith("/") or "/" not in word or word[0] in "'\"":
        return payload
    for root in roots:
        candidate = Path(root) / word
        if candidate.is_file():
            return shlex.quote(str(candidate)) + text[len(word) :]
    return payload


def vet_payload(
    node_id: str,
    payload: str,
    env: Mapping[str, str],
    *,
    roots: Sequence[Path],
    prefix_map: Mapping[str, str],
    trusted: bool = True,
) -> str | None:
    """Why a node's payload may not run, or None if the payload policy accepts it."""
    try:
        resolve_command(
            anchor_payload(payload, roots),
            env,
            roots=roots,
            prefix_map=prefix_map,
            trusted=trusted,
        )
    except PayloadRefused as exc:
        return str(exc)
    return None


def _parse_xml(text: str | bytes, source: str) -> ET.Element:
    """Parse XML into an ElementTree, each element's line kept in a private attribute.

    Entity declarations are refused (no external or exponential entities).
    """
    parser = expat.ParserCreate(namespace_separator="}")
    builder = ET.TreeBuilder()

    def start(tag: str, attrs: dict[str, str]) -> None:
        attrs[_LINE] = str(parser.CurrentLineNumber)
        builder.start(tag, attrs)

    def no_entities(name: str, *_: object) -> None:
        raise TemplateError(
            f"{source}: line {parser.CurrentLineNumber}: entity declaration {name!r} refused"
        )

    parser.StartElementHandler = start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.EntityDeclHandler = no_entities
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(text, True)
    except expat.ExpatError as exc:
        raise TemplateError(
            f"{source}: line {exc.lineno}, column {exc.offset}: not well-formed XML: "
            f"{expat.ErrorString(exc.code)}"
        ) from None
    return builder.close()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if _local(child.tag) == name]


def _line(element: ET.Element) -> int:
    return int(element.get(_LINE, "0"))


class _Key(BaseModel):
    id: str
    domain: str
    name: str
    type: str
    default: str | None
    line: int


class _Reader:
    """One pass over a GraphML document, collecting every fault with its place."""

    def __init__(
        self,
        source: str,
        *,
        roots: Sequence[Path],
        prefix_map: Mapping[str, str],
        datatypes: Mapping[str, str],
        check_payloads: bool,
    ) -> None:
        self.source = source
        self.roots = roots
        self.prefix_map = prefix_map
        self.datatypes = datatypes
        self.check_payloads = check_payloads
        self.problems: list[str] = []

    def fault(self, line: int | None, what: str, message: str) -> None:
        where = f"line {line}: " if line else ""
        self.problems.append(f"{self.source}: {where}{what}: {message}")

    # -- keys ---------------------------------------------------------------------------------
    def read_keys(self, root: ET.Element) -> dict[str, _Key]:
        keys: dict[str, _Key] = {}
        for element in _children(root, "key"):
            line = _line(element)
            key_id = element.get("id")
            name = element.get("attr.name")
            domain = element.get("for", "all")
            kind = element.get("attr.type", "string")
            label = f"<key id={key_id!r}>"
            if not key_id:
                self.fault(line, "<key>", "has no id attribute")
                continue
            if key_id in keys:
                self.fault(line, label, f"id {key_id!r} is declared twice")
                continue
            if kind not in GRAPHML_TYPES:
                self.fault(
                    line,
                    label,
                    f"attr.type {kind!r} is not a GraphML type "
                    f"({', '.join(sorted(GRAPHML_TYPES))})",
                )
                continue
            defaults = _children(element, "default")
            default = (defaults[0].text or "") if defaults else None
            keys[key_id] = _Key(
                id=key_id,
                domain=domain,
                name=name or key_id,
                type=kind,
                default=default,
                line=line,
            )
        integers = {("node", a) for a, (t, _) in NODE_SCHEMA.items() if t is int}
        for key in keys.values():
            domains = ("node", "edge") if key.domain == "all" else (key.domain,)
            is_int = any((domain, key.name) in integers for domain in domains)
            if is_int and key.type not in ("int", "long", "string"):
                self.fault(
                    key.line,
                    f"<key id={key.id!r}> ({key.name})",
                    f'attr.type {key.type!r}: {key.name} is an integer (declare attr.type="int")',
                )
        return keys

    def data_of(
        self, element: ET.Element, domain: str, keys: Mapping[str, _Key], what: str
    ) -> dict[str, str]:
        """The schema attributes of a node or an edge as raw text, defaults applied."""
        schema = NODE_SCHEMA if domain == "node" else EDGE_SCHEMA
        values: dict[str, str] = {}
        for key in keys.values():
            if key.domain in (domain, "all") and key.name in schema and key.default is not None:
                values[key.name] = key.default
        for data in _children(element, "data"):
            key_id = data.get("key")
            key = keys.get(key_id or "")
            if key is None:
                self.fault(_line(data), what, f"<data key={key_id!r}> names no declared <key>")
                continue
            if key.domain not in (domain, "all"):
                self.fault(
                    _line(data),
                    what,
                    f"<data key={key_id!r}> ({key.name}) is declared for {key.domain}s",
                )
                continue
            if key.name in schema:
                values[key.name] = "".join(data.itertext())
        return values

    def typed(
        self, raw: Mapping[str, str], schema: Mapping[str, tuple[type, bool]], line: int, what: str
    ) -> tuple[dict[str, Any], bool]:
        """Convert and check the attributes: the good values, and False if any fault was found
        (the good values are still checked further, so that every fault shows at once)."""
        ok = True
        values: dict[str, Any] = {}
        for attr, (pytype, required) in schema.items():
            if attr not in raw:
                if required:
                    self.fault(line, f"{what} attribute '{attr}'", "missing (required)")
                    ok = False
                continue
            text = raw[attr]
            if pytype is int:
                try:
                    values[attr] = int(text.strip())
                except ValueError:
                    self.fault(line, f"{what} attribute '{attr}'", f"{text!r} is not an integer")
                    ok = False
            else:
                values[attr] = text.strip() if attr != "payload" else text
        return values, ok

    # -- nodes --------------------------------------------------------------------------------
    def parse_env(self, text: str, line: int, what: str) -> dict[str, str] | None:
        if not text.strip():
            return {}
        try:
            env = json.loads(text)
        except json.JSONDecodeError as exc:
            self.fault(line, f"{what} attribute 'env'", f"not valid JSON ({exc.msg}): {text!r}")
            return None
        if not isinstance(env, dict):
            self.fault(
                line, f"{what} attribute 'env'", f"must be a JSON object, got {type(env).__name__}"
            )
            return None
        clean: dict[str, str] = {}
        ok = True
        for name, value in env.items():
            label = f"{what} attribute 'env[{json.dumps(name)}]'"
            problem = env_name_problem(name)
            if problem:
                self.fault(line, label, problem)
                ok = False
            elif isinstance(value, bool) or not isinstance(value, str | int | float):
                self.fault(line, label, f"the value must be a string or a number, got {value!r}")
                ok = False
            elif "\0" in str(value):
                self.fault(line, label, "the value holds a NUL character")
                ok = False
            else:
                clean[name] = str(value)
        return clean if ok else None

    def read_node(self, element: ET.Element, keys: Mapping[str, _Key]) -> NodeSpec | None:
        line = _line(element)
        node_id = element.get("id")
        if not node_id:
            self.fault(line, "<node>", "has no id attribute")
            return None
        what = f"node '{node_id}'"
        if not NAME_RE.match(node_id):
            self.fault(line, what, "node ids use letters, digits, '_', '.' and '-' only")
            return None
        if _children(element, "graph"):
            self.fault(line, what, "nested graphs are not supported")
            return None
        raw = self.data_of(element, "node", keys, what)
        if raw.get("jobtype", "").strip() == NOOP and "payload" not in raw:
            raw["payload"] = ""
        # Every attribute is checked, whatever faults the others have.
        values, ok = self.typed(raw, NODE_SCHEMA, line, what)
        env = self.parse_env(values.pop("env", ""), line, what)
        ok = ok and env is not None
        if "jobtype" in values and not values["jobtype"]:
            self.fault(line, f"{what} attribute 'jobtype'", "is empty")
            ok = False
        if values.get("timelimit", 0) < 0:
            self.fault(line, f"{what} attribute 'timelimit'", "must be 0 (none) or more seconds")
            ok = False
        if not 0 <= values.get("priority", 0) <= 10:
            self.fault(line, f"{what} attribute 'priority'", "must be within 0..10")
            ok = False
        if "payload" in values and values.get("jobtype") != NOOP and self.check_payloads:
            refused = vet_payload(
                node_id, values["payload"], env or {}, roots=self.roots, prefix_map=self.prefix_map
            )
            if refused:
                self.fault(line, f"{what} attribute 'payload'", refused)
                ok = False
        if not ok:
            return None
        return NodeSpec(id=node_id, env=env, line=line, **values)

    # -- edges --------------------------------------------------------------------------------
    def read_edge(
        self, element: ET.Element, keys: Mapping[str, _Key], nodes: Mapping[str, NodeSpec]
    ) -> EdgeSpec | None:
        line = _line(element)
        source, target = element.get("source"), element.get("target")
        what = f"edge '{source} -> {target}'"
        ok = True
        for end, node_id in (("source", source), ("target", target)):
            if not node_id:
                self.fault(line, what, f"has no {end} attribute")
                ok = False
            elif node_id not in nodes:
                self.fault(line, what, f"{end} {node_id!r} is not a node of the graph")
                ok = False
        if element.get("directed", "true") == "false":
            self.fault(line, what, 'is undirected (directed="false"); a workflow is directed')
            ok = False
        values, typed_ok = self.typed(
            self.data_of(element, "edge", keys, what), EDGE_SCHEMA, line, what
        )
        ok = ok and typed_ok
        checks = {
            "name": check_file_name,
            "dirpath": check_dirpath,
            "datatag": lambda tag: (
                None if DATATAG_RE.match(tag) else f"{tag!r} is not an environment variable name"
            ),
            "datatype": lambda kind: (
                None
                if kind in self.datatypes
                else f"{kind!r} is not a registered data type "
                f"({', '.join(sorted(self.datatypes))}; settings.workflow.datatypes)"
            ),
        }
        for attr, check in checks.items():
            problem = check(values[attr]) if attr in values else None
            if problem:
                self.fault(line, f"{what} attribute '{attr}'", problem)
                ok = False
        if not ok or source is None or target is None:
            return None
        return EdgeSpec(source=source, target=target, line=line, **values)

    # -- graph --------------------------------------------------------------------------------
    def check_datatags(self, edges: Sequence[EdgeSpec]) -> None:
        """Two files may not share one variable on the same node."""
        seen: dict[tuple[str, str], EdgeSpec] = {}
        for edge in edges:
            for node_id in (edge.source, edge.target):
                earlier = seen.setdefault((node_id, edge.datatag), edge)
                if earlier is not edge and earlier.path != edge.path:
                    self.fault(
                        edge.line,
                        f"{edge.label()} attribute 'datatag'",
                        f"{edge.datatag} on node '{node_id}' is already {earlier.path!r} "
                        f"({earlier.label()}, line {earlier.line}); give one of them another tag",
                    )

    def check_cycles(self, lines: Mapping[tuple[str, str], int]) -> None:
        """Report one cycle of every strongly connected part of the declared graph.

        ``lines`` holds every edge between declared nodes, whatever faults its attributes or
        its nodes have, so that a cycle shows beside the other faults of the template.
        """
        graph = nx.DiGraph(list(lines))
        # A part of one node is a cycle only with an edge to itself.
        parts = [
            graph.subgraph(part)
            for part in nx.strongly_connected_components(graph)
            if len(part) > 1 or nx.number_of_selfloops(graph.subgraph(part))
        ]
        # Each cycle starts at the first edge of its part in the file, in the file's order.
        firsts = [min(part.edges, key=lines.__getitem__) for part in parts]
        for part, start in sorted(zip(parts, firsts, strict=True), key=lambda p: lines[p[1]]):
            cycle = nx.find_cycle(part, source=start[0])
            path = " -> ".join([str(u) for u, _ in cycle] + [str(cycle[0][0])])
            first = cycle[0]
            self.fault(
                lines[(first[0], first[1])],
                f"edge '{first[0]} -> {first[1]}'",
                f"closes the cycle {path}; a workflow must be acyclic",
            )

    def read(self, text: str | bytes, name: str) -> Template:
        root = _parse_xml(text, self.source)
        if _local(root.tag) != "graphml":
            raise TemplateError(f"{self.source}: line 1: the root element is not <graphml>")
        graphs = _children(root, "graph")
        if len(graphs) != 1:
            raise TemplateError(
                f"{self.source}: a template holds exactly one <graph>, found {len(graphs)}"
            )
        graph = graphs[0]
        if graph.get("edgedefault", "directed") != "directed":
            self.fault(
                _line(graph),
                f"<graph edgedefault={graph.get('edgedefault')!r}>",
                'a workflow is directed (edgedefault="directed")',
            )
        keys = self.read_keys(root)
        nodes: dict[str, NodeSpec] = {}
        declared: set[str] = set()
        for element in _children(graph, "node"):
            node_id = element.get("id")
            if node_id in declared:
                self.fault(_line(element), f"node '{node_id}'", "is declared twice")
                continue
            if node_id:
                declared.add(node_id)
            node = self.read_node(element, keys)
            if node is not None:
                nodes[node.id] = node
        for element in _children(graph, "hyperedge"):
            self.fault(_line(element), "<hyperedge>", "hyperedges are not supported")
        edges: list[EdgeSpec] = []
        seen: dict[tuple[str, str], int] = {}
        for element in _children(graph, "edge"):
            pair = (element.get("source") or "", element.get("target") or "")
            if pair in seen:
                self.fault(
                    _line(element),
                    f"edge '{pair[0]} -> {pair[1]}'",
                    f"repeats the edge at line {seen[pair]}; one edge per pair of nodes",
                )
                continue
            seen[pair] = _line(element)
            # An edge to a node that exists but was refused is not reported twice.
            known = {**nodes, **dict.fromkeys(declared - nodes.keys())}
            edge = self.read_edge(element, keys, known)
            if edge is not None and edge.source in nodes and edge.target in nodes:
                edges.append(edge)
        if not declared:
            self.fault(_line(graph), "<graph>", "has no node")
        self.check_datatags(edges)
        self.check_cycles({pair: line for pair, line in seen.items() if set(pair) <= declared})
        if self.problems:
            raise TemplateError("\n".join(self.problems))
        return Template(name=name, nodes=list(nodes.values()), edges=edges, source=self.source)


def _defaults(
    roots: Sequence[Path] | None,
    prefix_map: Mapping[str, str] | None,
    datatypes: Mapping[str, str] | None,
) -> tuple[Sequence[Path], Mapping[str, str], Mapping[str, str]]:
    if roots is not None and prefix_map is not None and datatypes is not None:
        return roots, prefix_map, datatypes
    from p3s.system.settings import get_settings

    settings = get_settings()
    return (
        settings.payload_roots if roots is None else roots,
        settings.path_map if prefix_map is None else prefix_map,
        settings.workflow.datatypes if datatypes is None else datatypes,
    )


def check_template_name(name: str) -> str:
    """Return ``name`` if it can name a template, else raise :class:`TemplateError`."""
    if not NAME_RE.match(name):
        raise TemplateError(
            f"template name {name!r}: use letters, digits, '_', '.' and '-' (at most 128), "
            "starting with a letter or digit"
        )
    return name


def parse_template(
    text: str | bytes,
    *,
    name: str,
    source: str = "<template>",
    roots: Sequence[Path] | None = None,
    prefix_map: Mapping[str, str] | None = None,
    datatypes: Mapping[str, str] | None = None,
    check_payloads: bool = True,
) -> Template:
    """Validate a GraphML template and return it.

    Args:
        text: the GraphML document.
        name: the template's name (a registered template is run by it).
        source: the file it came from, for messages.
        roots: payload roots (default: the settings').
        prefix_map: site path prefixes mapped to local ones (default: ``settings.path_map``).
        datatypes: registered edge data types -> extension (default: the settings').
        check_payloads: vet every payload against the payload policy.

    Raises:
        TemplateError: one line per fault, each with the source, line, node or edge and
            attribute.
    """
    check_template_name(name)
    if len(text) > MAX_TEMPLATE_BYTES:
        raise TemplateError(f"{source}: larger than {MAX_TEMPLATE_BYTES} bytes")
    roots, prefix_map, datatypes = _defaults(roots, prefix_map, datatypes)
    reader = _Reader(
        source,
        roots=[Path(r) for r in roots],
        prefix_map=prefix_map,
        datatypes=datatypes,
        check_payloads=check_payloads,
    )
    return reader.read(text, name)


def template_name_of(path: str | os.PathLike[str]) -> str:
    """The default name of a template file: its name without ``.graphml``."""
    return Path(path).name.removesuffix(".graphml").removesuffix(".xml")


def read_template(
    path: str | os.PathLike[str], *, name: str | None = None, **options: Any
) -> Template:
    """Read and validate a GraphML template file; see :func:`parse_template`."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise TemplateError(f"{path}: cannot read the template: {exc}") from None
    return parse_template(text, name=name or template_name_of(path), source=str(path), **options)


def to_graphml(template: Template) -> str:
    """The template as GraphML in p3s's own layout (key ids ``d101``.., ``d1``..).

    The result reads back into an equal template with :func:`parse_template`.
    """
    root = ET.Element("graphml", xmlns=NS)
    for (domain, attr), key_id in P3S_KEY_IDS.items():
        schema = NODE_SCHEMA if domain == "node" else EDGE_SCHEMA
        kind = "int" if schema[attr][0] is int else "string"
        ET.SubElement(
            root, "key", {"attr.name": attr, "attr.type": kind, "for": domain, "id": key_id}
        )
    graph = ET.SubElement(root, "graph", id=template.name, edgedefault="directed")
    for node in template.nodes:
        element = ET.SubElement(graph, "node", id=node.id)
        values = {
            "payload": node.payload,
            "env": json.dumps(node.env),
            "jobtype": node.jobtype,
            "timelimit": str(node.timelimit),
            "priority": str(node.priority),
        }
        for attr, value in values.items():
            ET.SubElement(element, "data", key=P3S_KEY_IDS[("node", attr)]).text = value
    for edge in template.edges:
        element = ET.SubElement(graph, "edge", source=edge.source, target=edge.target)
        for attr in EDGE_SCHEMA:
            value = getattr(edge, attr)
            ET.SubElement(element, "data", key=P3S_KEY_IDS[("edge", attr)]).text = value
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"

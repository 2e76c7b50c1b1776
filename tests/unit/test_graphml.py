"""The GraphML reader: p3s's templates are accepted as they are, malformed ones are refused with
the file, line, node or edge and attribute at fault, and templates round-trip through export."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from p3s.workflows.graphml import (
    TemplateError,
    anchor_payload,
    parse_template,
    read_template,
    to_graphml,
)

DATA = Path(__file__).resolve().parents[1] / "data"
REFERENCE = DATA / "p3s-reference" / "workflows"
MALFORMED = DATA / "graphml"
PACKAGED_WORKFLOWS = Path(__file__).resolve().parents[2] / "payloads" / "workflows"
ROOTS = [Path("/usr/bin")]
DATATYPES = {"TXT": ".txt", "JSON": ".json", "HDF5": ".h5"}


def read(path: Path, **options):
    options = {"roots": ROOTS, "prefix_map": {}, "datatypes": DATATYPES, **options}
    return read_template(path, **options)


def test_3filters_is_read_with_its_numeric_key_ids():
    template = read(REFERENCE / "3filters.graphml")
    assert template.name == "3filters"
    assert [n.id for n in template.nodes] == ["NOOP1", "filter1", "filter2", "filter3", "NOOP2"]
    filter2 = template.node("filter2")
    assert filter2.payload == "grep -c TEST2 $INPTXT > $OUTTXT2"
    assert filter2.env == {"P3S_EXECMODE": "SHELL"}
    assert (filter2.jobtype, filter2.timelimit, filter2.priority) == ("filter", 7777, 4)
    assert template.node("NOOP1").noop and not filter2.noop
    edge = next(e for e in template.edges if e.key == "filter2:NOOP2")
    assert (edge.name, edge.dirpath, edge.datatype, edge.datatag) == (
        "output2.txt",
        "/tmp/p3sdata/",
        "TXT",
        "OUTTXT2",
    )
    assert edge.path == "/tmp/p3sdata/output2.txt"


def test_named_key_ids_and_editor_keys_are_accepted():
    template = read(REFERENCE / "twostep_named_keys.graphml")
    graph = template.graph()
    assert list(graph.edges) == [("NOOP1", "reduction"), ("reduction", "reco"), ("reco", "NOOP2")]
    # The editor's colour key is ignored, not an attribute of the node.
    assert "color" not in graph.nodes["reduction"]
    assert graph.nodes["reco"]["payload"] == "/bin/grep -c TEST $OUTTXT > $FINTXT"


@pytest.mark.parametrize("name", ["3filters", "twostep_named_keys"])
def test_export_reads_back_into_the_same_template(name, tmp_path):
    template = read(REFERENCE / f"{name}.graphml")
    out = tmp_path / f"{name}.graphml"
    out.write_text(to_graphml(template))
    again = read(out)
    assert [n.model_dump(exclude={"line"}) for n in again.nodes] == [
        n.model_dump(exclude={"line"}) for n in template.nodes
    ]
    assert [e.model_dump(exclude={"line"}) for e in again.edges] == [
        e.model_dump(exclude={"line"}) for e in template.edges
    ]
    assert 'id="d101"' in out.read_text()  # p3s's own key ids


#: Each malformed template, with what its refusal must name (regular expressions).
MALFORMED_CASES = {
    "cycle": [r"line 18: edge '\w -> \w'", r"cycle (a|b|c) -> .* -> \1"],
    "self_loop": [r"line 18: edge 'b -> b'", "cycle b -> b"],
    "unknown_node": [r"line 18: edge 'b -> filter9'", "target 'filter9' is not a node"],
    "missing_jobtype": [r"line 16: node 'b' attribute 'jobtype': missing"],
    "missing_timelimit": [r"line 16: node 'b' attribute 'timelimit': missing"],
    "missing_datatag": [r"line 17: edge 'a -> b' attribute 'datatag': missing"],
    "env_not_object": [r"line 16: node 'b' attribute 'env': must be a JSON object, got list"],
    "env_bad_json": [r"line 16: node 'b' attribute 'env': not valid JSON"],
    "unknown_datatype": [r"line 17: edge 'a -> b' attribute 'datatype': 'MP3' is not a regist"],
    "payload_outside_roots": [
        r"line 16: node 'b' attribute 'payload'.*outside the payload roots \(/usr/bin\)"
    ],
    "payload_missing": [r"node 'b' attribute 'payload'.*does not exist"],
    "payload_empty": [r"node 'b' attribute 'payload': the job has an empty payload"],
    "timelimit_not_int": [r"line 16: node 'b' attribute 'timelimit': 'fast' is not an integer"],
    "timelimit_declared_double": [r"line 7: <key id='d104'> \(timelimit\): attr.type 'double'"],
    "priority_out_of_range": [r"node 'b' attribute 'priority': must be within 0..10"],
    "duplicate_node": [r"line 17: node 'b': is declared twice"],
    "duplicate_edge": [r"line 18: edge 'a -> b': repeats the edge at line 17"],
    "datatag_not_a_variable": [r"edge 'a -> b' attribute 'datatag': 'OUT-TXT' is not an env"],
    "file_name_escapes": [r"edge 'a -> b' attribute 'name': '../../etc/passwd' is not a plain"],
    "dirpath_relative": [r"edge 'a -> b' attribute 'dirpath': 'p3sdata/' is not an absolute"],
    "datatag_conflict": [
        r"line 19: edge 'c -> b' attribute 'datatag': F on node 'b' is already "
        r"'/tmp/p3sdata/x.txt' \(edge 'a -> b', line 18\)"
    ],
    "undirected": [r"line 14: <graph edgedefault='undirected'>"],
    "not_xml": [r"line 5, column \d+: not well-formed XML"],
    "entity_expansion": [r"line 2: entity declaration 'lol' refused"],
}


@pytest.mark.parametrize("case", sorted(MALFORMED_CASES))
def test_malformed_template_is_refused_naming_the_fault(case):
    path = MALFORMED / f"{case}.graphml"
    with pytest.raises(TemplateError) as caught:
        read(path)
    message = str(caught.value)
    assert message.startswith(str(path)), message
    for pattern in MALFORMED_CASES[case]:
        assert re.search(pattern, message), f"{pattern!r} not in:\n{message}"


def test_every_malformed_file_has_a_case():
    assert {p.stem for p in MALFORMED.glob("*.graphml")} == set(MALFORMED_CASES)


def test_all_faults_are_reported_at_once(tmp_path):
    text = (MALFORMED / "missing_jobtype.graphml").read_text()
    text = text.replace('<data key="d3">TXT</data>', '<data key="d3">MP3</data>')
    path = tmp_path / "two_faults.graphml"
    path.write_text(text)
    with pytest.raises(TemplateError) as caught:
        read(path)
    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert "node 'b' attribute 'jobtype'" in lines[0]
    assert "edge 'a -> b' attribute 'datatype'" in lines[1]


def test_noop_nodes_need_no_payload_and_are_never_vetted():
    text = (MALFORMED / "payload_outside_roots.graphml").read_text()
    text = text.replace('<data key="d103">test</data>', '<data key="d103">noop</data>')
    template = parse_template(text, name="noops", roots=ROOTS, prefix_map={}, datatypes=DATATYPES)
    assert all(node.noop for node in template.nodes)


def test_key_defaults_fill_missing_attributes():
    text = (MALFORMED / "missing_timelimit.graphml").read_text()
    text = text.replace(
        'attr.type="int"    for="node" id="d104" />',
        'attr.type="int" for="node" id="d104"><default>30</default></key>',
    )
    template = parse_template(text, name="d", roots=ROOTS, prefix_map={}, datatypes=DATATYPES)
    assert template.node("b").timelimit == 30


def test_site_paths_are_mapped_before_the_payload_is_vetted(tmp_path):
    script = tmp_path / "site" / "run.sh"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    text = (MALFORMED / "payload_outside_roots.graphml").read_text()
    text = text.replace("/usr/sbin/nologin", "/afs/cern.ch/p3s/run.sh")
    template = parse_template(
        text,
        name="mapped",
        roots=[*ROOTS, tmp_path / "site"],
        prefix_map={"/afs/cern.ch/p3s": str(tmp_path / "site")},
        datatypes=DATATYPES,
    )
    assert template.node("b").payload == "/afs/cern.ch/p3s/run.sh"


def test_relative_payload_is_anchored_under_a_payload_root(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "step").write_text("#!/bin/sh\n")
    assert anchor_payload("bin/step a 'b c'", [Path("/nowhere"), tmp_path]) == (
        f"{tmp_path}/bin/step a 'b c'"
    )
    assert anchor_payload("bin/missing a", [tmp_path]) == "bin/missing a"
    assert anchor_payload("/usr/bin/true", [tmp_path]) == "/usr/bin/true"
    assert anchor_payload("grep -c X", [tmp_path]) == "grep -c X"


def test_bad_template_name_is_refused():
    with pytest.raises(TemplateError, match="template name 'a b'"):
        read(REFERENCE / "3filters.graphml", name="a b")


def test_packaged_dqm_chain_is_valid():
    from p3s.system.settings import PACKAGED_PAYLOADS, get_settings

    template = read_template(
        PACKAGED_WORKFLOWS / "dqm_chain.graphml",
        roots=[PACKAGED_PAYLOADS],
        prefix_map=get_settings().path_map,
        datatypes=get_settings().workflow.datatypes,
    )
    graph = template.graph()
    assert set(graph.successors("dataprep")) == {"evdisplay", "tpc_monitor", "summary"}
    assert set(graph.predecessors("summary")) == {"dataprep", "evdisplay", "tpc_monitor"}
    assert list(graph.successors("summary")) == ["done"]


# -- every fault at once, the cycle among them (issue 21) -------------------------------------

KEYS = "\n".join(
    f'<key attr.name="{name}" attr.type="{kind}" for="{domain}" id="{key}" />'
    for name, kind, domain, key in [
        ("payload", "string", "node", "d101"),
        ("env", "string", "node", "d102"),
        ("jobtype", "string", "node", "d103"),
        ("timelimit", "int", "node", "d104"),
        ("priority", "int", "node", "d105"),
        ("name", "string", "edge", "d1"),
        ("dirpath", "string", "edge", "d2"),
        ("datatype", "string", "edge", "d3"),
        ("datatag", "string", "edge", "d4"),
    ]
)


def node(node_id: str, payload: str = "/bin/true", jobtype: str = "test", env: str = "{}") -> str:
    jobtype_data = f'<data key="d103">{jobtype}</data>' if jobtype else ""
    return (
        f'<node id="{node_id}"><data key="d101">{payload}</data><data key="d102">{env}</data>'
        f'{jobtype_data}<data key="d104">60</data></node>'
    )


def edge(source: str, target: str, tag: str, datatype: str = "TXT") -> str:
    return (
        f'<edge source="{source}" target="{target}"><data key="d1">{tag}.txt</data>'
        f'<data key="d2">/tmp/p3sdata/</data><data key="d3">{datatype}</data>'
        f'<data key="d4">{tag}</data></edge>'
    )


def graphml(*lines: str) -> str:
    """A template whose line 3 + i is ``lines[i]``."""
    body = "\n".join(lines)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<graphml xmlns="http://graphml.graphdrawing.org'
        f'/xmlns">\n<graph edgedefault="directed">\n{body}\n</graph>\n{KEYS}\n</graphml>\n'
    )


def refusal(text: str) -> list[str]:
    with pytest.raises(TemplateError) as caught:
        parse_template(
            text, name="t", source="t.graphml", roots=ROOTS, prefix_map={}, datatypes=DATATYPES
        )
    return str(caught.value).splitlines()


def test_a_cycle_is_reported_with_every_other_fault_of_the_template():
    text = graphml(
        node("a", jobtype=""),  # line 4: no jobtype
        node("b", payload="/usr/sbin/nologin", env='{"BAD NAME;rm -rf /": "x"}'),  # line 5
        node("c"),  # line 6
        edge("a", "b", "AB", datatype="MP3"),  # line 7: unregistered data type
        edge("b", "c", "BC"),  # line 8
        edge("c", "b", "CB"),  # line 9: closes b -> c -> b, through the refused node b
    )
    assert refusal(text) == [
        "t.graphml: line 4: node 'a' attribute 'jobtype': missing (required)",
        "t.graphml: line 5: node 'b' attribute 'env[\"BAD NAME;rm -rf /\"]': not a valid "
        "environment variable name (letters, digits and '_', not starting with a digit)",
        "t.graphml: line 5: node 'b' attribute 'payload': payload '/usr/sbin/nologin' is "
        "outside the payload roots (/usr/bin); install it under a root or add its folder to "
        "P3S_PAYLOAD_ROOTS",
        "t.graphml: line 7: edge 'a -> b' attribute 'datatype': 'MP3' is not a registered data "
        "type (HDF5, JSON, TXT; settings.workflow.datatypes)",
        "t.graphml: line 8: edge 'b -> c': closes the cycle b -> c -> b; a workflow must be "
        "acyclic",
    ]


def test_every_separate_cycle_is_reported():
    text = graphml(
        *(node(n) for n in "abcde"),  # lines 4..8
        edge("a", "b", "AB"),  # line 9
        edge("b", "a", "BA"),  # line 10
        edge("c", "d", "CD"),  # line 11
        edge("e", "e", "EE"),  # line 12: a self-loop
        edge("d", "c", "DC"),  # line 13
    )
    lines = refusal(text)
    assert lines == [
        "t.graphml: line 9: edge 'a -> b': closes the cycle a -> b -> a; a workflow must be "
        "acyclic",
        "t.graphml: line 11: edge 'c -> d': closes the cycle c -> d -> c; a workflow must be "
        "acyclic",
        "t.graphml: line 12: edge 'e -> e': closes the cycle e -> e; a workflow must be acyclic",
    ]


def test_a_cycle_through_an_edge_with_bad_attributes_is_still_found():
    text = graphml(
        node("a"),  # line 4
        node("b"),  # line 5
        edge("a", "b", "OUT-TXT"),  # line 6: datatag is no variable name
        edge("b", "a", "BA"),  # line 7
    )
    lines = refusal(text)
    assert len(lines) == 2
    assert lines[0].startswith("t.graphml: line 6: edge 'a -> b' attribute 'datatag'")
    assert lines[1] == (
        "t.graphml: line 6: edge 'a -> b': closes the cycle a -> b -> a; a workflow must be acyclic"
    )


def test_every_fault_of_one_node_is_reported():
    text = graphml(
        '<node id="a"><data key="d101">/usr/sbin/nologin</data><data key="d102">'
        '{"1X": "y", "OK": "z"}</data><data key="d103">test</data><data key="d104">-1</data>'
        '<data key="d105">11</data></node>'
    )
    assert [line.split(": ", 2)[1:] for line in refusal(text)] == [
        [
            "line 4",
            "node 'a' attribute 'env[\"1X\"]': not a valid environment variable name "
            "(letters, digits and '_', not starting with a digit)",
        ],
        ["line 4", "node 'a' attribute 'timelimit': must be 0 (none) or more seconds"],
        ["line 4", "node 'a' attribute 'priority': must be within 0..10"],
        [
            "line 4",
            "node 'a' attribute 'payload': payload '/usr/sbin/nologin' is outside the "
            "payload roots (/usr/bin); install it under a root or add its folder to "
            "P3S_PAYLOAD_ROOTS",
        ],
    ]


def test_an_undirected_graph_is_reported_with_the_other_faults():
    text = graphml(node("a", jobtype="")).replace(
        '<graph edgedefault="directed">', '<graph edgedefault="undirected">'
    )
    assert refusal(text) == [
        "t.graphml: line 3: <graph edgedefault='undirected'>: a workflow is directed "
        '(edgedefault="directed")',
        "t.graphml: line 4: node 'a' attribute 'jobtype': missing (required)",
    ]

"""The DAG layout is pure: layering, ordering, coordinates and SVG are checked without a browser."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from jetdag.web import dag

DIAMOND = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}


def test_longest_path_layering_puts_a_task_below_its_deepest_parent() -> None:
    assert dag.layers(DIAMOND) == {"a": 0, "b": 1, "c": 1, "d": 2}
    # e depends on a (layer 0) and d (layer 2): it goes below d, not next to b.
    assert dag.layers({**DIAMOND, "e": ("a", "d")})["e"] == 3


def test_layering_survives_unknown_parents_and_cycles() -> None:
    assert dag.layers({"a": ("ghost",), "b": ("a", "b")}) == {"a": 0, "b": 1}
    cyc = dag.layers({"a": ("b",), "b": ("a",)})  # validation forbids it; the drawing must still terminate
    assert set(cyc) == {"a", "b"}


def test_nodes_do_not_overlap_and_edges_join_parent_to_child() -> None:
    lay = dag.layout({**DIAMOND, "e": ("a", "d")})
    boxes = list(lay.nodes.values())
    for i, n in enumerate(boxes):
        assert n.x >= 0 and n.x + n.w <= lay.width and n.y >= 0 and n.y + n.h <= lay.height
        for m in boxes[i + 1 :]:
            apart = n.x + n.w <= m.x or m.x + m.w <= n.x or n.y + n.h <= m.y or m.y + m.h <= n.y
            assert apart, (n, m)
    assert {(e.src, e.dst) for e in lay.edges} == {
        ("a", "b"),
        ("a", "c"),
        ("b", "d"),
        ("c", "d"),
        ("a", "e"),
        ("d", "e"),
    }
    long = next(e for e in lay.edges if (e.src, e.dst) == ("a", "e"))
    assert len(long.points) == 4  # bends through a dummy in each of the 2 layers it crosses
    for e in lay.edges:
        src, dst = lay.nodes[e.src], lay.nodes[e.dst]
        assert e.points[0] == (src.x + src.w / 2, src.y + src.h)
        assert e.points[-1] == (dst.x + dst.w / 2, dst.y)
        assert e.path.startswith("M") and e.path.count("C") == len(e.points) - 1


def test_barycenter_ordering_removes_avoidable_crossings() -> None:
    # Declared so that the first layer is in the "wrong" order for its children: x1->y2, x2->y1.
    deps = {"x1": (), "x2": (), "y1": ("x2",), "y2": ("x1",), "z1": ("y1",), "z2": ("y2",)}
    links = [(p, c) for c, ps in deps.items() for p in ps]
    assert dag.crossings([["x1", "x2"], ["y1", "y2"], ["z1", "z2"]], links) == 1
    lay = dag.layout(deps)
    assert dag.crossings(lay.order, links) == 0


def test_a_wide_fan_out_and_in_is_drawn_without_crossings() -> None:
    deps: dict[str, tuple[str, ...]] = {"start": ()}
    deps |= {f"t{i}": ("start",) for i in range(8)}
    deps |= {f"u{i}": (f"t{7 - i}",) for i in range(8)}  # children declared in reverse order
    deps["end"] = tuple(f"u{i}" for i in range(8))
    links = [(p, c) for c, ps in deps.items() for p in ps]
    assert dag.crossings(dag.layout(deps).order, links) == 0


def test_layout_is_deterministic_and_empty_graphs_work() -> None:
    assert dag.layout(DIAMOND) == dag.layout(DIAMOND)
    empty = dag.layout({})
    assert empty.nodes == {} and empty.edges == ()
    assert dag.svg(empty).startswith("<svg")


def test_svg_marks_every_node_with_its_state_and_escapes_names() -> None:
    deps = {"extract": (), "load<x>": ("extract",)}
    out = dag.svg(dag.layout(deps), {"extract": "succeeded"}, href="#t-{task}")
    root = ET.fromstring(out)  # well-formed XML: inline SVG in HTML must be
    ns = "{http://www.w3.org/2000/svg}"
    nodes = {g.get("data-task"): g for g in root.iter(f"{ns}g")}
    assert nodes["extract"].get("class") == "node s-succeeded"
    assert nodes["load<x>"].get("class") == "node s-waiting"  # no state yet
    assert nodes["extract"].get("id") == "node-extract"
    assert "<x>" not in out and "load&lt;x&gt;" in out
    assert len(re.findall(r'class="edge"', out)) == 1


def test_long_names_are_cut_to_fit_their_box() -> None:
    name = "a_really_long_task_name_that_would_never_fit_in_a_box_of_the_dag"
    lay = dag.layout({name: ()})
    node = lay.nodes[name]
    assert node.w == dag.MAX_W
    shown = dag.label(name, node.w)
    assert shown.endswith("…") and len(shown) * dag.CHAR_W <= node.w
    assert f"<title>{name}: waiting</title>" in dag.svg(lay)

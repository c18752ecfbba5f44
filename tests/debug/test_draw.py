"""rq.draw / rq.draw_diff: node annotations, collapsing, diffs, renderers and their errors."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

import rqcompile as rq
from rqcompile.capture.trace import capture
from rqcompile.debug.draw import to_dot
from rqcompile.debug.graphview import collapse_repeats, diff_views, view_of
from rqcompile.demo.models import CharTransformer
from rqcompile.testing.models import TinyMLP


@pytest.fixture(scope="module")
def char_qat() -> torch.fx.GraphModule:
    torch.manual_seed(0)
    m = CharTransformer(20, n_layer=2, n_embd=32, n_head=2, block_size=8)
    return rq.prepare(
        m, (torch.zeros(2, 8, dtype=torch.long),), "A4W1+2:4", overrides={"lm_head": None}
    )


def _lines(view: object) -> list[str]:
    return [ln for n in view.nodes.values() for ln in n.lines]  # type: ignore[attr-defined]


def test_qat_nodes_carry_quantization_notes(char_qat: torch.fx.GraphModule) -> None:
    view = view_of(char_qat)
    text = "\n".join(_lines(view))
    assert "W quant: W1 · 2:4" not in text  # the spec text, not a preset, heads the line
    w = [n for n in view.nodes.values() if n.kind == "quant" and n.lines[0].startswith("W quant")]
    a = [n for n in view.nodes.values() if n.kind == "quant" and n.lines[0].startswith("A quant")]
    assert len(w) == len(a) == 8  # 4 layers x 2 blocks
    assert "· 2:4" in w[0].lines[0] and "ridge λ=0.01" in w[0].lines[1]
    assert w[0].lines[2] == "blocks.0.attn.c_attn.weight 96×32"
    assert "4b affine" in a[0].lines[0]
    ops = [n for n in view.nodes.values() if n.kind == "qop"]
    assert ops[0].lines[:2] == ("linear blocks.0.attn.c_attn", "A4W1+2:4 · kernel block 32")
    assert any(n.lines[0] == "Linear lm_head" and n.kind == "fop" for n in view.nodes.values())
    assert not any("size" in ln or "Dropout" in ln for ln in text.splitlines())


def test_repeated_blocks_collapse(char_qat: torch.fx.GraphModule) -> None:
    full = view_of(char_qat)
    small = collapse_repeats(full)
    assert "collapsed:blocks.1" in small.nodes and "collapsed:blocks.0" not in small.nodes
    assert small.nodes["collapsed:blocks.1"].lines[1] == "same structure as blocks.0"
    assert not any(n.group == "blocks.1" for n in small.nodes.values())
    assert len(small.nodes) < len(full.nodes) - 30
    # edges stay connected through the collapsed node
    assert any(b == "collapsed:blocks.1" for _, b in small.edges)
    assert any(a == "collapsed:blocks.1" for a, _ in small.edges)


def test_ir_view_names_chosen_kernels(char_qat: torch.fx.GraphModule) -> None:
    exe = rq.lower(char_qat, target="reference")
    view = view_of(exe)
    text = "\n".join(_lines(view))
    assert "kernel (reference): sparse24_matmul" in text
    assert "4b affine · block 32 · ridge λ=0.01" in text
    assert not any(n.id.startswith("rq.const") for n in view.nodes.values())


def test_diff_marks_added_and_removed() -> None:
    m, ex = TinyMLP(), (torch.randn(8, 64),)
    d = diff_views(view_of(capture(m, ex)), view_of(rq.prepare(m, ex, "A4W4")))
    status = {nid: n.status for nid, n in d.nodes.items()}
    assert status["fc1"] == "removed" and status["linear"] == "added"
    assert status["fc1_input_quant"] == "added" and status["x"] == ""
    dot = to_dot(d)
    assert "#f08080" in dot and "#7bd87b" in dot and "green: added" in dot


def test_draw_dot_needs_no_renderer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _: None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    qat = rq.prepare(TinyMLP(), (torch.randn(8, 64),), "A4W4")
    assert rq.draw(qat, tmp_path / "g.dot") == "dot-text"
    assert (tmp_path / "g.dot").read_text().startswith("digraph rq {")
    with pytest.raises(rq.RQError, match="neither is installed"):
        rq.draw(qat, tmp_path / "g.png")
    with pytest.raises(rq.RQError, match="'dot' program is not on PATH"):
        rq.draw(qat, tmp_path / "g.svg", backend="graphviz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.dot"]  # nothing half-written


def test_matplotlib_fallback_warns_and_writes_png(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(shutil, "which", lambda _: None)
    qat = rq.prepare(TinyMLP(), (torch.randn(8, 64),), "A4W4")
    with pytest.warns(rq.RQWarning, match="graphviz 'dot' not found"):
        assert rq.draw(qat, tmp_path / "g.png") == "matplotlib"
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' not installed")
def test_graphviz_svg(tmp_path: Path, char_qat: torch.fx.GraphModule) -> None:
    assert rq.draw(char_qat, tmp_path / "g.svg") == "graphviz"
    svg = (tmp_path / "g.svg").read_text()
    assert "<svg" in svg and "blocks.0.attn.c_attn" in svg and "same structure as blocks.0" in svg


def test_bad_inputs(tmp_path: Path) -> None:
    qat = rq.prepare(TinyMLP(), (torch.randn(8, 64),), "A4W4")
    with pytest.raises(rq.ConfigError, match="format 'jpg' is not one of"):
        rq.draw(qat, tmp_path / "g.jpg")
    with pytest.raises(rq.ConfigError, match="backend 'tikz'"):
        rq.draw(qat, tmp_path / "g.svg", backend="tikz")
    with pytest.raises(TypeError, match="rq.draw\\(\\) takes a prepared graph"):
        rq.draw(TinyMLP(), tmp_path / "g.svg")

"""svgplot: nice ticks and labels, NaN gaps, constant and empty series, log scale, escaping."""

from __future__ import annotations

import math
import re
from xml.etree import ElementTree

import pytest

from orchestrator.svgplot import (
    Axes,
    Band,
    Figure,
    HLine,
    HSpan,
    Line,
    VLine,
    decade_label,
    linear_limits,
    log_limits,
    log_ticks,
    nice_ticks,
    segments,
    share_x,
    tick_labels,
)

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ElementTree.Element:
    """The SVG as XML: HTML allows the unquoted class, XML does not."""
    return ElementTree.fromstring(re.sub(r"^<svg class=(\w+)", r"<svg class='\1'", svg))


def texts(svg: str) -> list[str]:
    return [t.text or "" for t in parse(svg).iter(f"{SVG}text")]


def render(*artists, **options) -> str:
    fig = Figure(370, 270)
    ax = fig.add(Axes(52, 34, 308, 180, **options))
    ax.add(*artists)
    return fig.to_svg("plot", {"data-case": "c", "data-metric": "m"})


@pytest.mark.parametrize("lo, hi, target, expected", [
    (0, 100, 5, [0, 20, 40, 60, 80, 100]),
    (0, 1, 5, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    (-5.2, 41.7, 3, [0, 20, 40]),
    (0.487, 0.537, 5, [0.49, 0.5, 0.51, 0.52, 0.53]),
    (99_990_000, 100_010_000, 4, [99_990_000, 99_995_000, 100_000_000, 100_005_000, 100_010_000]),
    (1.2e-4, 5.1e-4, 4, [2e-4, 3e-4, 4e-4, 5e-4]),
    (-3, -1, 4, [-3, -2.5, -2, -1.5, -1]),
])
def test_nice_ticks_are_1_2_5_steps_inside_the_range(lo, hi, target, expected) -> None:
    assert nice_ticks(lo, hi, target) == pytest.approx(expected)


def test_nice_ticks_degenerate_ranges() -> None:
    assert nice_ticks(3, 3) == [3]
    assert nice_ticks(math.nan, 1) == []
    assert nice_ticks(0, math.inf) == [0]


def test_tick_labels_are_short_and_distinct() -> None:
    assert tick_labels([0, 20, 40]) == ["0", "20", "40"]
    assert tick_labels([0, 0.2, 0.4]) == ["0.0", "0.2", "0.4"]
    assert tick_labels([-5, 0, 5]) == ["-5", "0", "5"]
    assert tick_labels([-0.01, 0.0, 0.01]) == ["-0.01", "0.00", "0.01"]
    assert tick_labels([99_995_000, 100_000_000, 100_005_000]) == ["99.995M", "100.000M", "100.005M"]
    assert tick_labels([95e6, 100e6, 105e6]) == ["95M", "100M", "105M"]
    assert tick_labels([0, 20_000, 40_000]) == ["0", "20k", "40k"]
    assert tick_labels([2e-4, 3e-4]) == ["2e-4", "3e-4"]
    assert tick_labels([4e-4, 4.5e-4, 5e-4]) == ["4.0e-4", "4.5e-4", "5.0e-4"]
    assert tick_labels([0, 1e20, 2e20]) == ["0", "1e20", "2e20"]
    assert tick_labels([]) == []


def test_limits_of_constant_empty_and_nan_series() -> None:
    assert linear_limits([5.0, 5.0, 5.0]) == pytest.approx((4.75, 5.25))
    assert linear_limits([0.0]) == (-1.0, 1.0)
    assert linear_limits([]) == (0.0, 1.0)
    assert linear_limits([math.nan, math.inf]) == (0.0, 1.0)
    assert linear_limits([0, 10]) == pytest.approx((-0.5, 10.5))


def test_log_scale_limits_ticks_and_labels() -> None:
    lo, hi = log_limits([1e-9, 0.02, 0.0, -1.0, math.nan])
    assert lo < -9 < -2 < hi < -1
    assert log_ticks(lo, hi, 10) == list(range(-9, -1))
    assert log_ticks(lo, hi, 4) == [-8, -6, -4, -2]
    assert log_limits([1e-9, 1e-9]) == pytest.approx((-10.1, -7.9))
    assert log_limits([]) == (0.0, 1.0)
    assert [decade_label(k) for k in (-9, -3, -1, 0, 2, 5)] == ["1e-9", "0.001", "0.1", "1", "100", "1e5"]
    svg = render(Line([0, 1, 2, 3], [1e-9, 0.0, 1e-3, -2.0], "#000", kind="actual"),
                 HLine(1e-3, "#c62828", dash="5 3"), log_y=True)
    assert "1e-9" in texts(svg) and "0.001" in texts(svg)
    assert "nan" not in svg and "inf" not in svg


def test_nan_and_inf_leave_gaps() -> None:
    assert segments([1, 2, 3, 4, 5, 6], [1, math.nan, 3, 4, math.inf, 6]) == [[(1, 1)], [(3, 3), (4, 4)], [(6, 6)]]
    assert segments([1, 2, 3], [1, 0, 2], log=True) == [[(1, 1)], [(3, 2)]]
    svg = render(Line(list(range(10)), [1, 2, math.nan, 4, 5, 6, math.inf, 8, 9, 10], "#000", kind="actual"))
    path = parse(svg).find(f".//{SVG}path[@class='line actual']")
    assert path is not None and path.get("d", "").count("M") == 3
    assert "nan" not in svg and "inf" not in svg


def test_constant_empty_and_all_nan_series_render() -> None:
    for ys in ([7.0] * 5, [0.0] * 5, [math.nan] * 5, []):
        svg = render(Line(list(range(len(ys))), ys, "#000", kind="actual"), HSpan(-5, 5, "#90caf9"))
        parse(svg)
        assert "nan" not in svg and "inf" not in svg
    for ys in ([1e-320, 2e-320], [-1.7e308, 1.7e308], [1e300, 1e300]):
        svg = render(Line([0, 1], ys, "#000", kind="actual"))
        assert "nan" not in svg and "inf" not in svg, ys
    svg = render(note="no golden")
    assert "no golden" in texts(svg)


def test_band_shared_x_legend_and_title() -> None:
    fig = Figure(370, 270)
    top = fig.add(Axes(52, 34, 308, 146, x_ticklabels=False, legend=True, title=("p (x): lm loss", "rtol ok"),
                       title_colors=("#c8e6c9", "#1b5e20")))
    strip = fig.add(Axes(52, 190, 308, 50, xlabel="step", ylabel="Δ%"))
    xs = [1, 2, 3, 4]
    top.add(Band(xs, [0.9, 1.9, 2.9, 3.9], [1.1, 2.1, 3.1, 4.1], "#90caf9", label="golden ±0.05"),
            Line(xs, [1, 2, 3, 4], "#1e88e5", label="actual (run 1)", kind="actual"), VLine(2, "#fb8c00"))
    strip.add(Line([1, 2, 3, 40], [0, 1, 0, 1], "#1e88e5", kind="delta"))
    share_x(top, strip)
    assert top.xlim == strip.xlim and top.xlim[1] > 40
    root = parse(fig.to_svg("plot", {"data-case": "c"}))
    assert root.find(f".//{SVG}path[@class='band']") is not None
    assert "class='band golden'" in render(HSpan(1, 2, "#90caf9", kind="band golden"))
    assert {"golden ±0.05", "actual (run 1)", "p (x): lm loss", "rtol ok", "Δ%", "step"} <= set(
        t.text for t in root.iter(f"{SVG}text"))
    assert any(r.get("fill") == "#c8e6c9" for r in root.iter(f"{SVG}rect"))


def test_a_long_legend_is_cut_with_a_count() -> None:
    lines = [Line([0, 1], [k, k + 1], "#000", label=f"request {k}") for k in range(25)]
    labels = texts(render(*lines, legend=True))
    assert "request 0" in labels and "request 24" not in labels and "+9 more" in labels


def test_hostile_text_is_escaped() -> None:
    hostile = """a'<b>&"c"""
    fig = Figure(370, 270)
    ax = fig.add(Axes(52, 34, 308, 180, legend=True, title=(f"{hostile} (p): {hostile}",), xlabel=hostile))
    ax.add(Line([1, 2], [1, 2], "#000", label=hostile, kind="actual"))
    svg = fig.to_svg("plot", {"data-case": hostile, "data-metric": hostile, "aria-label": f"{hostile}: {hostile}"})
    assert svg.startswith("<svg class=plot data-case='a&#x27;&lt;b&gt;&amp;&quot;c' ")
    assert "<b>" not in svg and "'<" not in svg
    root = parse(svg)
    assert root.get("data-case") == hostile and root.get("aria-label") == f"{hostile}: {hostile}"
    assert texts(svg).count(hostile) == 2 and f"{hostile} (p): {hostile}" in texts(svg)


def test_bad_attribute_names_are_refused() -> None:
    with pytest.raises(ValueError):
        Figure(10, 10).to_svg("plot", {"onload='x'": "y"})
    with pytest.raises(ValueError):
        Figure(10, 10).to_svg("plot x")

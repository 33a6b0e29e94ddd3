"""A small SVG line plotter for report.html: lines, tolerance bands, reference lines, legends, log y.

Pure Python. A Figure holds Axes at fixed pixel boxes; each Axes scales itself to its artists, with
"nice" ticks (1/2/5 × 10^k). NaN, ±inf and, on a log axis, non-positive values leave gaps. Every text and
attribute value is XML-escaped, so case ids, metric and partition names may hold anything.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

FONT = "DejaVu Sans,Arial,sans-serif"
GLYPH_WIDTH = 0.6  # average glyph advance / font size, to size boxes around text
SI_PREFIXES = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
AXIS_COLOR, GRID_COLOR, TEXT_COLOR, NOTE_COLOR = "#616161", "#eeeeee", "#424242", "#9e9e9e"
TICK_FONT, LABEL_FONT, LEGEND_FONT, TITLE_FONT = 9, 9, 8, 10
LEGEND_ROW = 10
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")

Point = tuple[float, float]


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def num(value: float) -> str:
    return f"{value:.1f}"


# ---------------------------------------------------------------------------------------------- artists


@dataclass
class Line:
    xs: Sequence[float]
    ys: Sequence[float]
    color: str
    width: float = 1.2
    dash: str = ""
    label: str = ""
    kind: str = "series"
    markers: bool = False


@dataclass
class Band:
    """The area between `lo` and `hi` along `xs` (a tolerance band around a curve)."""

    xs: Sequence[float]
    lo: Sequence[float]
    hi: Sequence[float]
    color: str
    opacity: float = 0.45
    label: str = ""
    kind: str = "band"


@dataclass
class HSpan:
    """A horizontal band over the whole width, from y=lo to y=hi."""

    lo: float
    hi: float
    color: str
    opacity: float = 0.45
    label: str = ""
    kind: str = "band"


@dataclass
class HLine:
    y: float
    color: str
    width: float = 1.0
    dash: str = ""
    label: str = ""


@dataclass
class VLine:
    x: float
    color: str
    width: float = 1.0
    dash: str = ""


Artist = Line | Band | HSpan | HLine | VLine


# ------------------------------------------------------------------------------------------------ ticks


def finite(value: float, log: bool = False) -> bool:
    return math.isfinite(value) and (value > 0 or not log)


def nice_step(span: float, target: int = 5) -> float:
    raw = span / max(target, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    return next((m * power for m in (1, 2, 5) if raw <= m * power * (1 + 1e-9)), 10 * power)


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Ticks at multiples of a 1/2/5 × 10^k step inside [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi) and math.isfinite(hi - lo)) or hi - lo < 1e-300:
        return [lo] if math.isfinite(lo) else []
    step = nice_step(hi - lo, target)
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    return [float(f"{k * step:.12g}") for k in range(first, last + 1)]


def tick_labels(ticks: Sequence[float]) -> list[str]:
    """Labels with as many decimals as the step needs: SI suffixes from 10⁴, exponents below 10⁻³ and from 10¹⁸."""
    if not ticks:
        return []
    step = (abs(ticks[1] - ticks[0]) if len(ticks) > 1 else abs(ticks[0])) or 1.0
    top = max(abs(t) for t in ticks)
    if 0 < top < 1e-3 or top >= 1e18:
        digits = min(6, max(0, math.floor(math.log10(top)) - math.floor(math.log10(step) + 1e-9)))
        return [_exponent(f"{t:.{digits}e}") if t else "0" for t in ticks]
    if top >= 1e4:
        scale, suffix = next((s, p) for s, p in SI_PREFIXES if top >= s)
        decimals = _decimals(step / scale)
        return [_zero(f"{t / scale:.{decimals}f}") + (suffix if t else "") for t in ticks]
    decimals = _decimals(step)
    return [_zero(f"{t:.{decimals}f}") for t in ticks]


def _decimals(step: float) -> int:
    return max(0, math.ceil(-math.log10(step) - 1e-9))


def _zero(text: str) -> str:
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text


def _exponent(text: str) -> str:
    mantissa, exponent = text.split("e")
    return f"{mantissa}e{int(exponent)}"


def linear_limits(values: Iterable[float], margin: float = 0.05) -> tuple[float, float]:
    """Data range plus a margin; a constant gets ±5 % (±1 around 0), no data gives 0..1."""
    points = [v for v in values if math.isfinite(v)]
    if not points:
        return 0.0, 1.0
    lo, hi = min(points), max(points)
    if not math.isfinite(hi - lo):
        return lo, hi
    if hi - lo <= 1e-12 * max(abs(lo), abs(hi)) or hi - lo < 1e-300:
        pad = abs(lo) * 0.05 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * margin
    return lo - pad, hi + pad


def log_limits(values: Iterable[float], margin: float = 0.05) -> tuple[float, float]:
    """log10 range of the positive values; at least one whole decade, a constant one centred."""
    points = [math.log10(v) for v in values if finite(v, log=True)]
    if not points:
        return 0.0, 1.0
    lo, hi = min(points), max(points)
    if hi - lo < 1:
        lo, hi = math.floor(lo), math.ceil(hi)
        if hi == lo:
            lo, hi = lo - 1, hi + 1
    pad = (hi - lo) * margin
    return lo - pad, hi + pad


def log_ticks(lo: float, hi: float, target: int = 6) -> list[int]:
    """Decade exponents inside the log10 range [lo, hi], every n-th decade when there are many."""
    first, last = math.ceil(lo - 1e-9), math.floor(hi + 1e-9)
    every = max(1, math.ceil((last - first + 1) / max(target, 1)))
    return [k for k in range(first, last + 1) if k % every == 0]


def decade_label(exponent: int) -> str:
    return f"{10.0 ** exponent:g}" if -3 <= exponent <= 3 else f"1e{exponent}"


# ------------------------------------------------------------------------------------------------ scale


@dataclass(frozen=True)
class Scale:
    """Data → pixels; `lo`/`hi` are log10 values on a log scale."""

    lo: float
    hi: float
    start: float
    end: float
    log: bool = False

    def __call__(self, value: float) -> float:
        t = math.log10(value) if self.log else value
        fraction = (t / 2 - self.lo / 2) / (self.hi / 2 - self.lo / 2)  # halves: no overflow near ±1e308
        return self.start + fraction * (self.end - self.start)


def segments(xs: Sequence[float], ys: Sequence[float], log: bool = False) -> list[list[tuple[float, ...]]]:
    """Runs of consecutive plottable points; a NaN/inf (or ≤ 0 on a log axis) ends a run."""
    return _runs(zip(xs, ys, strict=False), log)


def _runs(rows: Iterable[tuple[float, ...]], log: bool) -> list[list[tuple[float, ...]]]:
    """Split (x, y, …) rows where x is not finite or any y is not plottable."""
    runs: list[list[tuple[float, ...]]] = [[]]
    for row in rows:
        if finite(row[0]) and all(finite(y, log) for y in row[1:]):
            runs[-1].append(row)
        elif runs[-1]:
            runs.append([])
    return [run for run in runs if run]


def path_data(points: Sequence[Point]) -> str:
    head, *rest = points
    return f"M{num(head[0])},{num(head[1])}" + ("L" + " ".join(f"{num(x)},{num(y)}" for x, y in rest) if rest else "")


def text(x: float, y: float, content: str, size: float, anchor: str = "middle", color: str = TEXT_COLOR,
         extra: str = "") -> str:
    return (f"<text x='{num(x)}' y='{num(y)}' font-size='{size:.3g}' text-anchor='{anchor}' fill='{color}'{extra}>"
            f"{esc(content)}</text>")


def text_width(content: str, size: float) -> float:
    return len(content) * size * GLYPH_WIDTH


def stroke(color: str, width: float, dash: str) -> str:
    dashes = f" stroke-dasharray='{dash}'" if dash else ""
    return f"fill='none' stroke='{color}' stroke-width='{width:g}'{dashes}"


# ------------------------------------------------------------------------------------------------- axes


@dataclass
class Axes:
    """One panel at a fixed pixel box; the title, if any, is drawn in a colored bar just above it."""

    left: float
    top: float
    width: float
    height: float
    log_y: bool = False
    title: Sequence[str] = ()
    title_colors: tuple[str, str] = ("#ffffff", TEXT_COLOR)
    xlabel: str = ""
    ylabel: str = ""
    x_ticklabels: bool = True
    legend: bool = False
    note: str = ""
    xlim: tuple[float, float] | None = None
    artists: list[Artist] = field(default_factory=list)

    def add(self, *artists: Artist) -> None:
        self.artists.extend(artists)

    def x_values(self) -> list[float]:
        values: list[float] = []
        for artist in self.artists:
            if isinstance(artist, Line):
                values += [x for run in segments(artist.xs, artist.ys, self.log_y) for x, _ in run]
            elif isinstance(artist, Band):
                values += list(artist.xs)
            elif isinstance(artist, VLine):
                values.append(artist.x)
        return values

    def y_values(self) -> list[float]:
        values: list[float] = []
        for artist in self.artists:
            if isinstance(artist, Line):
                values += [y for run in segments(artist.xs, artist.ys, self.log_y) for _, y in run]
            elif isinstance(artist, Band):
                values += [*artist.lo, *artist.hi]
            elif isinstance(artist, HSpan):
                values += [artist.lo, artist.hi]
            elif isinstance(artist, HLine):
                values.append(artist.y)
        return values

    def scales(self) -> tuple[Scale, Scale]:
        x_lo, x_hi = self.xlim or linear_limits(self.x_values())
        y_lo, y_hi = (log_limits if self.log_y else linear_limits)(self.y_values())
        bottom = self.top + self.height
        return (Scale(x_lo, x_hi, self.left, self.left + self.width),
                Scale(y_lo, y_hi, bottom, self.top, self.log_y))

    def render(self) -> str:
        sx, sy = self.scales()
        x_ticks, y_ticks = self._x_ticks(sx), self._y_ticks(sy)
        right, bottom = self.left + self.width, self.top + self.height
        box = f"x='{num(self.left)}' y='{num(self.top)}' width='{num(self.width)}' height='{num(self.height)}'"
        parts = [f"<rect {box} fill='#ffffff'/>", self._grid(x_ticks, y_ticks)]
        parts += [self._artist(a, sx, sy) for a in self.artists if isinstance(a, Band | HSpan)]
        parts += [self._artist(a, sx, sy) for a in self.artists if not isinstance(a, Band | HSpan)]
        parts.append(f"<rect {box} {stroke(AXIS_COLOR, 0.8, '')}/>")
        parts += self._tick_labels(x_ticks, y_ticks)
        if self.xlabel:
            parts.append(text((self.left + right) / 2, bottom + 25, self.xlabel, LABEL_FONT))
        if self.ylabel:
            x, y = self.left - 40, (self.top + bottom) / 2
            parts.append(text(x, y, self.ylabel, LABEL_FONT, extra=f" transform='rotate(-90 {num(x)} {num(y)})'"))
        if self.note:
            parts.append(text((self.left + right) / 2, (self.top + bottom) / 2, self.note, 11, color=NOTE_COLOR))
        if self.legend:
            parts.append(self._legend())
        if self.title:
            parts.append(self._title())
        return "".join(parts)

    def _x_ticks(self, sx: Scale) -> list[tuple[float, str]]:
        ticks = nice_ticks(sx.lo, sx.hi, max(2, int(self.width // 60)))
        return list(zip((sx(t) for t in ticks), tick_labels(ticks), strict=True))

    def _y_ticks(self, sy: Scale) -> list[tuple[float, str]]:
        if self.log_y:
            exponents = log_ticks(sy.lo, sy.hi, max(2, int(self.height // 22)))
            return [(sy(10.0 ** k), decade_label(k)) for k in exponents]
        ticks = nice_ticks(sy.lo, sy.hi, max(3, int(self.height // 25)))
        return list(zip((sy(t) for t in ticks), tick_labels(ticks), strict=True))

    def _grid(self, x_ticks: list[tuple[float, str]], y_ticks: list[tuple[float, str]]) -> str:
        right, bottom = self.left + self.width, self.top + self.height
        lines = [f"M{num(x)},{num(self.top)}V{num(bottom)}" for x, _ in x_ticks]
        lines += [f"M{num(self.left)},{num(y)}H{num(right)}" for y, _ in y_ticks]
        return f"<path d='{''.join(lines)}' {stroke(GRID_COLOR, 0.8, '')}/>" if lines else ""

    def _tick_labels(self, x_ticks: list[tuple[float, str]], y_ticks: list[tuple[float, str]]) -> list[str]:
        bottom = self.top + self.height
        marks = [f"M{num(x)},{num(bottom)}v3" for x, _ in x_ticks]
        marks += [f"M{num(self.left)},{num(y)}h-3" for y, _ in y_ticks]
        parts = [f"<path d='{''.join(marks)}' {stroke(AXIS_COLOR, 0.8, '')}/>"] if marks else []
        if self.x_ticklabels:
            parts += [text(x, bottom + 13, label, TICK_FONT) for x, label in x_ticks]
        parts += [text(self.left - 5, y + 3, label, TICK_FONT, "end") for y, label in y_ticks]
        return parts

    def _artist(self, artist: Artist, sx: Scale, sy: Scale) -> str:
        if isinstance(artist, Line):
            return self._line(artist, sx, sy)
        if isinstance(artist, Band):
            return self._band(artist, sx, sy)
        if isinstance(artist, HSpan):
            return self._hspan(artist, sy)
        if isinstance(artist, HLine):
            if not finite(artist.y, self.log_y):
                return ""
            return (f"<path class='ref' d='M{num(self.left)},{num(sy(artist.y))}H{num(self.left + self.width)}' "
                    f"{stroke(artist.color, artist.width, artist.dash)}/>")
        if not finite(artist.x):
            return ""
        return (f"<path class='marker' d='M{num(sx(artist.x))},{num(self.top)}V{num(self.top + self.height)}' "
                f"{stroke(artist.color, artist.width, artist.dash)}/>")

    def _hspan(self, span: HSpan, sy: Scale) -> str:
        if not (finite(span.lo, self.log_y) and finite(span.hi, self.log_y)):
            return ""
        lo, hi = sorted((sy(span.lo), sy(span.hi)))
        lo, hi = max(lo, self.top), min(hi, self.top + self.height)
        return (f"<rect class='{esc(span.kind)}' x='{num(self.left)}' y='{num(lo)}' width='{num(self.width)}' "
                f"height='{num(max(hi - lo, 0.0))}' fill='{span.color}' fill-opacity='{span.opacity:g}'/>")

    def _line(self, line: Line, sx: Scale, sy: Scale) -> str:
        runs = [[(sx(x), sy(y)) for x, y in run] for run in segments(line.xs, line.ys, self.log_y)]
        if not runs:
            return ""
        d = "".join(path_data(run) for run in runs if len(run) > 1)
        out = (f"<path class='line {esc(line.kind)}' d='{d}' {stroke(line.color, line.width, line.dash)} "
               f"stroke-linejoin='round'/>") if d else ""
        dots = [p for run in runs for p in run] if line.markers else [run[0] for run in runs if len(run) == 1]
        radius = 1.6 if line.markers else max(line.width, 1.0)
        out += "".join(f"<circle cx='{num(x)}' cy='{num(y)}' r='{radius:g}' fill='{line.color}'/>" for x, y in dots)
        return out

    def _band(self, band: Band, sx: Scale, sy: Scale) -> str:
        shapes = []
        for run in _runs(zip(band.xs, band.lo, band.hi, strict=False), self.log_y):
            upper = [(sx(x), sy(hi)) for x, _, hi in run]
            lower = [(sx(x), sy(lo)) for x, lo, _ in reversed(run)]
            shapes.append(path_data(upper + lower) + "Z")
        if not shapes:
            return ""
        return (f"<path class='{esc(band.kind)}' d='{''.join(shapes)}' fill='{band.color}' "
                f"fill-opacity='{band.opacity:g}' stroke='none'/>")

    def _legend(self) -> str:
        entries = [a for a in self.artists if isinstance(a, Line | Band | HSpan | HLine) and a.label]
        rows = max(1, int((self.height - 8) // LEGEND_ROW))
        more = [f"+{len(entries) - rows + 1} more"] if len(entries) > rows else []
        entries = entries[:rows - 1] if more else entries
        labels = [e.label for e in entries] + more
        if not labels:
            return ""
        width = max(text_width(label, LEGEND_FONT) for label in labels) + 30
        x0, y0 = self.left + self.width - width - 4, self.top + 4
        parts = [f"<rect x='{num(x0)}' y='{num(y0)}' width='{num(width)}' height='{len(labels) * LEGEND_ROW + 4}' "
                 f"fill='#ffffff' fill-opacity='0.85' stroke='#d0d0d0' stroke-width='0.6' rx='2'/>"]
        for row, label in enumerate(labels):
            y = y0 + 2 + LEGEND_ROW * row + LEGEND_ROW / 2
            if row < len(entries):
                parts.append(_swatch(entries[row], x0 + 4, y))
            parts.append(text(x0 + 24, y + 3, label, LEGEND_FONT, "start"))
        return "".join(parts)

    def _title(self) -> str:
        bg, fg = self.title_colors
        height = len(self.title) * (TITLE_FONT + 3) + 4
        top = self.top - height - 2
        parts = [f"<rect x='{num(self.left)}' y='{num(top)}' width='{num(self.width)}' height='{height}' "
                 f"fill='{bg}'/>"]
        center = self.left + self.width / 2
        for row, line in enumerate(self.title):
            size = min(TITLE_FONT, max(6.0, TITLE_FONT * (self.width - 8) / max(text_width(line, TITLE_FONT), 1)))
            parts.append(text(center, top + 2 + (TITLE_FONT + 3) * (row + 1) - 2, line, size, color=fg))
        return "".join(parts)


def _swatch(entry: Line | Band | HSpan | HLine, x: float, y: float) -> str:
    if isinstance(entry, Band | HSpan):
        return (f"<rect x='{num(x)}' y='{num(y - 3.5)}' width='16' height='7' fill='{entry.color}' "
                f"fill-opacity='{entry.opacity:g}'/>")
    return f"<path d='M{num(x)},{num(y)}h16' {stroke(entry.color, max(entry.width, 1.0), entry.dash)}/>"


def share_x(*axes: Axes) -> None:
    """Give the axes one x range: the union of their data, plus the usual margin."""
    limits = linear_limits(x for ax in axes for x in ax.x_values())
    for ax in axes:
        ax.xlim = limits


# ----------------------------------------------------------------------------------------------- figure


@dataclass
class Figure:
    width: int
    height: int
    axes: list[Axes] = field(default_factory=list)

    def add(self, ax: Axes) -> Axes:
        self.axes.append(ax)
        return ax

    def to_svg(self, css_class: str = "plot", attrs: Mapping[str, str] | None = None) -> str:
        """`<svg class=CSS_CLASS name='value' …>` with the attribute values escaped."""
        if not _NAME.match(css_class) or not all(_NAME.match(name) for name in attrs or {}):
            raise ValueError(f"bad SVG class or attribute name in {css_class!r}, {list(attrs or {})!r}")
        extra = "".join(f" {name}='{esc(value)}'" for name, value in (attrs or {}).items())
        return (f"<svg class={css_class}{extra} xmlns='http://www.w3.org/2000/svg' width='{self.width}' "
                f"height='{self.height}' viewBox='0 0 {self.width} {self.height}' font-family='{FONT}'>"
                f"<rect width='100%' height='100%' fill='#ffffff'/>"
                + "".join(ax.render() for ax in self.axes) + "</svg>")

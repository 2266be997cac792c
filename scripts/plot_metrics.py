#!/usr/bin/env python3
"""Plots training metrics (the metrics.jsonl that examples/train_lm appends to) as PNG files, using only the
Python standard library: a small raster plotter, a built-in 5x7 bitmap font and a zlib/struct PNG writer.

    python3 scripts/plot_metrics.py runs/lm/metrics.jsonl [more.jsonl ...] [--label NAME ...] [--out DIR]
                                    [--keys loss,val_loss] [--logy] [--smooth 0.9] [--size 900x500]
    python3 scripts/plot_metrics.py --selftest

Writes into DIR (default: <directory of the first file>/plots) and prints each path written:
    loss.png        train "loss" and "val_loss" against step; several runs overlaid, one color per run
    throughput.png  "tokens_per_s" (and "mfu" in a second panel, when present)
    lr.png          "lr" and "grad_norm" (one panel each)
    <key>.png       any other numeric key, paired with its "val_" twin (e.g. val_ppl goes to ppl.png)
--keys restricts the plots to the keys listed. Runs are labeled by their directory name unless --label is given
(one label per file, in order). --logy uses a log y axis where the values are all positive. --smooth A draws an
exponential moving average (weight A, debiased) of the train keys over their faint raw curve.

Each line of a file is one JSON object with a "step" and numeric values; malformed lines are skipped with a warning
naming the file and line. Bare nan/inf (as C++ formatting writes them) are accepted; non-finite values are gaps in
the curve, marked with an x at the top of the panel. A step that goes back (a resumed run appending to the file)
lets later values replace earlier ones at the same step.
"""
import argparse
import contextlib
import io
import json
import math
import os
import re
import struct
import sys
import tempfile
import zlib

# ----------------------------------------------------------------------------------------------------------------
# Font: 5 pixels wide, 7 rows above the baseline plus 2 descender rows. One glyph per ASCII code 33..126, in order;
# each glyph is 9 characters, one per row, top first; a character is a base-32 digit whose 5 bits are the row's
# pixels, the most significant bit leftmost.
_B32 = "0123456789abcdefghijklmnopqrstuv"
_FONT_DATA = """
444440400 aaa000000 aavavaa00 4fke5u400 op248j300 cik8lid00 440000000 248884200
842224800 04lel4000 044v44000 00000cc48 000v00000 00000cc00 01248g000 ehjlphe00
4c4444e00 eh1248v00 v2421he00 26aiv2200 vgu11he00 68guhhe00 v12488800 ehhehhe00
ehhf12c00 0cc0cc000 0cc0cc480 248g84200 00v0v0000 842124800 eh1240400 eh1dlle00
ehhhvhh00 uhhuhhu00 ehggghe00 sihhhis00 vgguggv00 vgguggg00 ehgnhhf00 hhhvhhh00
e44444e00 72222ic00 hikokih00 ggggggv00 hrllhhh00 hhpljhh00 ehhhhhe00 uhhuggg00
ehhhlid00 uhhukih00 fgge11u00 v44444400 hhhhhhe00 hhhhha400 hhhllla00 hha4ahh00
hhha44400 v1248gv00 e88888e00 0g8421000 e22222e00 4ah000000 000000v00 842000000
00e1fhf00 ggmphhu00 00egghe00 11djhhf00 00ehvge00 698s88800 00fhhhf1e ggmphhh00
40c444e00 2062222ic ggikoki00 c44444e00 00qllhh00 00mphhh00 00ehhhe00 00uhhhugg
00fhhhf11 00mpggg00 00ege1u00 88s889600 00hhhjd00 00hhha400 00hhlla00 00ha4ah00
00hhhhf1e 00v248v00 244844200 444444400 844244800 008l20000
"""
GLYPH_W, GLYPH_ROWS, GLYPH_ADV, LINE_H = 5, 9, 6, 11  # advance and line height in unscaled pixels


def _load_font():
    codes = _FONT_DATA.split()
    assert len(codes) == 126 - 33 + 1
    font = {" ": [0] * GLYPH_ROWS}
    for i, code in enumerate(codes):
        font[chr(33 + i)] = [_B32.index(c) for c in code]
    return font


FONT = _load_font()
# Drawn for any character the font lacks: a hollow box.
_MISSING = [0b11111, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b11111, 0, 0]


# ----------------------------------------------------------------------------------------------------------------
# PNG writing and (for --selftest) strict reading.
_PNG_SIG = b"\x89PNG\r\n\x1a\n"


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(w, h, rgb):
    """8-bit RGB, no interlace, no row filters (flat-colored plots compress well without them)."""
    stride = w * 3
    raw = b"".join(b"\x00" + bytes(rgb[y * stride:(y + 1) * stride]) for y in range(h))
    return (_PNG_SIG + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
            _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b""))


def decode_png(data):
    """Parses and checks a PNG as encode_png writes it (8-bit RGB/RGBA, no interlace): signature, chunk CRCs,
    IHDR, IDAT stream and every row's filter. Returns (width, height, rgb bytes). Raises ValueError."""
    if data[:8] != _PNG_SIG:
        raise ValueError("bad PNG signature")
    pos, ihdr, idat, kinds = 8, None, bytearray(), []
    while pos < len(data):
        if pos + 8 > len(data):
            raise ValueError("truncated chunk header")
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if len(body) != n or pos + 12 + n > len(data):
            raise ValueError(f"truncated {kind!r} chunk")
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        if crc != zlib.crc32(kind + body) & 0xFFFFFFFF:
            raise ValueError(f"CRC mismatch in {kind!r} chunk")
        kinds.append(kind)
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
        if kind == b"IEND":
            break
    if not kinds or kinds[0] != b"IHDR" or kinds[-1] != b"IEND" or pos != len(data):
        raise ValueError(f"bad chunk order {kinds}")
    w, h, depth, ctype, _, _, interlace = ihdr
    if depth != 8 or ctype not in (2, 6) or interlace != 0 or w == 0 or h == 0:
        raise ValueError(f"unsupported IHDR {ihdr}")
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(bytes(idat))
    stride = w * bpp
    if len(raw) != h * (stride + 1):
        raise ValueError(f"image data is {len(raw)} bytes, expected {h * (stride + 1)}")
    out, prev = bytearray(), bytearray(stride)
    for y in range(h):
        f, cur = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = cur[i - bpp] if i >= bpp else 0
            b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
            if f == 0:
                break
            elif f == 1:
                cur[i] = (cur[i] + a) & 0xFF
            elif f == 2:
                cur[i] = (cur[i] + b) & 0xFF
            elif f == 3:
                cur[i] = (cur[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                cur[i] = (cur[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
            else:
                raise ValueError(f"bad filter type {f} in row {y}")
        prev = cur
        if bpp == 3:
            out += cur
        else:
            for i in range(0, stride, 4):
                out += cur[i:i + 3]
    return w, h, bytes(out)


# ----------------------------------------------------------------------------------------------------------------
# Canvas: an RGB raster with alpha blending, anti-aliased thick polylines (with dashes), markers and bitmap text.
class Canvas:
    def __init__(self, w, h, bg=(255, 255, 255)):
        self.w, self.h = w, h
        self.px = bytearray(bytes(bg) * (w * h))
        self.clip = (0, 0, w, h)  # x0, y0, x1, y1 (exclusive)

    def blend(self, x, y, c, a=1.0):
        x0, y0, x1, y1 = self.clip
        if not (x0 <= x < x1 and y0 <= y < y1) or a <= 0:
            return
        i = (y * self.w + x) * 3
        p = self.px
        if a >= 1:
            p[i], p[i + 1], p[i + 2] = c
        else:
            b = 1 - a
            p[i] = int(p[i] * b + c[0] * a + 0.5)
            p[i + 1] = int(p[i + 1] * b + c[1] * a + 0.5)
            p[i + 2] = int(p[i + 2] * b + c[2] * a + 0.5)

    def fill_rect(self, x0, y0, x1, y1, c, a=1.0):
        """Fills pixels x0 <= x < x1, y0 <= y < y1."""
        for y in range(max(int(y0), 0), min(int(y1), self.h)):
            for x in range(max(int(x0), 0), min(int(x1), self.w)):
                self.blend(x, y, c, a)

    def _apply(self, cov, c, alpha):
        w = self.w
        for k, v in cov.items():
            self.blend(k % w, k // w, c, v * alpha)

    def _segment(self, cov, x0, y0, x1, y1, r):
        """Adds the coverage of a round-capped segment of half-width r - 0.5 (pixel centers at integer coords)."""
        dx, dy = x1 - x0, y1 - y0
        l2 = dx * dx + dy * dy
        inv = 1.0 / l2 if l2 > 0 else 0.0
        w, h, r2, sqrt = self.w, self.h, r * r, math.sqrt
        steep = abs(dy) > abs(dx)
        if steep:  # iterate over rows, scanning a window of columns
            a0, a1, b0, da, db = y0, y1, x0, dy, dx
        else:
            a0, a1, b0, da, db = x0, x1, y0, dx, dy
        # Every pixel within r of the line lies within ext of its center along the scan.
        ext = r * sqrt(l2) / abs(da) if da else r
        for a in range(max(math.floor(min(a0, a1) - r), 0), min(math.ceil(max(a0, a1) + r), (h if steep else w) - 1) + 1):
            t = (a - a0) / da if da else 0.0
            bc = b0 + (0.0 if t < 0 else 1.0 if t > 1 else t) * db
            for b in range(max(math.floor(bc - ext), 0), min(math.ceil(bc + ext), (w if steep else h) - 1) + 1):
                px, py = (b, a) if steep else (a, b)
                ex, ey = px - x0, py - y0
                s = (ex * dx + ey * dy) * inv
                if s < 0:
                    s = 0.0
                elif s > 1:
                    s = 1.0
                ex -= s * dx
                ey -= s * dy
                d2 = ex * ex + ey * ey
                if d2 >= r2:
                    continue
                v = r - sqrt(d2)
                if v > 1:
                    v = 1.0
                k = py * w + px
                if v > cov.get(k, 0.0):
                    cov[k] = v

    def polyline(self, pts, c, width=1.5, dash=None, alpha=1.0):
        """pts: [(x, y)] in pixels. dash: (on, off, ...) lengths in pixels, or None for a solid line."""
        if not pts:
            return
        cov, r = {}, width / 2 + 0.5
        if len(pts) == 1:
            self._segment(cov, pts[0][0], pts[0][1], pts[0][0], pts[0][1], r)
        pattern, di, left, on = dash, 0, (dash[0] if dash else 0), True
        for (xa, ya), (xb, yb) in zip(pts, pts[1:]):
            if not pattern:
                self._segment(cov, xa, ya, xb, yb, r)
                continue
            seg = math.hypot(xb - xa, yb - ya)
            pos = 0.0
            while pos < seg:
                step = min(left, seg - pos)
                if on:
                    t0, t1 = pos / seg, (pos + step) / seg
                    self._segment(cov, xa + (xb - xa) * t0, ya + (yb - ya) * t0,
                                  xa + (xb - xa) * t1, ya + (yb - ya) * t1, r)
                pos += step
                left -= step
                if left <= 1e-9:
                    di = (di + 1) % len(pattern)
                    left, on = pattern[di], not on
        self._apply(cov, c, alpha)

    def marker(self, x, y, shape, size, c, outline=(255, 255, 255)):
        """Filled, anti-aliased marker of radius about `size`, with a thin light outline for contrast; shape is one
        of o (circle), s (square), d (diamond), ^ (triangle), x (a cross of two strokes, no outline)."""
        if shape == "x":
            self.polyline([(x - size, y - size), (x + size, y + size)], c, 1.6)
            self.polyline([(x - size, y + size), (x + size, y - size)], c, 1.6)
            return

        def dist(dx, dy):
            if shape == "s":
                return max(abs(dx), abs(dy)) * 1.12
            if shape == "d":
                return (abs(dx) + abs(dy)) * 0.8
            if shape == "^":  # triangle, apex up
                return max(dy * 1.1, (abs(dx) * 1.732 - dy) * 0.55 + 0.1)
            return math.hypot(dx, dy)
        cov_o, cov_c = {}, {}
        n = int(size + 3)
        for py in range(int(round(y)) - n, int(round(y)) + n + 1):
            for px in range(int(round(x)) - n, int(round(x)) + n + 1):
                if not (0 <= px < self.w and 0 <= py < self.h):
                    continue
                d = dist(px - x, py - y)
                k = py * self.w + px
                if outline is not None:
                    cov_o[k] = min(max(size + 1.5 - d, 0.0), 1.0)
                cov_c[k] = min(max(size + 0.5 - d, 0.0), 1.0)
        if outline is not None:
            self._apply(cov_o, outline, 1.0)
        self._apply(cov_c, c, 1.0)

    @staticmethod
    def text_size(s, scale=1):
        return max(len(s) * GLYPH_ADV - 1, 0) * scale, 7 * scale

    def text(self, x, y, s, c=(30, 30, 30), scale=1, anchor="lt", rotate=False):
        """Draws s with its anchor point at (x, y). anchor: horizontal l/c/r then vertical t/m/b (relative to the
        cap height; descenders hang below). rotate: 90 degrees counter-clockwise (text reads bottom to top)."""
        tw, th = self.text_size(s, scale)
        ox = {"l": 0, "c": -tw // 2, "r": -tw}[anchor[0]]
        oy = {"t": 0, "m": -th // 2, "b": -th}[anchor[1]]
        for i, ch in enumerate(s):
            rows = FONT.get(ch, _MISSING)
            for gy, bits in enumerate(rows):
                if not bits:
                    continue
                for gx in range(GLYPH_W):
                    if not bits >> (GLYPH_W - 1 - gx) & 1:
                        continue
                    u, v = ox + (i * GLYPH_ADV + gx) * scale, oy + gy * scale  # unrotated offsets
                    for sy in range(scale):
                        for sx in range(scale):
                            if rotate:
                                self.blend(int(x + v + sy), int(y - u - sx), c)
                            else:
                                self.blend(int(x + u + sx), int(y + v + sy), c)

    def png(self):
        return encode_png(self.w, self.h, self.px)


# ----------------------------------------------------------------------------------------------------------------
# Ticks and number formatting.
def nice_step(span, target):
    """Smallest step of the form {1, 2, 5} x 10^k giving at most about `target` intervals over span."""
    raw = span / max(target, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * mag >= raw * (1 - 1e-9):
            return m * mag
    return 10 * mag


def linear_ticks(lo, hi, target, min_ticks=3):
    """Ticks at multiples of a 1-2-5 step inside [lo, hi]: about `target` intervals, at least min_ticks ticks."""
    step = nice_step(hi - lo, target)
    while True:
        k0, k1 = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
        if k1 - k0 + 1 >= min_ticks:
            return [k * step for k in range(k0, k1 + 1)], step
        m = round(step / 10.0 ** math.floor(math.log10(step) + 1e-9))
        step *= 0.4 if m == 5 else 0.5  # 5 -> 2 -> 1 -> 0.5


def _sci_exponent(ticks, step):
    """The common exponent for a tick set's labels, or None for plain decimals."""
    big = max(max(abs(t) for t in ticks), step)
    return math.floor(math.log10(big) + 1e-9) if big >= 1e6 or big < 1e-3 else None


def fmt_linear(v, step, e="auto"):
    """Label for tick v of a linear axis with the given step; e: common exponent (None: plain decimals)."""
    if e == "auto":
        e = _sci_exponent([v], step)
    if abs(v) < step * 1e-6:
        return "0"
    if e is not None:
        digits = max(0, e - math.floor(math.log10(step) + 1e-9))
        return f"{v / 10.0 ** e:.{digits}f}e{e}"
    return f"{v:.{max(0, -math.floor(math.log10(step) + 1e-9))}f}"


def fmt_ticks(ticks, step):
    e = _sci_exponent(ticks, step)
    return [fmt_linear(t, step, e) for t in ticks]


def fmt_general(v, digits=4):
    """Compact significant-digit formatting (log-axis labels, legend values)."""
    if v == 0:
        return "0"
    if not math.isfinite(v):
        return "nan" if math.isnan(v) else ("-inf" if v < 0 else "inf")
    s = f"{v:.{digits}g}"
    if "e" in s:
        m, e = s.split("e")
        s = f"{m}e{int(e)}"
    return s


def log_ticks(lo, hi, target):
    """Ticks for a log10 axis over [lo, hi] (values, lo > 0): (ticks, labeled ticks), or (None, None) when the
    range spans less than a decade (linear 1-2-5 ticks on the values read better there)."""
    l0, l1 = math.log10(lo), math.log10(hi)
    decades = l1 - l0
    if decades > target * 0.8:  # only powers of ten, every n-th decade
        n = math.ceil(decades / target)
        t = [10.0 ** k for k in range(math.ceil(l0 - 1e-9), math.floor(l1 + 1e-9) + 1) if k % n == 0]
        return t, t
    if decades < 1:
        return None, None
    labeled_m = (1, 2, 5) if decades < 2.5 else (1,)
    ticks, lab = [], []
    for k in range(math.floor(l0) - 1, math.ceil(l1) + 1):
        for m in range(1, 10):
            v = m * 10.0 ** k
            if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9):
                ticks.append(v)
                if m in labeled_m:
                    lab.append(v)
    return (ticks, lab) if len(lab) >= 2 else (None, None)


# ----------------------------------------------------------------------------------------------------------------
# Reading metrics.
_BARE_NONFINITE = re.compile(r'(:\s*)(-?)(nan|inf(?:inity)?)\b', re.IGNORECASE)


def _fix_nonfinite(m):
    if m.group(3).lower() == "nan":
        return m.group(1) + "NaN"
    return m.group(1) + m.group(2) + "Infinity"


def warn(msg):
    print(f"warning: {msg}", file=sys.stderr)


class Run:
    def __init__(self, path, label):
        self.path, self.label = path, label
        self.series = {}  # key -> sorted [(step, value)], value possibly non-finite


def read_run(path, label):
    """Returns a Run, or raises ValueError with a message for an empty or useless file."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    if not any(line.strip() for line in lines):
        raise ValueError(f"{path}: file is empty, no metrics to plot")
    data, bad, last_step, went_back = {}, 0, None, False
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = json.loads(_BARE_NONFINITE.sub(_fix_nonfinite, line))
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
            step = rec.get("step")
            if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step):
                raise ValueError('no numeric "step"')
        except ValueError as e:  # JSONDecodeError is a ValueError
            bad += 1
            if bad <= 10:
                warn(f"{path}:{n}: skipping malformed line ({str(e).split(':')[0]}): {line[:60]}")
            continue
        if last_step is not None and step < last_step and not went_back:
            went_back = True
            warn(f"{path}:{n}: step goes back from {last_step:g} to {step:g} (resumed or appended run); "
                 "later values replace earlier ones at the same step")
        last_step = step
        for k, v in rec.items():
            if k == "step" or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            data.setdefault(k, {})[step] = float(v)
    if bad > 10:
        warn(f"{path}: {bad} malformed lines skipped in all")
    if not data:
        raise ValueError(f"{path}: no usable metric lines ({bad} malformed)")
    run = Run(path, label)
    for k, d in data.items():
        run.series[k] = sorted(d.items())
        nonfinite = [s for s, v in run.series[k] if not math.isfinite(v)]
        if nonfinite:
            shown = ", ".join(f"{s:g}" for s in nonfinite[:5]) + (", ..." if len(nonfinite) > 5 else "")
            warn(f"{path}: {k!r} has {len(nonfinite)} non-finite value(s) (nan/inf) at step {shown}; "
                 "drawn as gaps marked x")
    return run


def default_labels(paths):
    """Directory names of the files (runs/dense/metrics.jsonl -> dense), lengthened until they are unique."""
    parts = [os.path.normpath(os.path.abspath(p)).split(os.sep) for p in paths]
    for depth in range(2, 6):
        labels = []
        for ps in parts:
            if ps[-1] != "metrics.jsonl":  # runs/x/dense.jsonl -> dense
                ps = ps[:-1] + [os.path.splitext(ps[-1])[0], ""]
            tail = ps[-depth:-1]
            labels.append("/".join(tail) if tail else ps[-1])
        if len(set(labels)) == len(labels):
            return labels
        if depth == 2:
            short = labels
    return [f"{lab}#{i + 1}" for i, lab in enumerate(short)]


# ----------------------------------------------------------------------------------------------------------------
# Figures.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
DASHES = [None, (7, 4), (2, 3), (9, 3, 2, 3)]
MARKERS = ["o", "s", "d", "^"]
INK, GRID, FRAME, MUTED = (30, 30, 30), (228, 228, 228), (90, 90, 90), (110, 110, 110)
SCALE_TICK, SCALE_LABEL, SCALE_TITLE, SCALE_LEGEND = 1, 2, 2, 1

NOT_SMOOTHED = {"lr", "step", "tokens", "epoch"}  # schedules and counters, not noisy measurements
STANDARD = [  # (file name, title, panels: [keys])
    ("loss", "loss", [["loss", "val_loss"]]),
    ("throughput", "throughput", [["tokens_per_s"], ["mfu"]]),
    ("lr", "learning rate and gradient norm", [["lr"], ["grad_norm"]]),
]


def figure_specs(runs, keys_filter):
    present = set()
    for r in runs:
        present.update(r.series)
    if keys_filter:
        for k in keys_filter:
            if k not in present:
                warn(f"key {k!r} is in none of the inputs")
        present &= set(keys_filter)
    specs, used = [], set()
    for name, title, panels in STANDARD:
        ps = [[k for k in p if k in present] for p in panels]
        ps = [p for p in ps if p]
        used.update(k for p in panels for k in p)
        if ps:
            specs.append((name, title, ps))
        else:
            if not keys_filter:
                print(f"note: no {name}.png: none of {', '.join(k for p in panels for k in p)} in the inputs",
                      file=sys.stderr)
    extra = sorted(present - used)
    groups = {}
    for k in extra:
        groups.setdefault(k[4:] if k.startswith("val_") else k, []).append(k)
    names = {s[0] for s in specs} | {s[0] for s in STANDARD}
    for base, ks in sorted(groups.items()):
        ks.sort(key=lambda k: k.startswith("val_"))
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", base) or "metric"
        while name in names:
            name += "_"
        names.add(name)
        specs.append((name, " / ".join(ks), [ks]))
    return specs


def ema(vals, alpha):
    out, acc, wsum = [], 0.0, 0.0
    for v in vals:
        if not math.isfinite(v):
            out.append(v)
            continue
        acc = alpha * acc + (1 - alpha) * v
        wsum = alpha * wsum + (1 - alpha)
        out.append(acc / wsum)
    return out


def _pad_range(lo, hi, frac, log):
    """Data range [lo, hi] (already log10 on a log axis) widened by frac on each side; a point gets a fixed span."""
    if hi - lo <= max(abs(hi), abs(lo)) * 1e-12:
        d = 0.3 if log else (abs(hi) * 0.1 if hi != 0 else 1.0)
    else:
        d = (hi - lo) * frac
    return lo - d, hi + d


def render_figure(path, title, panels, runs, size=(900, 500), logy=False, smooth=0.0):
    W, H = size
    cv = Canvas(W, H)
    multi_run = len(runs) > 1

    # X range, shared by the panels.
    xs = [s for r in runs for p in panels for k in p for s, _ in r.series.get(k, [])]
    xlo, xhi = min(xs), max(xs)
    if xlo == xhi:
        xlo, xhi = xlo - 1, xhi + 1
    else:
        d = (xhi - xlo) * 0.02
        xlo, xhi = xlo - d, xhi + d

    # Per panel: the series with their styles, the data range, the legend's size.
    pinfo = []
    for keys in panels:
        finite_vals = [v for r in runs for k in keys for _, v in r.series.get(k, []) if math.isfinite(v)]
        log = logy and bool(finite_vals) and min(finite_vals) > 0
        if logy and not log:
            warn(f"{os.path.basename(path)}: {'/'.join(keys)} has values <= 0; linear y axis")

        def ok(v, log=log):
            return math.isfinite(v) and (v > 0 or not log)

        series = []
        for ri, run in enumerate(runs):
            for ki, key in enumerate(keys):
                pts = run.series.get(key)
                if not pts:
                    continue
                n_ok = sum(1 for _, v in pts if ok(v))
                smoothed = smooth > 0 and not key.startswith("val_") and key not in NOT_SMOOTHED and n_ok > 3
                vals = [v for _, v in pts]
                lastv = next((v for v in reversed(vals) if math.isfinite(v)), float("nan"))
                name = f"{run.label} {key}" if multi_run and len(keys) > 1 else run.label if multi_run else key
                series.append(dict(
                    pts=pts, drawn=ema(vals, smooth) if smoothed else vals, smoothed=smoothed,
                    color=PALETTE[(ri if multi_run else ki) % len(PALETTE)], dash=DASHES[ki % len(DASHES)],
                    marker=MARKERS[ki % len(MARKERS)] if key.startswith("val_") or n_ok <= 3 or ki > 0 else None,
                    msize=3.2 if n_ok <= 60 else 2.2, width=2.0 if ki == 0 else 1.5,
                    text=f"{name}  {fmt_general(lastv, 4)}"))
        tv = [v for s in series for v in s["drawn"] if ok(v)]
        for s in series:  # smoothed: the range takes in the bulk (1st to 99th percentile) of the raw values too
            if s["smoothed"]:
                raw = sorted(v for _, v in s["pts"] if ok(v))
                tv += [raw[len(raw) // 100], raw[-1 - len(raw) // 100]]
        tv = [math.log10(v) if log else v for v in tv] or [0.0]
        lh = LINE_H * SCALE_LEGEND + 3
        bw = 48 + max((cv.text_size(s["text"], SCALE_LEGEND)[0] for s in series), default=0) + 10
        pinfo.append(dict(keys=keys, series=series, log=log, ok=ok, dlo=min(tv), dhi=max(tv), head=None,
                          bw=bw, bh=8 + lh * len(series) + 4, lh=lh))

    def layout():
        """Axis ranges and ticks, margins and the panels' pixel boxes; y ranges in log10 on log axes."""
        for p in pinfo:
            tlo, thi = _pad_range(p["dlo"], p["dhi"], 0.05, p["log"])
            if p["head"]:  # room above the data for the legend
                thi = max(thi, (p["dhi"] - p["head"] * tlo) / (1 - p["head"]))
            p["tlo"], p["thi"] = tlo, thi
            nt = 5 if len(pinfo) == 1 else 4
            ticks = None
            if p["log"]:
                ticks, labeled = log_ticks(10 ** tlo, 10 ** thi, nt + 1)
                if ticks is not None:
                    p["ticks"], p["labels"] = ticks, {t: fmt_general(t, 3) for t in labeled}
            if ticks is None:
                lo, hi = (10 ** tlo, 10 ** thi) if p["log"] else (tlo, thi)
                ticks, step = linear_ticks(lo, hi, nt * 2 if p["log"] else nt)  # log: denser, the top bunches up
                p["ticks"], p["labels"] = ticks, dict(zip(ticks, fmt_ticks(ticks, step)))
        g = {}
        tick_w = max(cv.text_size(s, SCALE_TICK)[0] for p in pinfo for s in p["labels"].values())
        label_h = cv.text_size("x", SCALE_LABEL)[1]
        g["left"] = 14 + label_h + 10 + tick_w + 8
        g["top"] = 14 + cv.text_size("x", SCALE_TITLE)[1] + 16
        bottom = 8 + 7 * SCALE_TICK + 10 + label_h + 12
        g["xticks"], xstep = linear_ticks(xlo, xhi, max(3, min(10, (W - g["left"]) // 90)))
        g["xlabels"] = fmt_ticks(g["xticks"], xstep)
        right = max(24, cv.text_size(g["xlabels"][-1], SCALE_TICK)[0] // 2 + 8)
        g["gap"] = 22
        g["pw"] = W - g["left"] - right
        g["ph"] = (H - g["top"] - bottom - g["gap"] * (len(pinfo) - 1)) // len(pinfo)
        return g

    def X(x):
        return g["left"] + (x - xlo) / (xhi - xlo) * (g["pw"] - 1)

    def Y(p, v):
        t = math.log10(v) if p["log"] else v
        return p["ptop"] + (1 - (t - p["tlo"]) / (p["thi"] - p["tlo"])) * (g["ph"] - 1)

    def place_legends():
        """Puts each legend in the corner where it hides the fewest curve samples; returns the panels where every
        corner hides some."""
        crowded = []
        for pi, p in enumerate(pinfo):
            p["ptop"] = g["top"] + pi * (g["ph"] + g["gap"])
            pts = []
            for s in p["series"]:
                prev = None
                for (st, _), v in zip(s["pts"], s["drawn"]):
                    if not p["ok"](v):
                        prev = None
                        continue
                    q = (X(st), Y(p, v))
                    if prev is not None:  # samples every few pixels along the segment
                        n = int(math.hypot(q[0] - prev[0], q[1] - prev[1]) / 4)
                        pts.extend((prev[0] + (q[0] - prev[0]) * i / (n + 1), prev[1] + (q[1] - prev[1]) * i / (n + 1))
                                   for i in range(1, n + 1))
                    pts.append(q)
                    prev = q
            best = None
            for cx, cy in ((1, 0), (0, 0), (1, 1), (0, 1)):
                bx = g["left"] + g["pw"] - p["bw"] - 8 if cx else g["left"] + 8
                by = p["ptop"] + g["ph"] - p["bh"] - 8 if cy else p["ptop"] + 8
                hidden = sum(1 for x, y in pts if bx - 3 <= x <= bx + p["bw"] + 3 and by - 3 <= y <= by + p["bh"] + 3)
                if best is None or hidden < best[0]:
                    best = (hidden, bx, by)
            p["legend_at"] = best[1:]
            if best[0] > 0:
                crowded.append(p)
        return crowded

    g = layout()
    crowded = place_legends()
    if crowded:
        for p in crowded:
            f = (p["bh"] + 20) / g["ph"]
            if f < 0.6:
                p["head"] = f
        g = layout()
        place_legends()

    cv.text(W // 2, 14, title, INK, SCALE_TITLE, "ct")
    left, pw, ph = g["left"], g["pw"], g["ph"]
    for pi, p in enumerate(pinfo):
        ptop, ok = p["ptop"], p["ok"]
        # Grid.
        for t in p["ticks"]:
            y = round(Y(p, t))
            cv.fill_rect(left, y, left + pw, y + 1, GRID if t in p["labels"] else (242, 242, 242))
        for t in g["xticks"]:
            x = round(X(t))
            cv.fill_rect(x, ptop, x + 1, ptop + ph, GRID)

        # Curves, clipped to the panel.
        cv.clip = (left, ptop, left + pw, ptop + ph)
        for s in p["series"]:
            if s["smoothed"]:  # the raw values, faint
                for seg in _segments(s["pts"], [v for _, v in s["pts"]], ok, X, lambda v: Y(p, v)):
                    cv.polyline(seg, s["color"], 1.0, None, alpha=0.25)
            segs = _segments(s["pts"], s["drawn"], ok, X, lambda v: Y(p, v))
            for seg in segs:
                if len(seg) > 1 or not s["marker"]:
                    cv.polyline(seg, s["color"], s["width"], s["dash"])
            if s["marker"]:
                for seg in segs:
                    for x, y in seg:
                        cv.marker(x, y, s["marker"], s["msize"], s["color"])
            for st, v in s["pts"]:  # values that cannot be drawn (nan/inf, <= 0 on a log axis): an x at the top
                if not ok(v):
                    cv.marker(X(st), ptop + 5, "x", 3.5, s["color"])
        cv.clip = (0, 0, W, H)

        # Frame, ticks, tick labels, axis labels.
        for x0, y0, x1, y1 in ((left - 1, ptop - 1, left + pw + 1, ptop), (left - 1, ptop + ph, left + pw + 1, ptop + ph + 1),
                               (left - 1, ptop, left, ptop + ph), (left + pw, ptop, left + pw + 1, ptop + ph)):
            cv.fill_rect(x0, y0, x1, y1, FRAME)
        for t in p["ticks"]:
            y = round(Y(p, t))
            major = t in p["labels"]
            cv.fill_rect(left - (6 if major else 3), y, left - 1, y + 1, FRAME)
            if major:
                cv.text(left - 9, y, p["labels"][t], INK, SCALE_TICK, "rm")
        for t, lab in zip(g["xticks"], g["xlabels"]):
            x = round(X(t))
            cv.fill_rect(x, ptop + ph + 1, x + 1, ptop + ph + 6, FRAME)
            if pi == len(pinfo) - 1:
                cv.text(x, ptop + ph + 9, lab, INK, SCALE_TICK, "ct")
        ylabel = " / ".join(p["keys"]) + (" (log)" if p["log"] else "")
        scale = SCALE_LABEL if cv.text_size(ylabel, SCALE_LABEL)[0] <= ph else 1
        cv.text(14, ptop + ph // 2 + cv.text_size(ylabel, scale)[0] // 2, ylabel, INK, scale, "lt", rotate=True)

        # Legend.
        if p["series"]:
            (bx, by), bw, bh = p["legend_at"], p["bw"], p["bh"]
            cv.fill_rect(bx, by, bx + bw, by + bh, (255, 255, 255), 0.88)
            for x0, y0, x1, y1 in ((bx, by, bx + bw, by + 1), (bx, by + bh - 1, bx + bw, by + bh),
                                   (bx, by, bx + 1, by + bh), (bx + bw - 1, by, bx + bw, by + bh)):
                cv.fill_rect(x0, y0, x1, y1, (200, 200, 200))
            for i, s in enumerate(p["series"]):
                cy = by + 8 + i * p["lh"] + 3 * SCALE_LEGEND
                cv.polyline([(bx + 10, cy), (bx + 38, cy)], s["color"], s["width"], s["dash"])
                if s["marker"]:
                    cv.marker(bx + 24, cy, s["marker"], 3.2, s["color"])
                cv.text(bx + 48, cy, s["text"], INK, SCALE_LEGEND, "lm")
    cv.text(left + pw // 2, H - 10, "step", INK, SCALE_LABEL, "cb")

    with open(path, "wb") as f:
        f.write(cv.png())


def _segments(pts, vals, ok, X, Y):
    """Pixel polylines through the drawable values, broken where a value is not drawable, thinned to at most four
    points (first, lowest, highest, last) per pixel column."""
    segs, cur = [], []
    for (s, _), v in zip(pts, vals):
        if ok(v):
            cur.append((X(s), Y(v)))
        elif cur:
            segs.append(cur)
            cur = []
    if cur:
        segs.append(cur)
    return [_thin(seg) for seg in segs]


def _thin(seg):
    if len(seg) <= 500:
        return seg
    out, i = [], 0
    while i < len(seg):
        col, j, lo, hi = int(seg[i][0]), i, i, i
        while j < len(seg) and int(seg[j][0]) == col:
            if seg[j][1] < seg[lo][1]:
                lo = j
            if seg[j][1] > seg[hi][1]:
                hi = j
            j += 1
        out.extend(seg[k] for k in sorted({i, lo, hi, j - 1}))
        i = j
    return out


# ----------------------------------------------------------------------------------------------------------------
def parse_args(argv):
    ap = argparse.ArgumentParser(description="Plot train_lm metrics.jsonl files as PNG (stdlib only).",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[1])
    ap.add_argument("files", nargs="*", help="metrics.jsonl files, one per run")
    ap.add_argument("--label", nargs="+", action="extend", default=[], metavar="NAME",
                    help="run labels, one per file in order (repeat the flag or list them; commas also separate)")
    ap.add_argument("--out", help="output directory (default: <dir of first file>/plots)")
    ap.add_argument("--keys", action="append", default=[], help="comma-separated keys to plot (default: all numeric)")
    ap.add_argument("--logy", action="store_true", help="log-scale y axes (where all values are positive)")
    ap.add_argument("--smooth", type=float, default=0.0, metavar="A",
                    help="EMA weight in [0, 1) for train curves, e.g. 0.9 (default 0: off)")
    ap.add_argument("--size", default="900x500", help="image size WxH (default 900x500)")
    ap.add_argument("--selftest", action="store_true", help="render sample plots to a temp dir, check the PNGs")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.selftest:
        return selftest()
    if not args.files:
        print("error: no metrics files given (usage: plot_metrics.py metrics.jsonl [more.jsonl ...])", file=sys.stderr)
        return 1
    m = re.fullmatch(r"(\d+)x(\d+)", args.size)
    if not m or not (300 <= int(m.group(1)) <= 8000 and 200 <= int(m.group(2)) <= 8000):
        print(f"error: bad --size {args.size!r} (want WxH, at least 300x200)", file=sys.stderr)
        return 1
    size = (int(m.group(1)), int(m.group(2)))
    if not 0 <= args.smooth < 1:
        print("error: --smooth must be in [0, 1)", file=sys.stderr)
        return 1
    labels = [s for lab in args.label for s in lab.split(",") if s]
    if len(labels) > len(args.files):
        print(f"error: {len(labels)} labels for {len(args.files)} files", file=sys.stderr)
        return 1
    labels += default_labels(args.files)[len(labels):]
    keys = [k.strip() for ks in args.keys for k in ks.split(",") if k.strip()]

    runs = []
    for path, label in zip(args.files, labels):
        try:
            runs.append(read_run(path, label))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    specs = figure_specs(runs, keys)
    if not specs:
        print("error: nothing to plot" + (f" (none of --keys {','.join(keys)} found)" if keys else ""), file=sys.stderr)
        return 1
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.files[0])), "plots")
    os.makedirs(out, exist_ok=True)
    for name, title, panels in specs:
        path = os.path.join(out, name + ".png")
        render_figure(path, title, panels, runs, size, args.logy, args.smooth)  # all runs: same color everywhere
        print(path)
    return 0


# ----------------------------------------------------------------------------------------------------------------
def selftest():
    failures = []

    def check(cond, what):
        if not cond:
            failures.append(what)

    need = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-+e/_:%()"
    check(all(c in FONT and len(FONT[c]) == GLYPH_ROWS and any(FONT[c]) for c in need), "font lacks glyphs")
    check(all(0 <= b < 32 for g in FONT.values() for b in g), "font rows wider than 5 pixels")
    check(linear_ticks(0, 1, 5)[0] == [0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0] or
          [round(t, 9) for t in linear_ticks(0, 1, 5)[0]] == [0, 0.2, 0.4, 0.6, 0.8, 1.0], "ticks 0..1")
    check(nice_step(73, 5) == 20 and nice_step(0.0031, 6) == 0.001 and nice_step(4.9, 1) == 5, "nice_step 1-2-5")
    check(fmt_ticks([0, 0.0005, 0.001], 0.0005) == ["0", "0.0005", "0.0010"] and
          fmt_ticks([5e-5, 1e-4, 1.5e-4], 5e-5) == ["0.5e-4", "1.0e-4", "1.5e-4"] and fmt_linear(2e-5, 1e-5) == "2e-5" and
          fmt_linear(1.5e6, 5e5) == "1.5e6" and fmt_linear(250, 50) == "250" and fmt_linear(2.5, 0.5) == "2.5",
          "tick label format")
    check(log_ticks(1e-4, 1e-1, 6)[1] == [1e-4, 1e-3, 1e-2, 0.1] and log_ticks(1.5, 5, 6) == (None, None) and
          [round(t, 9) for t in log_ticks(0.3, 20, 6)[1]] == [0.5, 1, 2, 5, 10, 20], "log ticks")

    with tempfile.TemporaryDirectory(prefix="plot_metrics_selftest_") as tmp:
        paths = []
        for r, (decay, label) in enumerate(((1.0, "dense"), (0.8, "sparse"))):
            d = os.path.join(tmp, label)
            os.makedirs(d)
            p = os.path.join(d, "metrics.jsonl")
            with open(p, "w") as f:
                f.write('{"step":0,"val_loss":5.5,"val_ppl":244.7}\n')
                for s in range(20, 401, 20):
                    loss = 1.8 + 3.5 * math.exp(-s * decay / 80) + 0.05 * math.sin(s * 0.37 + r)
                    f.write(json.dumps({"step": s, "loss": loss, "lr": 1e-3 * min(1, s / 100), "grad_norm": 0.5 + r,
                                        "tokens_per_s": 6000 + 100 * r, "mfu": 0.3 + 0.02 * r}) + "\n")
                    if s % 100 == 0:
                        f.write(json.dumps({"step": s, "val_loss": loss + 0.1, "val_ppl": math.exp(loss + 0.1)}) + "\n")
                f.write('{"step":420,"loss":nan,"lr":1e-4,"grad_norm":inf,"tokens_per_s":6000.0}\n')
                f.write("this is not json\n")
            paths.append(p)
        out = os.path.join(tmp, "plots")
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()) as so, contextlib.redirect_stderr(err):
            rc = main(paths + ["--out", out, "--smooth", "0.5"])
            rc_log = main(paths[:1] + ["--out", os.path.join(tmp, "log"), "--logy", "--keys", "loss,val_loss,lr"])
        check(rc == 0 and rc_log == 0, f"render failed: rc {rc}/{rc_log}: {err.getvalue()[-300:]}")
        check("metrics.jsonl:27: skipping malformed line" in err.getvalue(), "no warning naming file:line")
        written = so.getvalue().split()
        expect = {"loss.png", "throughput.png", "lr.png", "ppl.png"}
        check(expect <= {os.path.basename(p) for p in written}, f"expected {sorted(expect)}, wrote {written}")
        for p in written:
            if not p.endswith(".png"):
                continue
            try:
                with open(p, "rb") as f:
                    w, h, rgb = decode_png(f.read())
                check((w, h) == (900, 500), f"{p}: size {w}x{h}")
                colors = {rgb[i:i + 3] for i in range(0, len(rgb), 3 * 7)}
                two_runs = os.path.dirname(p) == out  # the other figures show one run, colored by key
                check(bytes(PALETTE[0]) in colors and (bytes(PALETTE[1]) in colors or not two_runs),
                      f"{p}: series colors missing")
                check(len(colors) > 20, f"{p}: looks blank")
            except (OSError, ValueError, zlib.error) as e:
                failures.append(f"{p}: {e}")
        # Corrupting one byte must be caught by the CRC check.
        with open(os.path.join(out, "loss.png"), "rb") as f:
            data = bytearray(f.read())
        data[40] ^= 0xFF
        try:
            decode_png(bytes(data))
            failures.append("corrupted PNG decoded without error")
        except (ValueError, zlib.error):
            pass
        # A single point, and an empty file.
        one = os.path.join(tmp, "one.jsonl")
        with open(one, "w") as f:
            f.write('{"step":5,"loss":2.0}\n')
        empty = os.path.join(tmp, "empty.jsonl")
        open(empty, "w").close()
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            rc_one = main([one, "--out", os.path.join(tmp, "one")])
            rc_empty = main([empty, "--out", os.path.join(tmp, "empty")])
        check(rc_one == 0 and os.path.exists(os.path.join(tmp, "one", "loss.png")), "single point failed")
        check(rc_empty == 1 and "file is empty" in err.getvalue(), "empty file not reported")
    if failures:
        for f in failures:
            print(f"selftest: FAILED: {f}", file=sys.stderr)
        return 1
    print("selftest: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Diagrams for the decks, drawn with matplotlib: the pipeline, encoder-decoder, LSTM cell, attention, padding and
packing, teacher forcing, beam search step by step, sampling temperature, and a short history of the field.

Every function takes the output path, draws one figure and saves it as PNG. None of them reads lab data: the
figures made from the lab's own code (augmentation, synthetic samples, attention maps) live in `lab_figures.py`.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

# One palette for every deck, so the same idea has the same colour everywhere.
INK = "#1f2937"
GREY = "#9ca3af"
LIGHT = "#f3f4f6"
IMAGE = "#dbeafe"     # images, pixels
ENCODER = "#bfdbfe"   # CNN
FEATURE = "#c7d2fe"   # features, grids
DECODER = "#bbf7d0"   # RNN / LSTM
ATTENTION = "#fde68a" # attention
WORD = "#fecaca"      # tokens, words
OUTPUT = "#e9d5ff"    # decoding, metrics
ACCENT = "#dc2626"
DPI = 110


# ----------------------------------------------------------------------------------------------- primitives
def _canvas(width: float, height: float):
    """A figure with one axis in data coordinates 0..width x 0..height (1 unit = 1 inch), no ticks."""
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    return fig, ax


def _save(fig, path: Path) -> Path:
    """Save as PNG with a white background and close the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, facecolor="white", metadata=text_size_metadata(fig, DPI, path.stem))
    plt.close(fig)
    return path


MIN_TEXT_KEY = "MinTextPx"  # PNG text chunk: the smallest label's font size in the PNG's own pixels


def text_size_metadata(fig, dpi: float, name: str) -> dict[str, str]:
    """PNG metadata: the figure's name and its smallest visible label's font size in image pixels (pt x dpi / 72).

    A PNG on a slide cannot be measured by the browser, so the render test reads this and scales it by the
    image's displayed width over its natural width to get the size a projector shows.
    """
    from matplotlib.text import Text

    fig.canvas.draw()  # tick labels get their text only when drawn
    hidden = {id(t) for ax in fig.axes if not (ax.axison and ax.get_visible())
              for axis in (ax.xaxis, ax.yaxis) for t in axis.findobj(Text)}
    sizes = [t.get_fontsize() for t in fig.findobj(Text)
             if id(t) not in hidden and t.get_visible() and t.get_text().strip()]
    return {"Figure": name, MIN_TEXT_KEY: f"{min(sizes) * dpi / 72 if sizes else 999:.2f}"}


def box(ax, x, y, w, h, text="", color=LIGHT, fontsize=13, edge=INK, weight="normal", style="round,pad=0.02",
        text_color=INK, lw=1.5, **kw):
    """A rounded box centred at (x, y) with centred text."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle=style, facecolor=color, edgecolor=edge,
                                linewidth=lw, **kw))
    if text:
        ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, color=text_color, weight=weight)


def arrow(ax, start, end, color=INK, lw=1.6, style="-|>", rad=0.0, mutation_scale=16, **kw):
    """An arrow from `start` to `end` (optionally curved by `rad`)."""
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, color=color, linewidth=lw,
                                 mutation_scale=mutation_scale, connectionstyle=f"arc3,rad={rad}",
                                 shrinkA=2, shrinkB=2, **kw))


def op(ax, x, y, symbol, r=0.17, color="white", fontsize=13):
    """A pointwise-operation circle (x, +, tanh)."""
    ax.add_patch(Circle((x, y), r, facecolor=color, edgecolor=INK, linewidth=1.5, zorder=3))
    ax.text(x, y, symbol, ha="center", va="center", fontsize=fontsize, zorder=4, color=INK)


def photo_icon(ax, x, y, w, h):
    """A tiny stylised picture (sky, sun, hill, a red circle) standing for 'an input image'."""
    ax.add_patch(Rectangle((x - w / 2, y - h / 2), w, h, facecolor="#e0f2fe", edgecolor=INK, linewidth=1.5))
    ax.add_patch(Circle((x + w * 0.28, y + h * 0.25), min(w, h) * 0.1, facecolor="#facc15", edgecolor="none"))
    ax.add_patch(plt.Polygon([(x - w / 2, y - h / 2), (x - w * 0.1, y + h * 0.05), (x + w / 2, y - h / 2)],
                             facecolor="#86efac", edgecolor="none"))
    ax.add_patch(Circle((x - w * 0.2, y - h * 0.22), min(w, h) * 0.13, facecolor="#ef4444", edgecolor="none"))


def grid_icon(ax, x, y, size, n=4, color=FEATURE, highlight=None, alphas=None):
    """An n x n grid of feature cells centred at (x, y); `alphas` shades cells by weight."""
    cell = size / n
    for r in range(n):
        for c in range(n):
            face = color
            if alphas is not None:
                a = alphas[r][c]
                face = (1.0, 0.75 - 0.55 * a, 0.2 - 0.2 * a, 0.25 + 0.75 * a)
            if highlight is not None and (r, c) == highlight:
                face = ATTENTION
            ax.add_patch(Rectangle((x - size / 2 + c * cell, y + size / 2 - (r + 1) * cell), cell, cell,
                                   facecolor=face, edgecolor=INK, linewidth=0.8))


# ------------------------------------------------------------------------------------------------- figures
def pipeline(path: Path) -> Path:
    """The lab's data flow, one box per notebook (16 pt type: 20 px and more shown 1120 px wide)."""
    fig, ax = _canvas(12, 4.4)
    steps = [("01", "COCO data", IMAGE), ("02", "augment", IMAGE), ("03", "vocabulary", WORD),
             ("04", "Dataset", LIGHT), ("05", "CNN encoder", ENCODER), ("06", "RNN decoder", DECODER),
             ("07", "training", DECODER), ("08", "evaluate", OUTPUT), ("09", "attention", ATTENTION)]
    xs = [1.05 + i * 1.24 for i in range(len(steps))]
    rows = (2.85, 1.55)  # zigzag: neighbours sit on different rows, so each box may be twice as wide as a step
    for i, (x, (num, label, color)) in enumerate(zip(xs, steps, strict=True)):
        y = rows[i % 2]
        box(ax, x, y, 2.0, 0.9, f"{num}\n{label}", color=color, fontsize=16)
        if i:
            py = rows[(i - 1) % 2]
            arrow(ax, (xs[i - 1] + 0.5, py + (-0.45 if py > y else 0.45)), (x - 0.5, y + (0.45 if py > y else -0.45)))
    ax.text(6, 3.95, "00: set-up; profile quick (shapes), flickr8k or coco (real photos)",
            ha="center", fontsize=16, color=INK)
    ax.text(6, 0.45, "labutils: one tested module per step; the notebooks call it and explain why",
            ha="center", fontsize=16, color="#4b5563", style="italic")
    return _save(fig, path)



def encoder_decoder(path: Path) -> Path:
    """Show and Tell: CNN -> image vector -> LSTM unrolled over the caption (17 pt: 20 px shown 900 px wide)."""
    fig, ax = _canvas(10, 4.25)
    size, yl = 17, 2.35
    photo_icon(ax, 0.65, yl, 1.0, 1.0)
    ax.text(0.65, 1.45, "image", ha="center", va="top", fontsize=size)
    ax.add_patch(plt.Polygon([(1.35, 3.1), (2.3, 2.7), (2.3, 2.0), (1.35, 1.6)], facecolor=ENCODER, edgecolor=INK,
                             lw=1.5))
    ax.text(1.82, yl, "CNN", ha="center", va="center", fontsize=size)
    arrow(ax, (1.15, yl), (1.35, yl))
    box(ax, 2.75, yl, 0.45, 1.1, "v", color=FEATURE, fontsize=size + 3)
    arrow(ax, (2.3, yl), (2.52, yl))
    inputs, outputs = ["v", "<start>", "a", "red", "circle"], ["", "a", "red", "circle", "<end>"]
    x0, dx = 3.8, 1.35
    for i, (word_in, word_out) in enumerate(zip(inputs, outputs, strict=True)):
        x = x0 + i * dx
        box(ax, x, yl, 1.0, 0.75, "LSTM", color=DECODER, fontsize=size)
        box(ax, x, 1.0, 1.2, 0.5, word_in if i else "W·v", color=FEATURE if i == 0 else WORD, fontsize=size)
        arrow(ax, (x, 1.25), (x, yl - 0.38))
        if word_out:
            box(ax, x, 3.5, 1.2, 0.5, word_out, color=OUTPUT, fontsize=size)
            arrow(ax, (x, yl + 0.38), (x, 3.25))
        if i:
            arrow(ax, (x - dx + 0.5, yl), (x - 0.5, yl))
    arrow(ax, (2.95, 1.85), (x0 - 0.7, 1.0), rad=0.25, color=GREY)
    ax.text(6.5, 3.95, "one LSTM, weights shared over time; h, c carried →", ha="center", fontsize=size)
    ax.text(x0 + dx + 0.1, 2.9, "softmax", ha="left", fontsize=size, color="#4b5563")
    ax.text(5.0, 0.3, "training: feed the true previous word (teacher forcing)",
            ha="center", fontsize=size, color="#4b5563", style="italic")
    return _save(fig, path)



def lstm_cell(path: Path) -> Path:
    """The LSTM cell: forget, input and output gates, candidate, cell state highway.

    Shown 640 px wide beside its equations, so its type is 23-24 pt on a 10-inch canvas (20 px and more).
    """
    fig, ax = _canvas(10, 5.6)
    big, small = 24, 23
    ax.add_patch(FancyBboxPatch((1.3, 0.9), 6.9, 3.6, boxstyle="round,pad=0.05", facecolor="#f0fdf4",
                                edgecolor=INK, linewidth=1.6))
    ytop, ybot = 3.95, 1.55
    # the cell-state highway
    arrow(ax, (0.3, ytop), (9.6, ytop), lw=2.4)
    ax.text(0.2, ytop + 0.15, r"$c_{t-1}$", fontsize=big)
    ax.text(9.0, ytop + 0.15, r"$c_t$", fontsize=big)
    # the hidden-state input path
    ax.plot([0.3, 5.9], [ybot - 0.6, ybot - 0.6], color=INK, lw=1.6)
    ax.text(0.2, ybot - 0.5, r"$h_{t-1}$", fontsize=big)
    ax.text(1.15, 0.05, r"$x_t$", fontsize=big)
    ax.text(2.3, 0.2, r"gates see $[h_{t-1}, x_t]$", fontsize=small, color="#4b5563")
    arrow(ax, (1.7, 0.35), (1.7, ybot - 0.6), style="-")
    gates = [(2.2, r"$\sigma$", r"$f_t$"), (3.4, r"$\sigma$", r"$i_t$"), (4.65, "tanh", r"$\tilde c_t$"),
             (5.9, r"$\sigma$", r"$o_t$")]
    for x, fn, name in gates:
        arrow(ax, (x, ybot - 0.6), (x, ybot - 0.25), style="-")
        box(ax, x, ybot + 0.05, 0.95 if fn == "tanh" else 0.6, 0.55, fn, color=ATTENTION, fontsize=small)
        ax.text(x - 0.5, ybot + 0.45, name, fontsize=big, color="#92400e", ha="right")
    # forget: c_{t-1} * f
    op(ax, 2.2, ytop, "×", r=0.22, fontsize=small)
    arrow(ax, (2.2, ybot + 0.33), (2.2, ytop - 0.22))
    # input * candidate, then added
    op(ax, 4.0, 2.8, "×", r=0.22, fontsize=small)
    arrow(ax, (3.4, ybot + 0.33), (3.88, 2.6), rad=-0.2)
    arrow(ax, (4.65, ybot + 0.33), (4.12, 2.6), rad=0.2)
    op(ax, 4.0, ytop, "+", r=0.22, fontsize=small)
    arrow(ax, (4.0, 3.02), (4.0, ytop - 0.22))
    # output: o * tanh(c_t)
    box(ax, 7.0, 3.15, 0.95, 0.5, "tanh", color="white", fontsize=small)
    arrow(ax, (7.0, ytop), (7.0, 3.4))
    op(ax, 7.0, 2.15, "×", r=0.22, fontsize=small)
    arrow(ax, (7.0, 2.9), (7.0, 2.37))
    arrow(ax, (5.9, ybot + 0.33), (6.78, 2.1), rad=-0.25)
    arrow(ax, (7.22, 2.15), (9.6, 2.15), lw=2.0)
    ax.text(9.0, 2.3, r"$h_t$", fontsize=big)
    ax.text(4.75, 4.95, "cell state: the gradient highway", ha="center", fontsize=small, color="#166534",
            style="italic")
    return _save(fig, path)



def attention(path: Path) -> Path:
    """Show, Attend and Tell: grid features scored against h, softmax weights, context vector into the LSTM.

    16 pt type on a 12-inch canvas: 20 px and more when the slide shows it 1120 px wide.
    """
    fig, ax = _canvas(12, 5.4)
    size = 16
    photo_icon(ax, 0.65, 3.3, 1.0, 1.0)
    arrow(ax, (1.15, 3.3), (1.4, 3.3))
    ax.add_patch(plt.Polygon([(1.4, 3.9), (2.3, 3.6), (2.3, 3.0), (1.4, 2.7)], facecolor=ENCODER, edgecolor=INK))
    ax.text(1.85, 3.3, "CNN", ha="center", va="center", fontsize=size)
    arrow(ax, (2.3, 3.3), (2.55, 3.3))
    grid_icon(ax, 3.2, 3.3, 1.2)
    ax.text(3.2, 4.05, r"grid $a_1 \dots a_P$ [P, C]", ha="center", fontsize=size)
    ax.text(3.2, 2.4, r"$W_a a_i$: once per image", fontsize=size, color="#4b5563", ha="center")
    box(ax, 5.3, 3.3, 2.4, 1.0, "$e_{t,i} = w^\\top \\tanh($\n$W_a a_i + W_h h_{t-1})$", color=ATTENTION,
        fontsize=size)
    arrow(ax, (3.85, 3.3), (4.08, 3.3))
    box(ax, 7.55, 3.3, 1.7, 1.0, "$\\alpha_t =$\n$\\mathrm{softmax}(e_t)$", color=ATTENTION, fontsize=size)
    arrow(ax, (6.52, 3.3), (6.68, 3.3))
    weights = [[0.02, 0.05, 0.03, 0.01], [0.05, 0.4, 0.12, 0.02], [0.03, 0.15, 0.06, 0.01], [0.01, 0.02, 0.01, 0.01]]
    peak = max(max(r) for r in weights)
    grid_icon(ax, 9.3, 3.3, 1.2, alphas=[[w / peak for w in r] for r in weights])
    ax.text(9.3, 4.05, r"weights $\alpha_{t,i}$ (sum to 1)", ha="center", fontsize=size)
    arrow(ax, (8.42, 3.3), (8.68, 3.3))
    # context and LSTM
    box(ax, 9.3, 1.3, 2.5, 0.7, r"$z_t = \beta_t \sum_i \alpha_{t,i}\, a_i$", color=FEATURE, fontsize=size)
    arrow(ax, (9.3, 2.68), (9.3, 1.67))
    ax.text(9.45, 2.15, r"gate $\beta_t = \sigma(f_\beta(h_{t-1}))$", fontsize=size, color="#4b5563")
    box(ax, 6.5, 1.3, 1.7, 0.8, "LSTMCell", color=DECODER, fontsize=size)
    arrow(ax, (8.03, 1.3), (7.37, 1.3))
    box(ax, 3.4, 1.3, 2.2, 0.6, r"embed($y_{t-1}$)", color=WORD, fontsize=size)
    arrow(ax, (4.52, 1.3), (5.63, 1.3))
    box(ax, 6.5, 0.3, 2.3, 0.45, r"$p(y_t)$ softmax", color=OUTPUT, fontsize=size)
    arrow(ax, (6.5, 0.88), (6.5, 0.54))
    arrow(ax, (6.1, 1.72), (5.5, 2.78), rad=-0.2, color=ACCENT)
    ax.text(6.45, 2.1, r"$h_{t-1}$: where next?", fontsize=size, color=ACCENT)
    ax.text(6, 4.95, "one decoding step of Show, Attend and Tell (soft, additive attention)", ha="center",
            fontsize=size)
    return _save(fig, path)



def grid_vs_pooled(path: Path) -> Path:
    """A CNN feature map as a grid of P vectors (for attention) or one pooled vector (Show and Tell)."""
    fig, ax = _canvas(11, 4.0)
    size = 15.5  # 20 px and more shown 1160 px wide
    photo_icon(ax, 1.0, 2.0, 1.5, 1.5)
    ax.text(1.0, 0.85, "3 × H × W", ha="center", fontsize=size)
    arrow(ax, (1.8, 2.0), (2.3, 2.0))
    ax.add_patch(plt.Polygon([(2.3, 2.9), (3.8, 2.5), (3.8, 1.5), (2.3, 1.1)], facecolor=ENCODER, edgecolor=INK))
    ax.text(3.05, 2.0, "CNN\n(no head)", ha="center", va="center", fontsize=size)
    arrow(ax, (3.8, 2.0), (4.3, 2.0))
    for k in range(4):  # a stack of channels
        ax.add_patch(Rectangle((4.4 + 0.12 * k, 1.3 + 0.12 * k), 1.2, 1.2, facecolor=FEATURE, edgecolor=INK, lw=0.8))
    ax.text(5.15, 0.85, "C × h × w", ha="center", fontsize=size)
    ax.text(5.15, 3.15, "adaptive pool\nto g × g", ha="center", fontsize=size, color="#4b5563")
    arrow(ax, (6.1, 2.4), (7.0, 3.0))
    arrow(ax, (6.1, 1.6), (7.0, 1.0))
    grid_icon(ax, 7.6, 3.0, 1.0)
    ax.text(8.3, 3.0, "grid [P = g², C]:\nattention picks\nwhere to look", va="center", fontsize=size)
    box(ax, 7.6, 1.0, 0.35, 1.0, "", color=FEATURE)
    ax.text(8.3, 1.0, "pooled [C]:\nmean of the grid,\nShow and Tell's v", va="center", fontsize=size)
    return _save(fig, path)



def padding(path: Path) -> Path:
    """Collate: captions of different lengths padded to one tensor, with lengths, sorted longest first.

    The two steps are stacked so that every token is 17 pt: 20 px and more shown 900 px wide.
    """
    fig, ax = _canvas(10, 4.85)
    size = 17
    captions = [["<start>", "a", "red", "circle", "<end>"],
                ["<start>", "two", "blue", "squares", "above", "a", "circle", "<end>"],
                ["<start>", "three", "green", "circles", "<end>"]]
    order = sorted(range(3), key=lambda i: -len(captions[i]))
    width = max(map(len, captions))
    for panel, (title, rows, top) in enumerate([("as the Dataset returns them", [0, 1, 2], 4.55),
                                                 ("collate: pad with 0, sort by length", order, 2.4)]):
        ax.text(0.1, top, title, fontsize=size, weight="bold", va="center")
        for r, i in enumerate(rows):
            y = top - 0.5 - r * 0.52
            tokens = captions[i] + (["<pad>"] * (width - len(captions[i])) if panel else [])
            for j, tok in enumerate(tokens):
                color = LIGHT if tok == "<pad>" else (OUTPUT if tok in ("<start>", "<end>") else WORD)
                box(ax, 0.62 + j * 1.08, y, 1.04, 0.46, tok, color=color, fontsize=size, style="square,pad=0", lw=1)
            if panel:
                ax.text(0.12 + width * 1.08 + 0.1, y, f"len {len(captions[i])}", va="center", fontsize=size)
    ax.text(0.1, 0.12, "the loss ignores index 0 (<pad>); packing skips it", fontsize=size, color="#4b5563",
            style="italic", va="center")
    return _save(fig, path)



def packed_sequences(path: Path) -> Path:
    """pack_padded_sequence: time-major, the batch shrinks as sequences end (batch_sizes)."""
    fig, ax = _canvas(10, 4.2)
    size = 16  # 20 px and more shown 1000 px wide
    lengths = [6, 4, 3]
    names = ["a", "b", "c"]
    ax.text(0.2, 3.8, "padded [3, 6]: 5 of 18 slots wasted", fontsize=size, weight="bold")
    for r, n in enumerate(lengths):
        for t in range(6):
            real = t < n
            box(ax, 0.55 + t * 0.62, 3.1 - r * 0.62, 0.58, 0.52, f"{names[r]}{t}" if real else "pad",
                color=WORD if real else LIGHT, fontsize=size, style="square,pad=0", lw=1)
    ax.text(5.5, 3.8, "packed: ordered by time step", fontsize=size, weight="bold")
    x = 5.5
    batch_sizes = [sum(n > t for n in lengths) for t in range(6)]
    for t, b in enumerate(batch_sizes):
        for r in range(b):
            box(ax, x + 0.29, 3.1 - r * 0.62, 0.56, 0.52, f"{names[r]}{t}", color=WORD, fontsize=size,
                style="square,pad=0", lw=1)
        ax.text(x + 0.29, 1.3, str(b), ha="center", fontsize=size, color=ACCENT)
        x += 0.64
    ax.text(0.2, 0.8, "batch_sizes = " + str(batch_sizes) + ": step t runs on the first b_t rows",
            fontsize=size, color=ACCENT)
    ax.text(0.2, 0.25, "rows sorted by length (or enforce_sorted=False); lengths on the CPU",
            fontsize=size, color="#4b5563", style="italic")
    return _save(fig, path)



def teacher_forcing(path: Path) -> Path:
    """Teacher forcing vs free running vs scheduled sampling, three rows of unrolled steps (17 pt: 20 px at 800)."""
    fig, ax = _canvas(9.3, 4.5)
    size = 17
    rows = [("teacher\nforcing", ["<start>", "a", "red", "circle"], ["a", "red", "circle", "<end>"], "true"),
            ("free\nrunning", ["<start>", "a", "blue", "circle"], ["a", "blue", "circle", "<end>"], "own"),
            ("scheduled\nsampling", ["<start>", "a", "blue", "circle"], ["a", "blue", "circle", "<end>"], "mix")]
    for r, (title, ins, outs, kind) in enumerate(rows):
        y = 3.76 - r * 1.37
        ax.text(0.1, y, title, fontsize=size, va="center", weight="bold")
        for t, (w_in, w_out) in enumerate(zip(ins, outs, strict=True)):
            x = 2.85 + t * 1.75
            box(ax, x, y, 0.9, 0.55, "LSTM", color=DECODER, fontsize=size)
            own = kind == "own" and t > 0 or kind == "mix" and t == 2
            box(ax, x - 1.0, y - 0.48, 1.05, 0.38, w_in, color=OUTPUT if own else WORD, fontsize=size)
            arrow(ax, (x - 0.7, y - 0.29), (x - 0.45, y - 0.15))
            box(ax, x + 0.55, y + 0.48, 1.05, 0.38, w_out, color=OUTPUT, fontsize=size)
            arrow(ax, (x + 0.2, y + 0.28), (x + 0.35, y + 0.29))
            if own:
                arrow(ax, (x - 1.75 + 0.3, y + 0.29), (x - 1.0, y - 0.29), rad=-0.35, color=ACCENT, lw=1.2)
            if t:
                arrow(ax, (x - 1.3, y), (x - 0.45, y))
    ax.text(0.1, 0.02, "pink: the true word fed in    purple: the model's own last word",
            fontsize=size, color="#4b5563", va="bottom")
    return _save(fig, path)



# ------------------------------------------------------------------------------------------- beam search
# A toy next-word model whose numbers are consistent on every slide: greedy picks "a" (0.5) and ends with a
# poorer caption than the beam, which keeps "two" alive at step 1.
TOY_MODEL = {
    (): {"a": 0.50, "two": 0.40, "the": 0.10},
    ("a",): {"red": 0.40, "blue": 0.35, "circle": 0.25},
    ("two",): {"red": 0.90, "blue": 0.10},
    ("the",): {"circle": 0.70, "square": 0.30},
    ("a", "red"): {"circle": 0.45, "square": 0.40, "<end>": 0.15},
    ("a", "blue"): {"square": 0.55, "circle": 0.45},
    ("two", "red"): {"circles": 0.95, "squares": 0.05},
    ("two", "blue"): {"squares": 0.80, "circles": 0.20},
}


def toy_next(prefix: tuple[str, ...]) -> dict[str, float]:
    """The toy model's next-word distribution (after a noun it says <end>)."""
    return TOY_MODEL.get(prefix, {"<end>": 0.9, "and": 0.1})


def toy_beam_search(k: int = 2, steps: int = 4):
    """Beam search on the toy model; returns, per step, every expanded candidate and the kept ones.

    Each candidate is (tokens, log_prob); finished beams (ending in <end>) are carried over unchanged.
    """
    beams = [((), 0.0)]
    history = []
    for _ in range(steps):
        candidates = []
        for tokens, score in beams:
            if tokens and tokens[-1] == "<end>":
                candidates.append((tokens, score))
                continue
            for word, p in toy_next(tokens).items():
                candidates.append((tokens + (word,), score + math.log(p)))
        candidates.sort(key=lambda c: -c[1])
        beams = candidates[:k]
        history.append((candidates, beams))
    return history


def toy_greedy(steps: int = 4):
    """Greedy decoding on the toy model: (tokens, log_prob)."""
    tokens, score = (), 0.0
    for _ in range(steps):
        if tokens and tokens[-1] == "<end>":
            break
        word, p = max(toy_next(tokens).items(), key=lambda kv: kv[1])
        tokens, score = tokens + (word,), score + math.log(p)
    return tokens, score


def beam_tree(path: Path, upto: int, k: int = 2) -> Path:
    """The beam-search tree up to step `upto` (1..4): kept beams green and bold, pruned candidates grey.

    Type is 16 pt on an 11.5-inch canvas, so that shown 1060 px wide every label is at least 20 px.
    """
    history = toy_beam_search(k=k, steps=4)
    size = 16
    fig, ax = _canvas(11.5, 4.9)
    top, bottom, col0, dx, w, h = 4.44, 1.62, 0.65, 2.42, 1.9, 0.42
    node_y: dict[tuple[str, ...], float] = {(): (top + bottom) / 2}
    box(ax, col0, node_y[()], 1.15, h, "<start>", color=OUTPUT, fontsize=size)
    for step in range(upto):
        candidates, kept = history[step]
        kept_tokens = {tokens for tokens, _ in kept}
        fresh = [c for c in candidates if len(c[0]) == step + 1]
        # group children under their parent (parents top to bottom) so that no two edges cross
        fresh.sort(key=lambda c: (-node_y[c[0][:-1]], -c[1]))
        x = col0 + (step + 1) * dx
        gap = (top - bottom) / max(len(fresh) - 1, 1)
        for j, (tokens, score) in enumerate(fresh):
            y = top - j * gap if len(fresh) > 1 else node_y[()]
            node_y[tokens] = y
            alive = tokens in kept_tokens
            parent = tokens[:-1]
            px = col0 + step * dx
            p_word = toy_next(parent)[tokens[-1]]
            shade = INK if alive else GREY
            arrow(ax, (px + (0.58 if not parent else w / 2), node_y[parent]), (x - w / 2, y),
                  color=shade, lw=2.0 if alive else 0.9)
            ax.text(x - w / 2 + 0.05, y + h / 2 + 0.02, f"p={p_word:.2f}", fontsize=size, color=shade, va="bottom")
            box(ax, x, y, w, h, f"{tokens[-1]}  {score:+.2f}", color=DECODER if alive else LIGHT, fontsize=size,
                edge=shade, text_color=shade, lw=2.0 if alive else 1.0)
    candidates, best = history[upto - 1]
    lines = [(f"step {upto}: {len(candidates)} candidates; keep the k={k} with the highest total log-probability",
              INK),
             ("   ".join(f"beam {i + 1}: {' '.join(t)} ({s:+.2f})" for i, (t, s) in enumerate(best)), "#166534")]
    if upto == 4:
        g_tokens, g_score = toy_greedy()
        lines += [(f"greedy takes the best word each step: {' '.join(g_tokens)} ({g_score:+.2f})", ACCENT),
                  ("the beam kept 'two' alive and found a likelier caption", ACCENT)]
    for i, (line, color) in enumerate(lines):
        ax.text(0.15, 1.1 - i * 0.27, line, fontsize=size, color=color, va="center")
    return _save(fig, path)


def _parent_score(history, tokens: tuple[str, ...]) -> float:
    """Log-probability of the prefix `tokens[:-1]` (0 for the empty prefix)."""
    prefix = tokens[:-1]
    if not prefix:
        return 0.0
    score = 0.0
    for i in range(len(prefix)):
        score += math.log(toy_next(prefix[:i])[prefix[i]])
    return score


# --------------------------------------------------------------------------------------------- sampling
def sampling(path: Path) -> Path:
    """One next-word distribution under temperatures 0.5/1/2, and what top-k and top-p keep of it."""
    import numpy as np

    size = 15.5  # 20 px and more shown 1040 px wide
    words = ["circle", "square", "shape", "disc", "ring", "ball", "dot", "blob"]
    logits = np.array([3.0, 2.2, 1.6, 1.0, 0.6, 0.3, 0.0, -0.4])
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    for ax, temperature in zip(axes, (0.5, 1.0, 2.0), strict=True):
        p = np.exp(logits / temperature)
        p /= p.sum()
        colors = [DECODER] * len(words)
        if temperature == 1.0:
            order = np.argsort(-p)
            cumulative = np.cumsum(p[order])
            keep_p = order[: int(np.searchsorted(cumulative, 0.9) + 1)]
            colors = [ATTENTION if i in keep_p else LIGHT for i in range(len(words))]
            for i in order[:3]:
                colors[i] = DECODER
            ax.set_title("T = 1: top-k=3 green,\ntop-p=0.9 adds yellow", fontsize=size)
        else:
            ax.set_title(f"T = {temperature:g}: {'sharper' if temperature < 1 else 'flatter'}", fontsize=size)
        ax.bar(words, p, color=colors, edgecolor=INK, linewidth=0.8)
        ax.set_ylim(0, 1)
        ax.set_yticks([0, 0.5, 1])
        ax.tick_params(axis="x", rotation=60, labelsize=size)
        ax.tick_params(axis="y", labelsize=size)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_ylabel("p(next word)", fontsize=size)
    fig.suptitle("sample from softmax(logits / T); top-k / top-p cut the tail first", fontsize=size)
    fig.tight_layout()
    return _save(fig, path)



# ---------------------------------------------------------------------------------------------- history
def timeline(path: Path) -> Path:
    """A short history of image captioning, 2014-2023 (16 pt on four levels: 20 px and more at 1150 px wide)."""
    fig, ax = _canvas(12, 5.6)
    size = 16
    axis_y, a, b, c, d = 2.9, 4.95, 3.95, 1.85, 0.95
    events = [
        (2014, "multimodal LM\nKiros", b), (2015, "Show and Tell\nVinyals", c),
        (2015.4, "Show, Attend\nand Tell  Xu", a), (2017, "SCST\nRennie", c),
        (2017.5, "Transformer\nVaswani", b), (2018, "bottom-up\nAnderson", d),
        (2020, "M², Oscar\nCornia / Li", b), (2021, "CLIP, ClipCap\nRadford/Mokady", c),
        (2022, "BLIP, Flamingo\nLi / Alayrac", b), (2023, "BLIP-2, LLaVA\nLi / Liu", d),
    ]

    def x_of(year: float) -> float:
        return 1.2 + (year - 2014) * 1.08

    ax.plot([0.3, 11.8], [axis_y, axis_y], color=INK, lw=2)
    for year in range(2014, 2024):
        ax.plot([x_of(year)] * 2, [axis_y - 0.08, axis_y + 0.08], color=INK)
        ax.text(x_of(year), axis_y - 0.12, str(year), ha="center", va="top", fontsize=size, color="#4b5563")
    for year, label, y in events:
        x = x_of(year)
        edge = y - 0.36 if y > axis_y else y + 0.36
        ax.plot([x, x], [axis_y, edge], color=GREY, lw=1)
        color = DECODER if year <= 2015.5 else (ATTENTION if year < 2021 else OUTPUT)
        box(ax, x, y, 1.95, 0.72, label, color=color, fontsize=size)
    ax.text(0.2, 0.2, "green: this lab   yellow: RL, detectors, transformers   purple: web-scale pre-training",
            fontsize=size, color="#4b5563")
    return _save(fig, path)



# ------------------------------------------------------------------------------------------------ registry
def all_diagrams() -> dict[str, callable]:
    """Name -> function(path) for every diagram (all required: they depend on nothing but matplotlib)."""
    diagrams = {
        "pipeline": pipeline, "encoder_decoder": encoder_decoder, "lstm_cell": lstm_cell, "attention": attention,
        "grid_vs_pooled": grid_vs_pooled, "padding": padding, "packed_sequences": packed_sequences,
        "teacher_forcing": teacher_forcing, "sampling": sampling, "timeline": timeline,
    }
    for step in range(1, 5):
        diagrams[f"beam_step{step}"] = lambda path, step=step: beam_tree(path, step)
    return diagrams

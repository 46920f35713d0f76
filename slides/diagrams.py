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
    """The lab's data flow, one box per notebook."""
    fig, ax = _canvas(12, 4.2)
    steps = [
        ("01", "COCO-format\ndataset", IMAGE), ("02", "augment\n& resize", IMAGE), ("03", "vocabulary\n(JSON)", WORD),
        ("04", "Dataset\n+ collate", LIGHT), ("05", "CNN encoder\n+ cache", ENCODER),
        ("06", "RNN decoder\n(+ attention)", DECODER), ("07", "training", DECODER),
        ("08", "decode +\nevaluate", OUTPUT), ("09", "attention\nmaps", ATTENTION),
    ]
    xs = [0.8 + i * 1.3 for i in range(len(steps))]
    for i, (x, (num, label, color)) in enumerate(zip(xs, steps, strict=True)):
        y = 2.55 if i % 2 == 0 else 1.75
        box(ax, x, y, 1.2, 0.95, label, color=color, fontsize=10.5)
        ax.text(x, y + 0.63, f"notebook {num}", ha="center", va="center", fontsize=9.5, color="#4b5563")
        if i:
            px, py = xs[i - 1], 2.55 if (i - 1) % 2 == 0 else 1.75
            arrow(ax, (px + 0.59, py), (x - 0.59, y))
    ax.text(6, 3.85, "notebook 00: set-up, the two profiles (quick: CPU + synthetic shapes; full: CUDA + MS-COCO)",
            ha="center", fontsize=12, color=INK)
    ax.text(6, 0.55, "labutils: one tested module per step  ·  the notebooks only call it and explain why",
            ha="center", fontsize=12, color="#4b5563", style="italic")
    return _save(fig, path)


def encoder_decoder(path: Path) -> Path:
    """Show and Tell: CNN -> image vector -> LSTM unrolled over the caption."""
    fig, ax = _canvas(12, 4.6)
    photo_icon(ax, 0.9, 2.3, 1.3, 1.3)
    ax.text(0.9, 1.35, "image", ha="center", fontsize=11)
    ax.add_patch(plt.Polygon([(1.9, 3.3), (3.2, 2.75), (3.2, 1.85), (1.9, 1.3)], facecolor=ENCODER, edgecolor=INK, lw=1.5))
    ax.text(2.55, 2.3, "CNN\nencoder", ha="center", va="center", fontsize=12)
    arrow(ax, (1.6, 2.3), (1.9, 2.3))
    box(ax, 3.85, 2.3, 0.5, 1.3, "", color=FEATURE)
    ax.text(3.85, 2.3, "v", ha="center", va="center", fontsize=16, style="italic")
    ax.text(3.85, 1.35, "image\nvector", ha="center", fontsize=10, va="top")
    arrow(ax, (3.2, 2.3), (3.6, 2.3))
    inputs = ["v", "<start>", "a", "red", "circle"]
    outputs = ["", "a", "red", "circle", "<end>"]
    x0, dx = 5.0, 1.5
    for i, (word_in, word_out) in enumerate(zip(inputs, outputs, strict=True)):
        x = x0 + i * dx
        box(ax, x, 2.3, 1.0, 0.8, "LSTM", color=DECODER, fontsize=12)
        label = word_in if i else "W·v"
        box(ax, x, 0.85, 1.05, 0.5, label, color=FEATURE if i == 0 else WORD, fontsize=11)
        arrow(ax, (x, 1.1), (x, 1.9))
        if word_out:
            box(ax, x, 3.85, 1.05, 0.5, word_out, color=OUTPUT, fontsize=11)
            arrow(ax, (x, 2.7), (x, 3.6))
            ax.text(x + 0.12, 3.15, "softmax", fontsize=8, color="#4b5563")
        if i:
            arrow(ax, (x - dx + 0.5, 2.3), (x - 0.5, 2.3))
            ax.text(x - dx / 2, 2.42, "h, c", ha="center", fontsize=9, color="#4b5563")
    arrow(ax, (4.1, 2.0), (x0 - 0.2, 0.9), rad=0.25, color=GREY)
    ax.text(x0 + 2 * dx, 4.45, "decoder: one LSTM, its weights shared across time steps", ha="center", fontsize=12)
    ax.text(x0 + 2 * dx, 0.2, "inputs at training time: the true previous word (teacher forcing)",
            ha="center", fontsize=10.5, color="#4b5563", style="italic")
    return _save(fig, path)


def lstm_cell(path: Path) -> Path:
    """The LSTM cell: forget, input and output gates, candidate, cell state highway."""
    fig, ax = _canvas(10, 5.2)
    ax.add_patch(FancyBboxPatch((1.3, 0.9), 6.9, 3.5, boxstyle="round,pad=0.05", facecolor="#f0fdf4",
                                edgecolor=INK, linewidth=1.6))
    ytop, ybot = 3.85, 1.45
    # the cell-state highway
    arrow(ax, (0.3, ytop), (9.6, ytop), lw=2.4)
    ax.text(0.3, ytop + 0.22, r"$c_{t-1}$", fontsize=15)
    ax.text(9.25, ytop + 0.22, r"$c_t$", fontsize=15)
    # the hidden-state input path
    ax.plot([0.3, 5.9], [ybot - 0.55, ybot - 0.55], color=INK, lw=1.6)
    ax.text(0.3, ybot - 0.4, r"$h_{t-1}$", fontsize=15)
    ax.text(1.5, 0.2, r"$x_t$", fontsize=15)
    ax.text(3.0, 0.45, r"every gate sees $[h_{t-1}, x_t]$", fontsize=11, color="#4b5563")
    arrow(ax, (1.7, 0.35), (1.7, ybot - 0.55), style="-")
    gates = [(2.2, r"$\sigma$", r"$f_t$"), (3.4, r"$\sigma$", r"$i_t$"), (4.6, "tanh", r"$\tilde c_t$"),
             (5.9, r"$\sigma$", r"$o_t$")]
    for x, fn, name in gates:
        arrow(ax, (x, ybot - 0.55), (x, ybot - 0.2), style="-")
        box(ax, x, ybot + 0.05, 0.75, 0.5, fn, color=ATTENTION, fontsize=14)
        ax.text(x - 0.62, ybot + 0.42, name, fontsize=14, color="#92400e")
    # forget: c_{t-1} * f
    op(ax, 2.2, ytop, "×")
    arrow(ax, (2.2, ybot + 0.3), (2.2, ytop - 0.17))
    # input * candidate, then added
    op(ax, 4.0, 2.65, "×")
    arrow(ax, (3.4, ybot + 0.3), (3.9, 2.52), rad=-0.2)
    arrow(ax, (4.6, ybot + 0.3), (4.1, 2.52), rad=0.2)
    op(ax, 4.0, ytop, "+")
    arrow(ax, (4.0, 2.82), (4.0, ytop - 0.17))
    # output: o * tanh(c_t)
    op(ax, 7.0, 3.0, "tanh", r=0.26, fontsize=10)
    arrow(ax, (7.0, ytop), (7.0, 3.26))
    op(ax, 7.0, 2.0, "×")
    arrow(ax, (7.0, 2.74), (7.0, 2.17))
    arrow(ax, (5.9, ybot + 0.3), (6.83, 1.95), rad=-0.25)
    arrow(ax, (7.17, 2.0), (9.6, 2.0), lw=2.0)
    ax.text(9.25, 2.15, r"$h_t$", fontsize=15)
    arrow(ax, (8.5, 2.0), (8.5, 4.85))
    ax.text(7.0, 4.7, r"$h_t$ to the softmax", fontsize=11)
    ax.text(4.75, 4.65, "cell state: a highway where gradients flow with little decay", ha="center",
            fontsize=11, color="#166534", style="italic")
    return _save(fig, path)


def attention(path: Path) -> Path:
    """Show, Attend and Tell: grid features scored against h, softmax weights, context vector into the LSTM."""
    fig, ax = _canvas(12, 5.4)
    photo_icon(ax, 0.9, 3.2, 1.3, 1.3)
    arrow(ax, (1.6, 3.2), (2.0, 3.2))
    ax.add_patch(plt.Polygon([(2.0, 3.9), (2.9, 3.6), (2.9, 2.8), (2.0, 2.5)], facecolor=ENCODER, edgecolor=INK))
    ax.text(2.45, 3.2, "CNN", ha="center", va="center", fontsize=11)
    arrow(ax, (2.9, 3.2), (3.2, 3.2))
    grid_icon(ax, 3.95, 3.2, 1.3)
    ax.text(3.95, 4.1, r"grid $a_1 \dots a_P$  [P, C]", ha="center", fontsize=11)
    # scores
    box(ax, 6.2, 3.2, 2.2, 0.9, r"$e_{t,i} = w^\top \tanh(W_a a_i + W_h h_{t-1})$", color=ATTENTION, fontsize=10.5)
    arrow(ax, (4.65, 3.2), (5.1, 3.2))
    ax.text(3.95, 2.3, r"$W_a a_i$: once per image", fontsize=9.5, color="#4b5563", ha="center")
    box(ax, 8.6, 3.2, 1.7, 0.9, r"$\alpha_t = \mathrm{softmax}(e_t)$", color=ATTENTION, fontsize=11)
    arrow(ax, (7.3, 3.2), (7.75, 3.2))
    weights = [[0.02, 0.05, 0.03, 0.01], [0.05, 0.4, 0.12, 0.02], [0.03, 0.15, 0.06, 0.01], [0.01, 0.02, 0.01, 0.01]]
    peak = max(max(r) for r in weights)
    grid_icon(ax, 10.75, 3.2, 1.3, alphas=[[w / peak for w in r] for r in weights])
    ax.text(10.75, 4.1, r"weights $\alpha_{t,i}$ (sum to 1)", ha="center", fontsize=11)
    arrow(ax, (9.45, 3.2), (10.1, 3.2))
    # context and LSTM
    box(ax, 10.75, 1.4, 1.9, 0.8, r"$z_t = \beta_t \sum_i \alpha_{t,i}\, a_i$", color=FEATURE, fontsize=11)
    arrow(ax, (10.75, 2.55), (10.75, 1.8))
    ax.text(10.6, 2.15, r"gate $\beta_t = \sigma(f_\beta(h_{t-1}))$", fontsize=9.5, color="#4b5563", ha="right")
    box(ax, 7.2, 1.4, 1.6, 0.9, "LSTMCell", color=DECODER, fontsize=12)
    arrow(ax, (9.8, 1.4), (8.0, 1.4))
    box(ax, 4.4, 1.4, 1.9, 0.6, r"embed($y_{t-1}$)", color=WORD, fontsize=11)
    arrow(ax, (5.35, 1.4), (6.4, 1.4))
    box(ax, 7.2, 0.35, 1.5, 0.45, r"$p(y_t)$ softmax", color=OUTPUT, fontsize=10)
    arrow(ax, (7.2, 0.95), (7.2, 0.58))
    arrow(ax, (7.0, 1.85), (6.2, 2.75), rad=-0.2, color=ACCENT)
    ax.text(5.45, 2.15, r"$h_{t-1}$ asks: where next?", fontsize=10, color=ACCENT)
    ax.text(6, 5.05, "one decoding step of Show, Attend and Tell (soft, additive attention)", ha="center",
            fontsize=13)
    return _save(fig, path)


def grid_vs_pooled(path: Path) -> Path:
    """A CNN feature map as a grid of P vectors (for attention) or one pooled vector (Show and Tell)."""
    fig, ax = _canvas(11, 4.0)
    photo_icon(ax, 1.0, 2.0, 1.5, 1.5)
    ax.text(1.0, 0.95, "3 × H × W", ha="center", fontsize=11)
    arrow(ax, (1.8, 2.0), (2.3, 2.0))
    ax.add_patch(plt.Polygon([(2.3, 2.9), (3.8, 2.5), (3.8, 1.5), (2.3, 1.1)], facecolor=ENCODER, edgecolor=INK))
    ax.text(3.05, 2.0, "CNN\n(no head)", ha="center", va="center", fontsize=11)
    arrow(ax, (3.8, 2.0), (4.3, 2.0))
    for k in range(4):  # a stack of channels
        ax.add_patch(Rectangle((4.4 + 0.12 * k, 1.3 + 0.12 * k), 1.2, 1.2, facecolor=FEATURE, edgecolor=INK, lw=0.8))
    ax.text(5.15, 0.95, "C × h × w", ha="center", fontsize=11)
    ax.text(5.15, 3.15, "adaptive pool\nto g × g", ha="center", fontsize=10, color="#4b5563")
    arrow(ax, (6.1, 2.4), (7.3, 3.0))
    arrow(ax, (6.1, 1.6), (7.3, 1.0))
    grid_icon(ax, 8.0, 3.0, 1.1)
    ax.text(8.8, 3.0, "grid [P = g², C]\nattention picks\nwhere to look", va="center", fontsize=11)
    box(ax, 8.0, 1.0, 0.35, 1.0, "", color=FEATURE)
    ax.text(8.4, 1.0, "pooled [C] = mean of the grid\nShow and Tell's image vector", va="center", fontsize=11)
    return _save(fig, path)


def padding(path: Path) -> Path:
    """Collate: captions of different lengths padded to one tensor, with lengths, sorted longest first."""
    fig, ax = _canvas(12.4, 3.9)
    captions = [["<start>", "a", "red", "circle", "<end>"],
                ["<start>", "two", "blue", "squares", "above", "a", "triangle", "<end>"],
                ["<start>", "three", "green", "circles", "<end>"]]
    order = sorted(range(3), key=lambda i: -len(captions[i]))
    width = max(map(len, captions))
    for panel, (title, rows, x0) in enumerate([("as the Dataset returns them", [0, 1, 2], 0.3),
                                                ("collate: pad with 0, sort by length", order, 5.9)]):
        ax.text(x0, 3.55, title, fontsize=12, weight="bold")
        for r, i in enumerate(rows):
            y = 2.9 - r * 0.75
            tokens = captions[i] + (["<pad>"] * (width - len(captions[i])) if panel else [])
            for j, tok in enumerate(tokens):
                color = LIGHT if tok == "<pad>" else (OUTPUT if tok in ("<start>", "<end>") else WORD)
                box(ax, x0 + 0.33 + j * 0.66, y, 0.62, 0.5, tok, color=color, fontsize=7.5,
                    style="square,pad=0", lw=1)
            if panel:
                ax.text(x0 + 0.33 + width * 0.66, y, f"len {len(captions[i])}", va="center", fontsize=10)
    ax.text(0.3, 0.35, "LongTensor [B, T] + lengths [B]: the loss ignores index 0 (<pad>), packing skips it",
            fontsize=11, color="#4b5563", style="italic")
    return _save(fig, path)


def packed_sequences(path: Path) -> Path:
    """pack_padded_sequence: time-major, the batch shrinks as sequences end (batch_sizes)."""
    fig, ax = _canvas(11.5, 4.2)
    lengths = [6, 4, 3]
    names = ["a", "b", "c"]
    ax.text(0.3, 3.8, "padded [B=3, T=6]: 18 slots, 5 wasted", fontsize=12, weight="bold")
    for r, n in enumerate(lengths):
        for t in range(6):
            real = t < n
            box(ax, 0.6 + t * 0.6, 3.1 - r * 0.62, 0.55, 0.5, f"{names[r]}{t}" if real else "pad",
                color=WORD if real else LIGHT, fontsize=9, style="square,pad=0", lw=1)
    ax.text(6.0, 3.8, "packed: data ordered by time step", fontsize=12, weight="bold")
    x = 6.0
    batch_sizes = [sum(n > t for n in lengths) for t in range(6)]
    for t, b in enumerate(batch_sizes):
        for r in range(b):
            box(ax, x + 0.28, 3.1 - r * 0.62, 0.5, 0.5, f"{names[r]}{t}", color=WORD, fontsize=9,
                style="square,pad=0", lw=1)
        ax.text(x + 0.28, 1.3, str(b), ha="center", fontsize=12, color=ACCENT)
        x += 0.62
    ax.text(6.0, 0.85, "batch_sizes = " + str(batch_sizes) + ": step t runs on the first b_t rows",
            fontsize=11, color=ACCENT)
    ax.text(0.3, 0.3, "needs rows sorted by length (or enforce_sorted=False); lengths stay on the CPU",
            fontsize=11, color="#4b5563", style="italic")
    return _save(fig, path)


def teacher_forcing(path: Path) -> Path:
    """Teacher forcing vs free running vs scheduled sampling, three rows of unrolled steps."""
    fig, ax = _canvas(12, 5.3)
    rows = [("teacher forcing (training)", ["<start>", "a", "red", "circle"], ["a", "red", "circle", "<end>"], "true"),
            ("free running (inference)", ["<start>", "a", "blue", "circle"], ["a", "blue", "circle", "<end>"], "own"),
            ("scheduled sampling", ["<start>", "a", "blue", "circle"], ["a", "blue", "circle", "<end>"], "mix")]
    for r, (title, ins, outs, kind) in enumerate(rows):
        y = 4.45 - r * 1.5
        ax.text(0.2, y, title, fontsize=12, va="center", weight="bold")
        for t, (w_in, w_out) in enumerate(zip(ins, outs, strict=True)):
            x = 4.4 + t * 1.9
            box(ax, x, y, 0.9, 0.55, "LSTM", color=DECODER, fontsize=10)
            own = kind == "own" and t > 0 or kind == "mix" and t == 2
            box(ax, x - 0.95, y - 0.45, 0.85, 0.4, w_in, color=OUTPUT if own else WORD, fontsize=9.5)
            arrow(ax, (x - 0.6, y - 0.3), (x - 0.45, y - 0.15))
            box(ax, x + 0.55, y + 0.5, 0.85, 0.4, w_out, color=OUTPUT, fontsize=9.5)
            arrow(ax, (x + 0.2, y + 0.28), (x + 0.4, y + 0.4))
            if own:
                arrow(ax, (x - 1.35 + 0.05, y + 0.5), (x - 0.95, y - 0.25), rad=-0.35, color=ACCENT, lw=1.2)
            if t:
                arrow(ax, (x - 1.45, y), (x - 0.45, y))
    ax.text(0.2, 0.25, "pink: the ground-truth word fed in    purple: the model's own previous prediction fed back",
            fontsize=11, color="#4b5563")
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

    words = ["circle", "square", "shape", "disc", "ring", "ball", "dot", "blob"]
    logits = np.array([3.0, 2.2, 1.6, 1.0, 0.6, 0.3, 0.0, -0.4])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
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
            ax.set_title("T = 1.0: top-k=3 (green), top-p=0.9 adds yellow", fontsize=10.5)
        else:
            ax.set_title(f"T = {temperature}: {'sharper, safer' if temperature < 1 else 'flatter, riskier'}",
                         fontsize=10.5)
        ax.bar(words, p, color=colors, edgecolor=INK, linewidth=0.8)
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", rotation=45, labelsize=9)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_ylabel("p(next word)")
    fig.suptitle("softmax(logits / T), then sample; top-k / top-p cut the tail before sampling", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- history
def timeline(path: Path) -> Path:
    """A short history of image captioning, 2014-2023."""
    fig, ax = _canvas(12, 5.2)
    axis_y, top, higher, bottom, lower = 2.6, 3.55, 4.5, 1.65, 0.85
    events = [
        (2014, "Kiros et al.\nmultimodal LM", top), (2015, "Show and Tell\nVinyals et al.", bottom),
        (2015.4, "Show, Attend and Tell\nXu et al.", higher), (2017, "Self-critical (SCST)\nRennie et al.", bottom),
        (2017.5, "Transformer\nVaswani et al.", top), (2018, "Bottom-up top-down\nAnderson et al.", lower),
        (2020, "M² Transformer, Oscar\nCornia / Li et al.", top), (2021, "CLIP; ClipCap\nRadford / Mokady", bottom),
        (2022, "BLIP, Flamingo\nLi / Alayrac et al.", top), (2023, "BLIP-2, LLaVA\nLi / Liu et al.", lower),
    ]

    def x_of(year: float) -> float:
        return 1.2 + (year - 2014) * 1.08

    ax.plot([0.6, 11.6], [axis_y, axis_y], color=INK, lw=2)
    for year in range(2014, 2024):
        ax.plot([x_of(year)] * 2, [axis_y - 0.08, axis_y + 0.08], color=INK)
        ax.text(x_of(year), axis_y - 0.15, str(year), ha="center", va="top", fontsize=9.5, color="#4b5563")
    for year, label, y in events:
        x = x_of(year)
        edge = y - 0.31 if y > axis_y else y + 0.31
        ax.plot([x, x], [axis_y, edge], color=GREY, lw=1)
        color = DECODER if year <= 2015.5 else (ATTENTION if year < 2021 else OUTPUT)
        box(ax, x, y, 1.62, 0.62, label, color=color, fontsize=8.5)
    ax.text(0.3, 0.2, "green: what this lab builds   yellow: bigger encoders, RL fine-tuning, transformers   "
            "purple: web-scale image-text pre-training", fontsize=10, color="#4b5563")
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

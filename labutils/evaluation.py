"""One-call evaluations for notebooks 08 and 09, built on `decode`, `metrics` and `grounding`.

* `evaluate_methods`: caption a split with several decoding methods and score each with the COCO metrics.
* `bleu_breakdown`: the same captions' BLEU computed the ways tutorials compute it, one difference at a time.
* `teacher_forced_vs_free_running`: how the model scores when it is fed the true previous words (training's
  view) and when it feeds itself its own words (what a user gets): exposure bias, measured.
* `attention_for_split`, `uniform_attention`, `grounding_ceiling`, `plot_grounding`, `show_mass_inside`: attention
  maps for `grounding.grounding_score`, its two reference points (uniform, best possible) and figures.
* `caption_photo`: caption your own photo with a `caption_cli.Captioner`, keeping the view the encoder had.
"""

from __future__ import annotations

import textwrap
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import decode, grounding, metrics
from .data import load_image, to_rgb
from .viz import as_array, encoder_view, save_figure, upsample_attention

# The decoding methods notebook 08 compares: name -> keyword arguments of `decode.caption_images`.
DEFAULT_METHODS: dict[str, dict] = {
    "greedy": {"method": "greedy"},
    "beam k=1": {"method": "beam", "beam_size": 1},
    "beam k=3": {"method": "beam", "beam_size": 3},
    "beam k=5": {"method": "beam", "beam_size": 5},
    "sample T=1.0": {"method": "sample", "temperature": 1.0},
    "sample T=0.5": {"method": "sample", "temperature": 0.5},
    "top-k k=5": {"method": "sample", "top_k": 5},
    "top-p p=0.9": {"method": "sample", "top_p": 0.9},
    "top-N 10,10,3": {"method": "sample", "top_n_schedule": decode.wide_then_narrow(wide=10, narrow=3, wide_steps=2)},
}


def _features(source: Callable, image_ids: Sequence[int]) -> torch.Tensor:
    return torch.stack([torch.as_tensor(source(i)).float() for i in image_ids])


def _device(decoder) -> torch.device:
    try:
        return next(decoder.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


# -- decoding methods side by side ----------------------------------------------------------------------------
@dataclass
class MethodComparison:
    """COCO metrics per decoding method (`table`), the captions behind them, and the references."""

    table: object  # pandas DataFrame: one row per method
    captions: dict  # method -> {image_id: decode.Caption}
    references: dict  # image_id -> reference captions

    def format_examples(self, image_ids: Iterable[int], width: int = 100) -> str:
        """The captions every method wrote for `image_ids`, one block per image, with its first reference."""
        pad = max(len(name) for name in self.captions)
        blocks = []
        for image_id in image_ids:
            lines = [f"image {image_id}   reference: {self.references[image_id][0]}"]
            for name, captions in self.captions.items():
                lines.append(f"  {name:<{pad}} : {textwrap.shorten(captions[image_id].text, width)}")
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)


def evaluate_methods(decoder, vocab, source: Callable, references: Mapping[int, list[str]],
                     image_ids: Sequence[int] | None = None, methods: Mapping[str, Mapping] | None = None,
                     max_len: int = decode.DEFAULT_MAX_LEN, seed: int = 0, spice: bool = False,
                     batch_size: int = 250, progress: bool = True) -> MethodComparison:
    """Caption `image_ids` (default: all of `references`) with every method and score each with the COCO metrics.

    `methods` maps a name to keyword arguments of `decode.caption_images` (default `DEFAULT_METHODS`); sampling
    methods get a generator seeded with `seed` unless they name one, so the table is reproducible. Features are
    read `batch_size` images at a time and decoded by every method (the coco profile's grids are large). Besides the
    metrics, the table holds the mean caption length, the share of distinct captions (diversity) and the decoding
    time.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    methods = {name: {"max_len": max_len, **kwargs} for name, kwargs in
               (DEFAULT_METHODS if methods is None else methods).items()}
    if not methods:
        raise ValueError("methods is empty; pass e.g. {'greedy': {'method': 'greedy'}}.")
    image_ids = list(references if image_ids is None else image_ids)
    device = _device(decoder)
    for kwargs in methods.values():  # one generator per method across all batches
        if kwargs.get("method") == "sample" and not isinstance(kwargs.get("generator"), torch.Generator):
            kwargs["generator"] = torch.Generator(device=device).manual_seed(int(kwargs.get("generator", seed)))
    results = {name: [] for name in methods}
    seconds = dict.fromkeys(methods, 0.0)
    for start in tqdm(range(0, len(image_ids), batch_size), desc="decoding", disable=not progress):
        features = _features(source, image_ids[start:start + batch_size])
        for name, kwargs in methods.items():
            started = time.perf_counter()
            results[name] += decode.caption_images(decoder, features, vocab, batch_size=len(features), **kwargs)
            seconds[name] += time.perf_counter() - started
    captions, extra = {}, {}
    for name, result in results.items():
        captions[name] = dict(zip(image_ids, result, strict=True))
        texts = [c.text for c in result]
        extra[name] = {"words/caption": float(np.mean([len(t.split()) for t in texts])),
                       "distinct": len(set(texts)) / len(texts), "decode s": seconds[name]}
    refs = {i: list(references[i]) for i in image_ids}
    # Tokenise every method's captions and the references in ONE PTB (java) call; later calls hit its cache.
    metrics.ptb_tokenize({(name, i): [c.text] for name, caps in captions.items() for i, c in caps.items()}
                         | {("ref", i): refs[i] for i in image_ids})
    scores = {}
    for name in tqdm(captions, desc="COCO metrics", disable=not progress):
        scores[name] = metrics.coco_scores({i: c.text for i, c in captions[name].items()}, refs, spice=spice)
    table = metrics.results_table(scores)
    table = pd.concat([table, pd.DataFrame.from_dict(extra, orient="index")], axis=1)
    table.index.name = "method"
    return MethodComparison(table, captions, refs)


# -- BLEU computed the different ways -------------------------------------------------------------------------
def bleu_breakdown(predictions: Mapping[int, str], references: Mapping[int, Sequence[str]]):
    """BLEU-1..4 of the same captions, computed the ways tutorials do, changing one thing per row.

    Rows: NLTK `corpus_bleu` on `str.split()` tokens (the typical tutorial); NLTK on the COCO (PTB) tokens (so the
    remaining gap to COCO is not tokenisation); pycocoevalcap's BLEU (the number papers report); pycocoevalcap
    with the brevity penalty from the SHORTEST reference (old scripts); the mean of pycocoevalcap's per-image
    BLEU; the mean of NLTK's `sentence_bleu` on PTB tokens, without and with smoothing (method1).
    """
    import pandas as pd
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    ids = [i for i in references if i in predictions]
    if len(ids) != len(predictions):
        raise ValueError("Every predicted image needs references; pass references for all of them.")
    preds = {i: str(getattr(predictions[i], "text", predictions[i])) for i in ids}
    refs = {i: [str(r) for r in references[i]] for i in ids}
    tokens = metrics.ptb_tokenize({("ref", i): refs[i] for i in ids} | {("pred", i): [preds[i]] for i in ids})
    ptb_preds = {i: tokens[("pred", i)][0] for i in ids}
    ptb_refs = {i: tokens[("ref", i)] for i in ids}

    def coco(option: str):
        scorer = BleuScorer(n=4)
        for i in ids:
            scorer += (ptb_preds[i], ptb_refs[i])
        return scorer.compute_score(option=option, verbose=0)

    def nltk_sentence_mean(smoothing) -> dict[str, float]:
        sums = np.zeros(4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # NLTK's "0 counts of n-gram overlaps" warning
            for i in ids:
                values = sentence_bleu([r.split() for r in ptb_refs[i]], ptb_preds[i].split(), weights=weights,
                                       smoothing_function=smoothing)
                sums += np.asarray(values, dtype=float)
        return {f"Bleu_{n + 1}": float(sums[n] / len(ids)) for n in range(4)}

    weights = [tuple([1.0 / n] * n) for n in range(1, 5)]
    closest, per_image = coco("closest")
    shortest, _ = coco("shortest")
    rows = {
        "NLTK corpus_bleu, text.split()": metrics.nltk_corpus_bleu(preds, refs),
        "NLTK corpus_bleu, PTB tokens": metrics.nltk_corpus_bleu(ptb_preds, ptb_refs),
        "COCO (pycocoevalcap) corpus BLEU": {f"Bleu_{n + 1}": closest[n] for n in range(4)},
        "COCO, brevity penalty: shortest ref": {f"Bleu_{n + 1}": shortest[n] for n in range(4)},
        "COCO, mean of per-image BLEU": {f"Bleu_{n + 1}": float(np.mean(per_image[n])) for n in range(4)},
        "NLTK, mean of sentence_bleu": nltk_sentence_mean(None),
        "NLTK, mean of sentence_bleu, method1": nltk_sentence_mean(SmoothingFunction().method1),
    }
    table = pd.DataFrame.from_dict(rows, orient="index").rename(columns=metrics.DISPLAY_NAMES)
    table.index.name = "BLEU computed as"
    return table


# -- teacher forcing vs free running --------------------------------------------------------------------------
@dataclass
class ExposureReport:
    """Teacher-forced vs free-running scores on one split (`table`) and captions showing the difference."""

    table: object  # pandas DataFrame, rows "teacher forced" and "free running (greedy)"
    examples: object  # pandas DataFrame: image_id, reference, teacher_forced, free_running, exact

    def format_examples(self, n: int = 3, width: int = 100) -> str:
        """Up to `n` images whose free-running caption is none of their references, with the teacher-forced guesses."""
        rows = self.examples[~self.examples["exact"]].head(n)
        return "\n\n".join(
            f"image {r.image_id}\n  reference        : {textwrap.shorten(r.reference, width)}\n"
            f"  teacher forced   : {textwrap.shorten(r.teacher_forced, width)}\n"
            f"  free running     : {textwrap.shorten(r.free_running, width)}" for r in rows.itertuples())


def _position_matches(hypothesis: list[int], reference: list[int]) -> int:
    return sum(1 for t, token in enumerate(reference) if t < len(hypothesis) and hypothesis[t] == token)


@torch.no_grad()
def teacher_forced_vs_free_running(decoder, vocab, source: Callable, references: Mapping[int, list[str]],
                                   image_ids: Sequence[int] | None = None, max_len: int = decode.DEFAULT_MAX_LEN,
                                   batch_size: int = 64) -> ExposureReport:
    """Score the model on the same images with teacher forcing and free running.

    Teacher forced: every reference caption is fed word by word and the model predicts the next word each time
    (cross-entropy per word, token accuracy = share of next words it ranks first). Its argmax words form a
    "teacher-forced caption", which is what a validation loop that scores the training forward pass evaluates.
    Free running: greedy decoding, each word chosen after the model's OWN previous words. Both token accuracies use
    one yardstick: position by position against the image's CLOSEST reference (for teacher forcing, the reference
    whose fed prefix it predicted best). Scoring free running against every reference instead would count a good
    paraphrase as wrong, and mixing the two yardsticks once made free running look the better of the two. Both
    kinds of caption are scored with COCO BLEU-4.
    """
    import pandas as pd

    image_ids = list(references if image_ids is None else image_ids)
    if not image_ids:
        raise ValueError("No images to evaluate; pass a non-empty split.")
    device = _device(decoder)
    was_training = getattr(decoder, "training", False)
    decoder.eval()
    specials = {vocab.pad_id, vocab.start_id, vocab.end_id}
    loss_sum, correct, total, total_words = 0.0, 0, 0, 0
    forced_text: dict[int, str] = {}  # key image_id * 100 + reference index
    forced_refs: dict[int, list[str]] = {}
    free: list[decode.Caption] = []
    try:
        for start in range(0, len(image_ids), batch_size):
            ids = image_ids[start:start + batch_size]
            feats = _features(source, ids).to(device)
            encoded = [(row, j, vocab.encode(ref)) for row, i in enumerate(ids) for j, ref in enumerate(references[i])]
            lengths = torch.tensor([len(e) for _, _, e in encoded])
            captions = torch.full((len(encoded), int(lengths.max())), vocab.pad_id, dtype=torch.long)
            for n, (_, _, e) in enumerate(encoded):
                captions[n, :len(e)] = torch.tensor(e)
            rows = torch.tensor([row for row, _, _ in encoded])
            out = decoder(feats.index_select(0, rows.to(device)), captions.to(device), lengths.to(device))
            logits, targets = out.logits.float().cpu(), captions[:, 1:]
            valid = targets != vocab.pad_id
            loss_sum += float(F.cross_entropy(logits[valid], targets[valid], reduction="sum"))
            guess = logits.argmax(dim=-1)
            hits, words = ((guess == targets) & valid).sum(dim=1).tolist(), valid.sum(dim=1).tolist()
            for row in range(len(ids)):  # the closest reference of each image, as for free running below
                mine = [n for n, (r, _, _) in enumerate(encoded) if r == row]
                best = max(mine, key=lambda n: (hits[n] / words[n], -words[n]))
                correct, total = correct + hits[best], total + words[best]
            total_words += int(valid.sum())
            for n, (row, j, e) in enumerate(encoded):
                predicted = guess[n, :len(e) - 1].tolist()
                key = ids[row] * 100 + j
                forced_text[key] = " ".join(vocab.itos[t] for t in predicted if t not in specials)
                forced_refs[key] = list(references[ids[row]])
            free += decode.greedy(decoder, feats, vocab, max_len=max_len)
    finally:
        decoder.train(was_training)

    free_text = {i: c.text for i, c in zip(image_ids, free, strict=True)}
    refs = {i: list(references[i]) for i in image_ids}
    matched, ref_tokens, exact = 0, 0, []
    for i, caption in zip(image_ids, free, strict=True):
        encoded = [vocab.encode(r)[1:] for r in refs[i]]
        best = max(encoded, key=lambda r: (_position_matches(caption.tokens, r) / len(r), -len(r)))
        matched += _position_matches(caption.tokens, best)
        ref_tokens += len(best)
        exact.append(caption.tokens in encoded)
    table = pd.DataFrame.from_dict({
        "teacher forced": {"loss/word": loss_sum / total_words, "token accuracy": correct / total,
                           "BLEU-4": metrics.bleu4(forced_text, forced_refs), "captions scored": len(forced_text)},
        "free running (greedy)": {"loss/word": float("nan"), "token accuracy": matched / ref_tokens,
                                  "BLEU-4": metrics.bleu4(free_text, refs), "captions scored": len(image_ids)},
    }, orient="index")
    table["captions scored"] = table["captions scored"].astype(int)
    examples = pd.DataFrame({"image_id": image_ids,
                             "reference": [refs[i][0] for i in image_ids],
                             "teacher_forced": [forced_text[i * 100] for i in image_ids],
                             "free_running": [free_text[i] for i in image_ids], "exact": exact})
    return ExposureReport(table, examples)


# -- attention ------------------------------------------------------------------------------------------------
def attention_for_split(decoder, vocab, source: Callable, image_ids: Iterable[int], method: str = "greedy",
                        batch_size: int = 256, **kwargs) -> dict[int, tuple[list[str], np.ndarray]]:
    """{image_id: (words, alphas [len(words), P])} of the model's captions: the input of `grounding.grounding_score`.

    `words` are the emitted tokens (`<end>` included) and alphas[t] the attention used to emit words[t].
    """
    if not getattr(decoder, "uses_attention", False):
        raise ValueError("This decoder has no attention (Show and Tell); load the 'attention' model instead.")
    captions = decode.predict(decoder, source, image_ids, vocab, method=method, batch_size=batch_size, **kwargs)
    return {i: (list(c.words), c.alphas.numpy()) for i, c in captions.items()}


def uniform_attention(captions: Mapping[int, tuple[list[str], np.ndarray]]) -> dict[int, tuple[list[str], np.ndarray]]:
    """The same words with every attention map replaced by uniform weights (the baseline to beat)."""
    return {i: (words, np.full_like(np.asarray(alphas, dtype=np.float64), 1.0 / np.shape(alphas)[1]))
            for i, (words, alphas) in captions.items()}


def grounding_ceiling(result, coco_instances, grid_size: int) -> float:
    """The best grounding score any attention could reach on `result`'s words: all weight on the grid cell most
    covered by the named objects' boxes (cells are coarse, so even perfect attention includes background)."""
    best = []
    for row in result.per_word.itertuples():
        info = coco_instances.loadImgs(row.image_id)[0]
        targets = grounding.referred_objects(row.word, grounding.objects_from_instances(coco_instances, row.image_id))
        mask = grounding.box_mask([o["bbox"] for o in targets], info["height"], info["width"])
        best.append(grounding.cell_coverage(mask, grid_size).max())
    return float(np.mean(best)) if best else float("nan")


def plot_grounding(result, ceiling: float | None = None, save_to=None, figsize=(8, 3)):
    """Bars per colour/shape word: mean attention mass inside the named objects' boxes, model vs uniform."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    by_word = result.per_word.groupby("word")[["model", "uniform"]].mean()
    x = np.arange(len(by_word))
    fig, ax = plt.subplots(figsize=figsize)
    ax.bar(x - 0.2, by_word["model"], 0.4, label=f"trained model (all words: {result.model:.1%})")
    ax.bar(x + 0.2, by_word["uniform"], 0.4, color="0.7", label=f"uniform attention ({result.uniform:.1%})")
    if ceiling is not None:
        ax.axhline(ceiling, color="k", linestyle="--", linewidth=1, label=f"best possible on this grid ({ceiling:.1%})")
    ax.set_xticks(x, by_word.index, rotation=30, ha="right")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel("attention inside the boxes")
    ax.set_ylim(0, 1.5 * max(by_word.to_numpy().max(), ceiling or 0.0))
    ax.legend(fontsize="small", loc="upper left")
    fig.tight_layout()
    if save_to is not None:
        save_figure(fig, save_to)
    return fig


def show_mass_inside(image, alpha, boxes: Sequence[Sequence[float]], grid_size: int, title: str = "", ax=None):
    """The raw attention cells over an image with the boxes drawn: what `grounding.mass_inside` measures."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    picture = as_array(image)
    height, width = picture.shape[:2]
    if ax is None:
        _, ax = plt.subplots(figsize=(3.2, 3.4))
    ax.imshow(picture)
    heat = upsample_attention(alpha, grid_size, height, width, smooth=False)
    ax.imshow(heat, cmap="magma", alpha=0.6, extent=(0, width, height, 0), vmin=0)
    for x, y, w, h in boxes:
        ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="cyan", linewidth=2))
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return ax


def caption_photo(captioner, image, beam: int = 3, max_len: int = decode.DEFAULT_MAX_LEN):
    """Caption one photo (PIL image, array or path) with a `caption_cli.Captioner`; return (seen, Caption).

    `seen` is the square crop the encoder looked at (shorter side resized, centre crop), so attention maps can
    be drawn over exactly what the model saw.
    """
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        image = load_image(image)  # upright (EXIF) and RGB
    else:
        image = to_rgb(image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image)))
    caption = captioner.caption([image], beam=beam, max_len=max_len)[0]
    return encoder_view(image, captioner.input_size), caption


__all__ = ["DEFAULT_METHODS", "ExposureReport", "MethodComparison", "attention_for_split", "bleu_breakdown",
           "caption_photo", "evaluate_methods", "grounding_ceiling",
           "plot_grounding", "show_mass_inside", "teacher_forced_vs_free_running", "uniform_attention"]

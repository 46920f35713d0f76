"""The exercise checkers of every notebook, in one style.

Each `check_*` takes the learner's function, tries it on a few cases and prints ONE result line:

* `✓ ...` — right; the checker returns the learner's function and the notebook goes on with it;
* `✗ <hint> — continuing with the reference solution for now` — wrong; the hint says what to look at, never the
  expected value (working it out is the exercise), and the notebook goes on with `labutils.solutions`;
* `not attempted yet — continuing with the reference solution` — the stub still raises NotImplementedError.

So a notebook runs top to bottom (and under nbval) whatever the learner's cell holds. Use it as
`my_fn = exercises.check_x(my_fn, ...)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import applications, decode, solutions
from .augment import transform_points
from .data import collate_captions
from .decoders import ShowAttendTell, causal_mask
from .encoders import grid_features
from .grounding import cell_coverage, mass_inside
from .vocab import Vocabulary

NOT_ATTEMPTED = "not attempted yet — continuing with the reference solution"
FALLBACK = " — continuing with the reference solution for now"


class Wrong(Exception):
    """The learner's answer is wrong; the message is the hint shown to them."""


def _call(fn: Callable, *args):
    """Run the learner's code: a stub's NotImplementedError passes through, any other error becomes a hint."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise
    except Exception as exc:  # the learner's bug: report it as a hint, never crash the notebook
        raise Wrong(f"your function raised {type(exc).__name__}: {str(exc)[:120]}") from None


def _verdict(learner: Callable, reference: Callable, attempt: Callable[[], str]) -> Callable:
    """Print the one result line of `attempt()` and return the function the notebook should go on with."""
    if learner is reference:  # the check cell re-run alone: its name still holds the fallback, not their code
        print(NOT_ATTEMPTED)
        return reference
    try:
        praise = attempt()
    except NotImplementedError:
        print(NOT_ATTEMPTED)
        return reference
    except Wrong as hint:
        print(f"✗ {hint}{FALLBACK}")
        return reference
    print(f"✓ {praise}")
    return learner


# ---------------------------------------------------------------------------------------------- 00 setup
def check_split_sizes(fn: Callable, splits: Mapping[str, Sequence[int]]) -> Callable:
    """00 · `fn(splits) -> {split name: number of images}`."""
    def attempt() -> str:
        for case in (splits, {"train": [4, 8, 15, 16], "val": [23], "test": [42, 7]}):
            _split_sizes_hint(_call(fn, case), case)
        return "Right: one entry per split, each the number of image ids in it."
    return _verdict(fn, solutions.split_sizes, attempt)


def _split_sizes_hint(got, splits) -> None:
    if not isinstance(got, Mapping):
        raise Wrong(f"return a dict (split name -> number of images), not a {type(got).__name__}")
    if set(got) != set(splits):
        raise Wrong(f"use every split name of `splits` as a key, and only those; yours are {sorted(map(str, got))}")
    if any(not isinstance(v, (int, np.integer)) or isinstance(v, bool) for v in got.values()):
        raise Wrong("each value should be a number of images (an int), not the list of ids itself; len() counts")
    if got != solutions.split_sizes(splits):
        raise Wrong("the keys are right but a count is off: count the ids in each split's own list with len()")


# ---------------------------------------------------------------------------------------------- 01 COCO API
def check_images_with_all(fn: Callable, coco_instances, names: Iterable[str]) -> Callable:
    """01 · `fn(coco_instances, names) -> ids of the images showing at least one of EVERY category in names`."""
    names = list(names)
    def attempt() -> str:
        got = _call(fn, coco_instances, names)
        try:
            given = {int(i) for i in got}
        except (TypeError, ValueError):
            raise Wrong("return a list of integer image ids, as coco.getImgIds(...) gives") from None
        _images_with_all_hint(given, coco_instances, names)
        return f"Right: exactly the images that show {' and '.join(names)}."
    return _verdict(fn, solutions.images_with_all, attempt)


def _images_with_all_hint(given: set[int], coco_instances, names: list[str]) -> None:
    cat_ids = coco_instances.getCatIds(catNms=names)
    expected = set(solutions.images_with_all(coco_instances, names))
    if given == expected:
        return
    if given == set(cat_ids):
        raise Wrong("those are category ids; pass them to getImgIds(catIds=...) to get image ids")
    if given and given <= set(coco_instances.anns) and not given <= set(coco_instances.imgs):
        raise Wrong("those look like annotation ids; getImgIds() gives image ids")
    if given > expected:
        raise Wrong(f"some of your images do not show every one of {names}: pass ALL the category ids to "
                    "ONE getImgIds call, which keeps only images having all of them")
    raise Wrong("your list misses images that show all the categories, or holds images that do not; "
                "turn the names into ids with getCatIds(catNms=...) and those into images with getImgIds")


# ---------------------------------------------------------------------------------------------- 02 augmentation
def check_flip_matrix(fn: Callable, width: int) -> Callable:
    """02 · `fn(width) -> 2x3 affine matrix` so that apply_affine(img, M) == horizontal_flip(img)."""
    def attempt() -> str:
        for w in (width, 7):  # a second width catches a matrix written for one image size only
            _flip_hint(_call(fn, w), w)
        return ("Right: columns swap ends and every y stays; apply_affine(img, M) now equals "
                "horizontal_flip(img).")
    return _verdict(fn, solutions.flip_matrix, attempt)


def _flip_hint(M, width: int) -> None:
    try:
        M = np.asarray(M, dtype=np.float64)
    except (TypeError, ValueError):
        raise Wrong("M must be a 2x3 array of numbers, e.g. np.array([[a, b, c], [d, e, f]])") from None
    if M.shape != (2, 3):
        raise Wrong(f"M has shape {M.shape}; an affine matrix for cv2.warpAffine is 2x3")
    columns = np.arange(width, dtype=np.float64)
    corners = [(x, y) for x in columns for y in (0.0, 5.0)]
    if np.allclose(transform_points(M, corners), [(width - 1 - x, y) for x, y in corners]):
        return  # every column swaps ends and every row stays: what horizontal_flip does
    left, right = (f"({x:g}, {y:g})" for x, y in transform_points(M, [(0, 0), (width - 1, 0)]))
    if np.allclose(M[:, :2], [[-1, 0], [0, 1]]) and np.isclose(M[1, 2], 0):
        if np.isclose(M[0, 2], 0):
            raise Wrong("x -> -x mirrors about the left edge and moves the whole picture off the canvas; add an "
                        "x translation that brings it back onto the columns 0 .. width-1")
        raise Wrong(f"the mirroring is right but the shift is not (for width {width} the top-left pixel goes to "
                    f"{left}); pixel centres run from 0 to width - 1: where must column 0 land?")
    if np.allclose(M[:, :2], [[1, 0], [0, -1]]):
        raise Wrong("that mirrors y (an upside-down, vertical flip); a horizontal flip negates x and keeps y")
    raise Wrong(f"for width {width} your M sends the top-left pixel (0, 0) to {left} and the top-right pixel "
                f"({width - 1}, 0) to {right}; a horizontal flip swaps those two and keeps every y")


# ---------------------------------------------------------------------------------------------- 03 vocabulary
def check_encode(fn: Callable, vocab: Vocabulary, max_len: int = 8) -> Callable:
    """03 · `fn(text, vocab, max_len) -> list of ids`, equal to vocab.encode(text, max_len=max_len)."""
    known = vocab.words[:3] or ["word"]
    cases = {
        "a plain caption": " ".join(known),
        "a caption with capitals and punctuation": f"{known[0].upper()}, {known[-1]}!",
        "a caption with an unknown word": f"{known[0]} zyzzyva {known[-1]}",
        f"a caption longer than max_len={max_len}": " ".join(known * 5),
        "the empty caption": "",
    }
    def attempt() -> str:
        for what, text in cases.items():
            got = _call(fn, text, vocab, max_len)
            _encode_hint(got, vocab.encode(text, max_len=max_len), vocab, max_len, what)
        return (f"Right: your encoder matches vocab.encode on all {len(cases)} test captions "
                "(case, punctuation, unknown words, truncation and the empty caption).")
    return _verdict(fn, solutions.encode, attempt)


def _encode_hint(got, expected: list[int], vocab: Vocabulary, max_len: int, what: str) -> None:
    try:
        got = [int(i) for i in got]
    except (TypeError, ValueError):
        raise Wrong(f"for {what} your function returned {type(got).__name__}; return a list of int ids") from None
    if got == expected:
        return
    if not got or got[0] != vocab.start_id:
        hint = "start with vocab.start_id"
    elif got[-1] != vocab.end_id:
        hint = "end with vocab.end_id, also when you cut a long caption"
    elif len(got) > max_len:
        hint = "keep at most max_len ids, <start> and <end> included"
    elif "unknown" in what:
        hint = "a word missing from vocab.stoi becomes vocab.unk_id"
    else:
        hint = "split the text with tokenize(text), which lowercases and drops punctuation, not text.split()"
    raise Wrong(f"wrong ids for {what}: {hint}")


# ---------------------------------------------------------------------------------------------- 04 Dataset/collate
def check_pad(fn: Callable) -> Callable:
    """04 · `fn(list of 1-D caption tensors) -> (padded [B, T] LongTensor, lengths [B])`, as collate_captions."""
    cases = [
        [torch.tensor([1, 7, 8, 2]), torch.tensor([1, 9, 2]), torch.tensor([1, 5, 6, 7, 8, 2])],
        [torch.tensor([1, 2])],
        [torch.tensor([1, 4, 2]), torch.tensor([1, 3, 2])],
    ]
    def attempt() -> str:
        for captions in cases:
            got = _call(fn, [c.clone() for c in captions])
            _pad_hint(got, collate_captions([(torch.zeros(1), c, i) for i, c in enumerate(captions)]))
        return f"Right: your padding matches collate_captions on all {len(cases)} test batches."
    return _verdict(fn, solutions.pad, attempt)


def _pad_hint(got, expected) -> None:
    try:
        padded, lengths = (torch.as_tensor(x) for x in got)
    except (TypeError, ValueError, RuntimeError):
        raise Wrong("return a pair (padded, lengths) of tensors") from None
    if padded.shape != expected.captions.shape:
        raise Wrong(f"padded has shape {tuple(padded.shape)} for {len(expected.lengths)} captions; it should be "
                    "[batch, length of the longest caption]")
    if not torch.equal(padded.long(), expected.captions):
        real = expected.captions != 0
        if torch.equal(padded.long()[real], expected.captions[real]):
            raise Wrong("the caption ids are in place but the filler is not: fill the rest of each row with 0 (<pad>)")
        raise Wrong("the padded values are off: put each caption's ids at the START of its row, in order")
    if not torch.equal(lengths.long().flatten(), expected.lengths):
        raise Wrong("the lengths are off: one per caption, counting all its ids, <start> and <end> included")


# ---------------------------------------------------------------------------------------------- 05 encoder
def check_grid_features(fn: Callable) -> Callable:
    """05 · `fn(feature_map [B, C, H, W], grid_size) -> [B, grid_size**2, C]`, as the encoder's grid."""
    def attempt() -> str:
        fmap = torch.randn(2, 5, 8, 8, generator=torch.Generator().manual_seed(0))
        _grid_hint(_call(fn, fmap, 4), fmap, 4)
        return "Right: one C-dimensional vector for each of the grid_size**2 image regions."
    return _verdict(fn, solutions.to_grid, attempt)


def _grid_hint(got, fmap: torch.Tensor, g: int) -> None:
    B, C = fmap.shape[:2]
    if not isinstance(got, torch.Tensor):
        raise Wrong(f"return a tensor, not {type(got).__name__}")
    if tuple(got.shape) == (B, C, g * g):
        raise Wrong("shape [B, C, P]: swap the last two axes so that positions come before channels")
    if tuple(got.shape) != (B, g * g, C):
        raise Wrong(f"for a {tuple(fmap.shape)} map and grid_size {g} you returned shape {tuple(got.shape)}; "
                    "it should be [B, grid_size**2, C]")
    if torch.allclose(got, grid_features(fmap, g), atol=1e-5):
        return
    if torch.allclose(got, F.adaptive_avg_pool2d(fmap, g).reshape(B, g * g, C), atol=1e-5):
        raise Wrong("right shape, wrong values: reshape() to [B, P, C] mixes channels and positions; "
                    "flatten the grid to [B, C, P] and then transpose(1, 2)")
    raise Wrong("right shape, wrong values: average-pool the map to grid_size x grid_size with "
                "F.adaptive_avg_pool2d first")


# ---------------------------------------------------------------------------------------------- 06 attention
def check_attention(fn: Callable, fallback: Callable = solutions.attention_weights) -> Callable:
    """06 · `fn(self, enc_proj [B, P, A], h [B, H]) -> alpha [B, P]`, a ShowAttendTell's `attention_weights`.

    The notebook passes its own shown `attention_weights` as `fallback`, so a learner's edit of that cell is not
    undone by an exercise they have not attempted yet."""
    torch_state = torch.get_rng_state()  # the notebook's own random stream stays as it was
    torch.manual_seed(0)
    decoder = ShowAttendTell(vocab_size=20, feature_dim=12, embed_dim=8, hidden_dim=10, attention_dim=6, dropout=0.0)
    with torch.no_grad():
        enc_proj, h = decoder.encoder_att(torch.randn(3, 5, 12)), torch.randn(3, 10)  # 3 images, 5 positions
    torch.set_rng_state(torch_state)

    def attempt() -> str:
        with torch.no_grad():
            got = _call(fn, decoder, enc_proj.clone(), h.clone())
            _attention_hint(got, decoder, enc_proj, h)
        return "Right: your attention weights match the decoder's own; every ShowAttendTell can now use them."
    return _verdict(fn, fallback, attempt)


def _attention_hint(alpha, decoder, enc_proj: torch.Tensor, h: torch.Tensor) -> None:
    B, P = enc_proj.shape[:2]
    if not isinstance(alpha, torch.Tensor):
        raise Wrong(f"return one tensor alpha [B, P], not {type(alpha).__name__}")
    if tuple(alpha.shape) == (B, P, 1):
        raise Wrong("alpha has a trailing axis of size 1: squeeze full_att's output to [B, P] before the softmax")
    if tuple(alpha.shape) != (B, P):
        raise Wrong(f"for {B} images and {P} positions alpha has shape {tuple(alpha.shape)}; it should be [B, P]")
    if torch.allclose(alpha.sum(dim=0), torch.ones(P), atol=1e-5):
        raise Wrong("your weights sum to 1 over the batch: the softmax runs over the positions, dim=1")
    if not torch.allclose(alpha.sum(dim=1), torch.ones(B), atol=1e-5):
        raise Wrong("each row of alpha should sum to 1 over the positions: finish with a softmax along dim=1")
    if torch.allclose(alpha, solutions.attention_weights(decoder, enc_proj, h), atol=1e-5):
        return
    no_tanh = torch.softmax(decoder.full_att(enc_proj + decoder.decoder_att(h).unsqueeze(1)).squeeze(2), dim=1)
    if torch.allclose(alpha, no_tanh, atol=1e-5):
        raise Wrong("the scores miss the non-linearity: full_att reads tanh(enc_proj + the projected query)")
    raise Wrong("alpha is a distribution but not the decoder's: score each position with "
                "full_att(tanh(enc_proj + decoder_att(h) broadcast over the positions)), then softmax")


# ---------------------------------------------------------------------------------------------- 07 training
def check_topk_accuracy(fn: Callable) -> Callable:
    """07 · `fn(logits [B, T, V], targets [B, T], k, pad_id) -> float`: top-k accuracy over non-<pad> targets."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, 12, generator=gen)  # [B, T, V]
    targets = torch.randint(1, 12, (4, 6), generator=gen)  # [B, T], no <pad> yet
    targets[1, 4:], targets[3, 2:] = 0, 0  # two shorter captions, padded with <pad> = 0

    def attempt() -> str:
        for k in (1, 5):
            got = _call(fn, logits.clone(), targets.clone(), k, 0)
            if not isinstance(got, (float, int)) and not (torch.is_tensor(got) and got.numel() == 1):
                raise Wrong("return one number, the share of hits (e.g. with .item())")
            expected = solutions.topk_accuracy(logits, targets, k, 0)
            if abs(float(got) - expected) > 1e-6:
                raise Wrong(_topk_hint(float(got), logits, targets, k))
        return "Right: your top-k accuracy matches on k=1 and k=5, <pad> positions left out."
    return _verdict(fn, solutions.topk_accuracy, attempt)


def _topk_hint(got: float, logits, targets, k: int) -> str:
    counts_pad = solutions.topk_accuracy(logits, targets, k, -1)
    hits = solutions.topk_accuracy(logits, targets, k, 0) * int((targets != 0).sum())
    if abs(got - counts_pad) < 1e-6:
        return "the <pad> positions are counted: leave out every position whose target is pad_id"
    if abs(got - hits) < 1e-6:
        return "that is a count of hits: divide by the number of real (non-<pad>) target words"
    if k > 1 and abs(got - solutions.topk_accuracy(logits, targets, 1, 0)) < 1e-6:
        return "only the single best word is compared: look at the k highest-scoring words (topk along the last axis)"
    return "compare each target with the indices of its k highest logits (the last axis holds the vocabulary)"


# ---------------------------------------------------------------------------------------------- 08 beam step
def _beam_step_cases() -> list[tuple[str, torch.Tensor, torch.Tensor, int]]:
    """(what, scores [B], log_probs [B, V], n): each case tells one typical mistake from the right answer."""
    gen = torch.Generator().manual_seed(0)
    half, quarter = torch.log(torch.tensor(0.5)), torch.log(torch.tensor(0.25))
    inf = float("-inf")
    return [
        ("the first step (one beam)", torch.zeros(1), F.log_softmax(torch.randn(1, 6, generator=gen), dim=1), 3),
        ("three beams with different scores so far", torch.tensor([-0.4, -1.1, -2.3]),
         F.log_softmax(torch.randn(3, 5, generator=gen), dim=1), 3),
        ("two beams with tied candidates", torch.tensor([-1.0, -1.0]),
         torch.tensor([[half, half, inf, inf], [quarter, quarter, half, inf]]), 4),  # equal totals across beams
        ("fewer possible words than n", torch.tensor([-0.5, -2.0]),
         torch.log(torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.0, 1.0]])), 5),  # only 3 candidates are not -inf
    ]


def check_beam_step(fn: Callable) -> Callable:
    """08 · `fn(scores [B], log_probs [B, V], n) -> (best_scores, parent, word)`, as decode.expand_beams."""
    def attempt() -> str:
        for what, scores, log_probs, n in _beam_step_cases():
            got = _call(fn, scores.clone(), log_probs.clone(), n)
            _beam_step_hint(got, scores, log_probs, n, what)
        return "Right: your step picks the same continuations as the library's, ties and impossible words included."
    return _verdict(fn, solutions.expand_beams, attempt)


def _beam_step_hint(got, scores: torch.Tensor, log_probs: torch.Tensor, n: int, what: str) -> None:
    try:
        best, parent, word = (torch.as_tensor(x).flatten() for x in got)
    except (TypeError, ValueError, RuntimeError):
        raise Wrong("return three 1-D tensors (total scores, parent beams, words), best first") from None
    if not len(best) == len(parent) == len(word):
        raise Wrong(f"for {what}, your three tensors differ in length; give one score, parent and word per pick")
    if parent.is_floating_point() or word.is_floating_point():
        raise Wrong("parent and word are indices: use integer division // and %, not /")
    expected = decode.expand_beams(scores, log_probs, n)
    if torch.isinf(best).any():
        raise Wrong(f"for {what}, you kept -inf candidates: a word of probability 0 starts no beam, drop them")
    if len(best) != len(expected[0]):
        raise Wrong(f"for {what}, you return the wrong number of candidates: the n best, fewer only where the rest "
                    "are -inf")
    if not torch.allclose(best.float(), expected[0], atol=1e-5):
        raise Wrong(_beam_score_hint(best.float(), scores, log_probs, n, what))
    if not (torch.equal(parent.long(), expected[1]) and torch.equal(word.long(), expected[2])):
        raise Wrong(_beam_pair_hint(best.float(), parent.long(), word.long(), scores, log_probs, what))


def _beam_pair_hint(best, parent, word, scores: torch.Tensor, log_probs: torch.Tensor, what: str) -> str:
    """The scores are right but the (beam, word) pairs are not: wrong index arithmetic, or ties in the wrong order."""
    beams, vocab_size = log_probs.shape
    in_range = bool(((parent >= 0) & (parent < beams) & (word >= 0) & (word < vocab_size)).all())
    totals = scores.unsqueeze(1) + log_probs  # [B, V]
    if not in_range or not torch.allclose(totals[parent, word], best, atol=1e-5):  # pairs that lack their score
        return (f"for {what}, the scores are right but not the (beam, word) pairs: the flat index is beam * V + word, "
                "so the beam is flat // V and the word flat % V, with V = log_probs.size(1)")
    return (f"for {what}, equal totals come out in the wrong order: ties go to the lower beam, then the lower word; "
            "sort the flat candidates with sort(descending=True, stable=True), not topk")


def _beam_score_hint(best: torch.Tensor, scores: torch.Tensor, log_probs: torch.Tensor, n: int, what: str) -> str:
    step_only = decode.expand_beams(torch.zeros_like(scores), log_probs, n)[0]
    if len(best) == len(step_only) and torch.allclose(best, step_only, atol=1e-5):
        return (f"for {what}, you ranked this step's log-probs alone: add each beam's score so far to its row "
                "first, so a beam is judged by its whole caption")
    if len(best) > 1 and bool((best[1:] >= best[:-1]).all()):
        return "your picks come worst first: sort in descending order, the most likely continuation first"
    return (f"for {what}, the scores of your picks are off: rank all B x V totals (score so far + this step's "
            "log-prob) as one flat list and keep the n best")


# ---------------------------------------------------------------------------------------------- 08 BLEU-1
BLEU1_CASES = [  # the first tells unclipped, pooled and right apart
    ("a a a red circle on", ["a red circle", "a blue square"]),
    ("a red circle and a red circle", ["a red circle", "one red circle next to a blue square"]),
    ("red red red circle", ["a red circle", "one red circle and a red square"]),
    ("two blue squares above a triangle", ["a triangle below two blue squares", "blue squares and a triangle"]),
]


def check_bleu1_precision(fn: Callable) -> Callable:
    """08 · `fn(candidate, references) -> BLEU-1 precision`: clipped unigram matches / number of candidate words."""
    def attempt() -> str:
        for candidate, references in BLEU1_CASES:
            _bleu1_hint(_call(fn, candidate, list(references)), candidate, references)
        return f"Right: your clipped precision matches BLEU's on all {len(BLEU1_CASES)} test captions."
    return _verdict(fn, solutions.bleu1_precision, attempt)


def _bleu1_hint(got, candidate: str, references: Sequence[str]) -> None:
    try:
        got = float(got)
    except (TypeError, ValueError):
        raise Wrong(f"return a number (a fraction between 0 and 1), not a {type(got).__name__}") from None
    if abs(got - solutions.bleu1_precision(candidate, references)) < 1e-9:
        return
    words, ref_words = candidate.split(), [r.split() for r in references]
    if got > 1:
        raise Wrong("a precision is at most 1: divide the matches by the number of candidate words")
    if abs(got - sum(any(w in r for r in ref_words) for w in words) / len(words)) < 1e-9:
        raise Wrong("you counted every candidate word found in some reference; clip each word's count to the "
                    "most times it appears in any ONE reference")
    distinct = set(words)
    if abs(got - sum(any(w in r for r in ref_words) for w in distinct) / len(distinct)) < 1e-9:
        raise Wrong("you counted each distinct word once; BLEU counts every occurrence (clipped) and divides by the "
                    "number of candidate words, repeats included")
    pooled = sum(min(words.count(w), sum(r.count(w) for r in ref_words)) for w in set(words)) / len(words)
    if abs(got - pooled) < 1e-9:
        raise Wrong("you clipped to the references' counts added together; clip to the most in any ONE reference")
    raise Wrong("count each distinct candidate word min(its count, its most in one reference) times, and divide "
                "the sum by the number of candidate words (repeats included)")


# ---------------------------------------------------------------------------------------------- 09 grounding
def check_mass_inside(fn: Callable, alpha, mask, grid_size: int) -> Callable:
    """09 · `fn(alpha [grid_size**2], mask [H, W] bool, grid_size) -> share of the attention inside the mask`."""
    rng = np.random.default_rng(0)
    corner = np.zeros((8, 8), dtype=bool)
    corner[:3, :5] = True  # cuts regions in part, and is wider than tall: catches a transposed grid
    cases = [(np.asarray(alpha, dtype=np.float64), np.asarray(mask, dtype=bool), grid_size),
             (rng.dirichlet(np.ones(16)), corner, 4)]

    def attempt() -> str:
        for a, m, g in cases:
            _mass_hint(_call(fn, a.copy(), m.copy(), g), a, m, g)
        return "Right: each region's weight times the share of its pixels inside the box, summed."
    return _verdict(fn, solutions.mass_inside, attempt)


def _mass_hint(got, alpha: np.ndarray, mask: np.ndarray, g: int) -> None:
    try:
        got = float(got)
    except (TypeError, ValueError):
        raise Wrong(f"return one number (a share between 0 and 1), not a {type(got).__name__}") from None
    if abs(got - mass_inside(alpha, mask, g)) < 1e-6:
        return
    coverage = cell_coverage(mask, g)
    if abs(got - float(alpha @ (coverage > 0))) < 1e-6:
        raise Wrong("you gave every region the box touches its whole weight; weight each region by the FRACTION "
                    "of its pixels inside the mask")
    if abs(got - float(mask.mean())) < 1e-6 or abs(got - float(coverage.mean())) < 1e-6:
        raise Wrong("that is the share of the image inside the box; weight each region's share by its alpha")
    if abs(got - float(alpha @ coverage.reshape(g, g).T.reshape(-1))) < 1e-6:
        raise Wrong("your regions are in column order; the grid's positions run row by row, as reshape(g, ...) "
                    "of an [H, W] mask gives them")
    raise Wrong("for each of the grid_size**2 regions take the fraction of its pixels inside the mask, multiply "
                "by that region's alpha, and sum")


# ---------------------------------------------------------------------------------------------- 10 causal mask
def check_causal_mask(fn: Callable) -> Callable:
    """10 · `fn(T) -> bool [T, T]`, True where query t may look at word j: j <= t (itself and the words before)."""
    def attempt() -> str:
        for T in (5, 1, 8):
            _causal_mask_hint(_call(fn, T), T)
        return "Right: each word sees itself and the words before it, never a later one."
    return _verdict(fn, solutions.causal_mask, attempt)


def _causal_mask_hint(got, T: int) -> None:
    try:
        got = torch.as_tensor(got)
    except (TypeError, ValueError, RuntimeError):
        raise Wrong("return a [T, T] tensor of booleans, e.g. built with torch.ones(...)") from None
    if tuple(got.shape) != (T, T):
        raise Wrong(f"for T={T} your mask is shaped {tuple(got.shape)}: one row per query word and one column "
                    "per word it may look at, [T, T]")
    expected = causal_mask(T)  # the library's mask, the one CaptionTransformer uses
    if got.dtype != torch.bool:
        if torch.equal(got != 0, expected):
            raise Wrong("the pattern is right but the dtype is not: attend() calls masked_fill(~mask, ...), which "
                        "needs dtype=torch.bool")
        raise Wrong("return a bool mask (dtype=torch.bool), True where a query may look")
    if torch.equal(got, expected):
        return
    if torch.equal(got, expected.T):
        raise Wrong("your mask lets each word look at the LATER words and hides the earlier ones: row t is the "
                    "query (word t), column j the word it looks at; keep the lower triangle, not the upper")
    if torch.equal(got, ~expected):
        raise Wrong("your mask is inverted: True must mark where a query MAY look (attend() hides the positions "
                    "where ~mask is True), not where it is hidden")
    if torch.equal(got, expected.tril(-1)):
        raise Wrong("in your mask no word may look at itself: keep the diagonal (without it the first word, "
                    "<start>, has nothing to look at and its softmax row is all -inf)")
    if bool(got.all()):
        raise Wrong("every word may look at every word, the future included: teacher forcing feeds the whole "
                    "caption at once, so a word could copy the next word from its input")
    raise Wrong("mask[t, j] must be True exactly when word j is word t itself or an earlier word; "
                "torch.tril keeps the lower triangle and the diagonal")


# ---------------------------------------------------------------------------------------------- 10 SCST baseline
def _baseline_cases() -> list[tuple[torch.Tensor, int]]:
    """(rewards [R], n_samples): images with different reward levels, so per-image and batch means differ."""
    gen = torch.Generator().manual_seed(0)
    levels = torch.tensor([0.5, 2.0, 1.0]).repeat_interleave(4)  # [12]: 3 images, 4 samples each
    return [(levels + torch.rand(12, generator=gen), 4), (torch.tensor([0.2, 1.4, 3.0, 0.6]), 2),
            (torch.rand(10, generator=gen) * 3, 5)]


def check_baseline(fn: Callable) -> Callable:
    """10 · `fn(rewards [R], n_samples) -> baseline [R]`: each sample's image's OTHER samples' mean reward."""
    def attempt() -> str:
        for rewards, n in _baseline_cases():
            _baseline_hint(_call(fn, rewards.clone(), n), rewards, n)
        return "Right: each sample is judged against its siblings' mean, itself left out."
    return _verdict(fn, solutions.leave_one_out, attempt)


def _baseline_hint(got, rewards: torch.Tensor, n: int) -> None:
    try:
        got = torch.as_tensor(got, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise Wrong("return a tensor of baselines, one per sample") from None
    if got.numel() == rewards.numel() // n and got.numel() != rewards.numel():
        raise Wrong("you return one baseline per image; every SAMPLE needs its own (its siblings differ), [R] values")
    if got.numel() != rewards.numel():
        raise Wrong(f"your baseline has {got.numel()} values for {rewards.numel()} rewards: give one per sample")
    if got.dim() != 1:
        raise Wrong("one flat baseline per sample, in the rewards' order: reshape(-1) your [images, n_samples] rows")
    if torch.allclose(got, solutions.leave_one_out(rewards, n), atol=1e-5):
        return
    grouped, R = rewards.view(-1, n), rewards.numel()
    if torch.allclose(got, grouped.mean(1).repeat_interleave(n), atol=1e-5):
        raise Wrong("your baseline includes the sample itself: then a high reward raises its own baseline; average "
                    "only the image's OTHER samples")
    if torch.allclose(got, rewards.mean().expand(R), atol=1e-5) or torch.allclose(
            got, (rewards.sum() - rewards) / (R - 1), atol=1e-5):
        raise Wrong("that mean runs over the whole batch: a sample should be compared only with the samples of its "
                    "own image (rows b * n_samples up to (b + 1) * n_samples - 1), itself left out")
    if torch.allclose(got, ((grouped.sum(1, keepdim=True) - grouped) / n).reshape(-1), atol=1e-5):
        raise Wrong("you divide the others' sum by n_samples; there are n_samples - 1 others")
    if torch.allclose(got, rewards - solutions.leave_one_out(rewards, n), atol=1e-5):
        raise Wrong("that is the advantage (reward minus baseline); return the baseline itself")
    by_column = rewards.view(n, -1)  # [n, B]: the rows read sample-major, the wrong way round
    if torch.allclose(got, ((by_column.sum(0, keepdim=True) - by_column) / (n - 1)).reshape(-1), atol=1e-5):
        raise Wrong("the rows are image-major (an image's samples are next to each other): group them with "
                    "view(-1, n_samples), one row per image")
    raise Wrong("for each sample: the sum of its image's rewards minus its own, divided by n_samples - 1")


# ---------------------------------------------------------------------------------------------- 11 unsupported words
UNSUPPORTED_CASES = [  # (caption, references): lower-case words separated by spaces, as str.split() reads them
    ("a red circle and a green triangle", ["a red circle", "two blue squares"]),
    ("there is a yellow circle on the left", ["a red circle on the right", "a circle on the right"]),
    ("two blue squares above a red circle", ["a red circle below two squares", "blue squares above a circle"]),
    ("a blue circle", ["a red circle", "a blue circle", "a blue square"]),
    ("a square and a square beside two circles", ["a triangle and squares", "two purple circles"]),
]


def check_unsupported(fn: Callable) -> Callable:
    """11 · `fn(caption, references, stopwords) -> list of words`: the caption's non-stop words that no
    reference has, each once."""
    stopwords = set(applications.STOPWORDS)

    def attempt() -> str:
        for caption, references in UNSUPPORTED_CASES:
            _unsupported_hint(_call(fn, caption, list(references), set(stopwords)), caption, references, stopwords)
        return f"Right: on all {len(UNSUPPORTED_CASES)} captions you name exactly the words no reference supports."
    return _verdict(fn, solutions.unsupported, attempt)


def _unsupported_mistakes(caption: str, references: Sequence[str], stopwords: set) -> dict[str, list[str]]:
    """What typical wrong answers return for one case, by the hint that explains them."""
    words = [w for w in dict.fromkeys(caption.split()) if w not in stopwords]
    sets = [set(ref.split()) for ref in references]
    return {
        "you returned the words the references DO have; return the ones that none of them has":
            [w for w in words if any(w in s for s in sets)],
        "you compare with the first reference only; a word is supported as soon as ANY one reference has it":
            [w for w in words if w not in sets[0]],
        "you keep a word unless EVERY reference has it; one reference having it is enough to support it":
            [w for w in words if not all(w in s for s in sets)],
        "compare whole words, not text: a word can sit inside a longer one (a plural, say) without being said":
            [w for w in words if not any(w in ref for ref in references)],
    }


def _unsupported_hint(got, caption: str, references: Sequence[str], stopwords: set) -> None:
    got = list(got) if isinstance(got, Iterable) and not isinstance(got, str) else None
    if got is None or not all(isinstance(w, str) for w in got):
        raise Wrong("return a list of words (strings), e.g. built with a list comprehension")
    expected = applications.unsupported(caption, references, stopwords)
    if sorted(got) == sorted(expected):
        return
    if any(w in stopwords for w in got):
        raise Wrong("your list holds stop words ('a', 'on', 'the', ...): leave out every word in `stopwords`")
    if len(got) != len(set(got)):
        raise Wrong("your list names a word twice: name each word once, even when the caption repeats it")
    for hint, mistake in _unsupported_mistakes(caption, references, stopwords).items():
        if sorted(got) == sorted(mistake):
            raise Wrong(hint)
    raise Wrong("for each word of the caption that is not a stop word, keep it when none of the references' "
                "words (split them too) is that word; each word once")

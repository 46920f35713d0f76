"""Turning a trained decoder into captions: greedy search, batched beam search and sampling.

Every function here is generic over the decoders' ONE step interface (see `labutils.decoders`):

* `decoder.init_state(features [B, P, C]) -> state`, a tuple of batch-first tensors;
* `decoder.step(tokens [B], state) -> (logits [B, V], new_state, alpha [B, P] or None)`.

So the same code decodes Show-and-Tell, Show-Attend-Tell, or a toy decoder written in a test.

Conventions shared by all functions:

* `max_len` counts decoding steps, i.e. generated tokens with `<end>` included. A caption that has not emitted
  `<end>` after `max_len` steps is cut there (`Caption.finished` is False), so decoding always terminates.
* Scores are sums of natural-log probabilities under the model (`log_softmax` of the logits, in float32).
* Ties between equal scores go to the lower index (lower beam slot, then lower word id), in greedy search
  (`argmax` documents this) and in beam search (a stable descending sort instead of `topk`, whose tie order is
  unspecified), so results are reproducible and comparable with a reference implementation.
* The decoder runs in eval mode (dropout off) under `torch.inference_mode()`; its previous mode is restored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_MAX_LEN = 30
METHODS = ("greedy", "beam", "sample")


@dataclass
class Caption:
    """One generated caption: token ids, words, text, scores and (attention decoders) the attention per word."""

    tokens: list[int]  # generated ids, <start> excluded, <end> included when it was emitted
    words: list[str]  # vocabulary entry of every token (so "<end>" appears here, but not in `text`)
    text: str  # vocab.decode(tokens): specials (and <unk>) dropped
    log_prob: float  # sum of the model's log-probabilities of the tokens
    score: float  # what the search ranked by: log_prob, or log_prob / length penalty in beam search
    alphas: Tensor | None = field(default=None, repr=False)  # [len(tokens), P]: attention used to emit each token
    finished: bool = True  # False when max_len cut the caption before <end>

    def __len__(self) -> int:
        """Number of generated tokens (`<end>` included)."""
        return len(self.tokens)

    def __str__(self) -> str:
        return self.text


# -- small shared helpers ---------------------------------------------------------------------------------------
@contextmanager
def decoding_mode(decoder):
    """Eval mode + inference mode for the duration, restoring every submodule's training flag afterwards."""
    # Per module, not decoder.train(flag): that would also flip submodules that were deliberately in another mode.
    modes = [(m, m.training) for m in decoder.modules()] if hasattr(decoder, "modules") else []
    if hasattr(decoder, "eval"):
        decoder.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for module, training in modes:
            module.training = training


def _device_of(decoder) -> torch.device | None:
    try:
        return next(decoder.parameters()).device
    except (AttributeError, StopIteration):
        return None


def as_batch(decoder, features: Tensor, max_len: int) -> Tensor:
    """Features as a batch [B, P, C] on the decoder's device (one image's [P, C] becomes [1, P, C])."""
    if not isinstance(features, Tensor):
        raise TypeError(f"features must be a tensor [batch, positions, channels], got {type(features).__name__}.")
    if features.dim() == 2:  # one image's grid [P, C]
        features = features.unsqueeze(0)
    if features.dim() != 3:
        raise ValueError(f"features must be shaped [batch, positions, channels], got {tuple(features.shape)}; "
                         "pass the encoder's grid output (or cached features) for a batch of images.")
    if int(max_len) < 1:
        raise ValueError(f"max_len must be at least 1 decoding step, got {max_len}.")
    device = _device_of(decoder)
    return features.to(device) if device is not None else features


def select_rows(state: tuple[Tensor, ...], rows: Tensor) -> tuple[Tensor, ...]:
    """The decoder state of `rows` [L] only: every state tensor is batch-first (the step interface's contract)."""
    return tuple(t.index_select(0, rows) for t in state)


def _word(vocab, index: int) -> str:
    itos = getattr(vocab, "itos", None)
    if itos is not None:
        return itos[index]
    return vocab.lookup_tokens([index])[0]


def make_caption(vocab, tokens: list[int], log_prob: float, score: float, alphas: Tensor | None,
                  finished: bool) -> Caption:
    """A Caption from generated token ids (words and text looked up in `vocab`)."""
    return Caption(tokens=tokens, words=[_word(vocab, i) for i in tokens], text=vocab.decode(tokens),
                   log_prob=float(log_prob), score=float(score),
                   alphas=None if alphas is None else alphas.detach().float().cpu(), finished=finished)


def words_only(scores: Tensor, vocab) -> Tensor:
    """`scores` [rows, V] (logits or log-probabilities) with <pad>, <start> and <unk> made impossible: a caption
    is words and <end>, never an "unknown word" that `vocab.decode` would silently drop ("a dog is jumping over
    a"). The searches choose among these; a caption's log-prob stays the model's own."""
    banned = torch.tensor([vocab.pad_id, vocab.start_id, vocab.unk_id], device=scores.device)
    return scores.index_fill(1, banned, float("-inf"))


def draw(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One token id [R] per row of `probs` [R, V] (each row non-negative, not all zero), drawn with the row's
    probabilities: one uniform number per row, placed on the row's cumulative sums (inverse transform sampling).

    The same distribution as `torch.multinomial(probs, 1)`, which instead draws an exponential number for every
    one of the V words of every row: on a CPU that was the largest single cost of sampling a caption
    (benchmarks/bench_scst_sampling.py). A word of probability 0 is never drawn; the sums are float64 so that a
    word of tiny probability keeps its own step of the cumulative sum.
    """
    cumulative = probs.double().cumsum(dim=1)  # [R, V]
    point = torch.rand(probs.size(0), 1, generator=generator, device=probs.device, dtype=torch.float64)  # [R, 1]
    total = cumulative[:, -1:]  # [R, 1]
    # Below the total even where rounding the product would reach it: the first sum above it is then a real word.
    point = torch.minimum(point * total, torch.nextafter(total, torch.zeros_like(total)))  # [R, 1]
    return torch.searchsorted(cumulative, point, right=True).squeeze(1)  # [R]: the first sum above the point


def length_penalty(length: int | float, alpha: float) -> float:
    """Wu et al. (2016) length penalty ((5 + length) / 6) ** alpha; a beam's score is log_prob / penalty."""
    return ((5.0 + length) / 6.0) ** alpha


_wu_penalty = length_penalty  # beam_search's `length_penalty` argument shadows the function's name inside it


# -- greedy -----------------------------------------------------------------------------------------------------
def greedy(decoder, features: Tensor, vocab, max_len: int = DEFAULT_MAX_LEN) -> list[Caption]:
    """Caption every image of `features` [B, P, C] by taking the most likely word at each step (batched)."""
    return _run_sequential(decoder, features, vocab, max_len, choose=lambda logits, step: logits.argmax(dim=1))


def _run_sequential(decoder, features: Tensor, vocab, max_len: int,
                    choose: Callable[[Tensor, int], Tensor]) -> list[Caption]:
    """Shared loop of greedy search and sampling: one token per image per step, finished rows dropped."""
    with decoding_mode(decoder):
        features = as_batch(decoder, features, max_len)
        batch = features.size(0)
        state = tuple(decoder.init_state(features))
        tokens = torch.full((batch,), vocab.start_id, dtype=torch.long, device=features.device)
        rows = torch.arange(batch, device=features.device)  # which image each live row belongs to
        history: list[list[int]] = [[] for _ in range(batch)]
        log_probs = [0.0] * batch
        alpha_history: list[list[Tensor]] = [[] for _ in range(batch)]
        finished = [False] * batch
        for step in range(max_len):
            logits, state, alpha = decoder.step(tokens, state)
            logp = F.log_softmax(logits.float(), dim=1)
            tokens = choose(words_only(logits.float(), vocab), step)
            token_logp = logp.gather(1, tokens.unsqueeze(1)).squeeze(1)
            ended = tokens == vocab.end_id
            # One transfer per step instead of one per image keeps the bookkeeping cheap.
            for image, token, lp, done, a in zip(rows.tolist(), tokens.tolist(), token_logp.tolist(), ended.tolist(),
                                                 alpha.unbind(0) if alpha is not None else [None] * len(rows),
                                                 strict=True):
                history[image].append(token)
                log_probs[image] += lp
                if a is not None:
                    alpha_history[image].append(a)
                finished[image] = done
            if bool(ended.all()):
                break
            if bool(ended.any()):  # drop finished rows so later steps cost only what is still running
                keep = (~ended).nonzero().squeeze(1)
                state, tokens, rows = select_rows(state, keep), tokens.index_select(0, keep), rows.index_select(0, keep)
    return [make_caption(vocab, history[i], log_probs[i], log_probs[i],
                          torch.stack(alpha_history[i]) if alpha_history[i] else None, finished[i])
            for i in range(batch)]


# -- sampling ---------------------------------------------------------------------------------------------------
def wide_then_narrow(wide: int = 10, narrow: int = 3, wide_steps: int = 2) -> Callable[[int], int]:
    """The step-dependent top-N rule: choose among the `wide` best words for the first `wide_steps` words, then
    among the `narrow` best.

    Why: a caption's opening words decide *what* it talks about, so letting them vary gives diverse captions,
    while later words must stay grammatical and consistent with that start, so the choice narrows.
    """
    if wide < 1 or narrow < 1 or wide_steps < 0:
        raise ValueError("wide_then_narrow needs wide >= 1, narrow >= 1 and wide_steps >= 0.")
    return lambda step: wide if step < wide_steps else narrow


def _top_n(schedule, step: int) -> int:
    if callable(schedule):
        n = schedule(step)
    else:
        schedule = list(schedule)
        if not schedule:
            raise ValueError("top_n_schedule is an empty list; give at least one N (the last one is repeated).")
        n = schedule[min(step, len(schedule) - 1)]
    if int(n) < 1:
        raise ValueError(f"top_n_schedule gave N={n} at step {step}; every N must be at least 1.")
    return int(n)


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set to -inf every logit outside the `top_k` best and outside the nucleus of probability mass `top_p`.

    The nucleus (Holtzman et al. 2020) is the smallest set of most likely words whose probabilities sum to at
    least `top_p`; the most likely word is always kept. Ties at the top-k boundary are all kept.
    """
    logits = logits.float()
    if top_k is not None and top_k < logits.size(1):
        kth = logits.topk(int(top_k), dim=1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=1, descending=True)
        probs = sorted_logits.softmax(dim=1)
        mass_before = probs.cumsum(dim=1) - probs  # probability of the better words
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(decoder, features: Tensor, vocab, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, top_n_schedule: Callable[[int], int] | Sequence[int] | None = None,
           generator: torch.Generator | int | None = None, max_len: int = DEFAULT_MAX_LEN) -> list[Caption]:
    """Caption every image by sampling each word from the model's (filtered) distribution (batched).

    * `temperature` divides the logits: < 1 sharpens (towards greedy), > 1 flattens (more surprising words).
    * `top_k`: sample only among the k most likely words.
    * `top_p`: nucleus sampling, only among the smallest set of words holding probability mass `top_p`.
    * `top_n_schedule`: the step-dependent top-N rule, N = `schedule(step)` for a callable (step 0 is the first
      word) or `schedule[step]` for a list (its last entry repeats), e.g. `wide_then_narrow(10, 3, 2)` or
      `[10, 10, 3]`. Combined with `top_k`, the smaller N wins.
    * `generator`: a `torch.Generator` or an int seed, for reproducible samples.

    `Caption.log_prob` (= `score`) is the log-probability under the unmodified model, so samples drawn with
    different settings can be compared.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; use greedy() for the temperature-0 limit.")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}.")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
    device = _device_of(decoder) or features.device
    if isinstance(generator, int):
        generator = torch.Generator(device=device).manual_seed(generator)

    def choose(logits: Tensor, step: int) -> Tensor:
        k = top_k
        if top_n_schedule is not None:
            n = _top_n(top_n_schedule, step)
            k = n if k is None else min(k, n)
        probs = filter_logits(logits / temperature, top_k=k, top_p=top_p).softmax(dim=1)
        return draw(probs, generator)

    return _run_sequential(decoder, features, vocab, max_len, choose=choose)


# -- beam search ------------------------------------------------------------------------------------------------
def beam_search(decoder, features: Tensor, vocab, beam_size: int = 5, max_len: int = DEFAULT_MAX_LEN,
                length_penalty: float = 0.0, return_k: int = 1) -> list[list[Caption]]:
    """The `return_k` best captions of every image by beam search, batched over images AND beams.

    The search follows the classic formulation of the Show-Attend-Tell tutorial (seed 002), vectorised:

    * step 1 expands only one beam per image (all k beams would be identical); every later step scores the
      k live beams x V words of each image, and the best k candidates of each image survive;
    * a candidate ending in `<end>` is set aside as a finished hypothesis and its slot is retired, so an image
      keeps k - (finished so far) live beams and is done when it has k finished hypotheses;
    * all live beams of all images go through ONE `decoder.step` call per time step (rows = live beams); a
      decoder with `step_grouped` (Show-Attend-Tell) keeps each image's grid once, not once per beam;
    * an image stops early once it has `return_k` finished hypotheses that no live beam can beat any more;
    * after `max_len` steps the search stops anyway; an image with fewer than `return_k` finished hypotheses
      is topped up with its best unfinished ones (`Caption.finished` False).

    Hypotheses are ranked by log_prob / ((5 + len) / 6) ** length_penalty (Wu et al. 2016; len counts tokens
    with `<end>`); 0 ranks by raw log-prob, which favours short captions. The search itself keeps the best raw
    log-prob candidates at each step, as Wu et al. do. Returns, per image, a list of Captions best first, each
    with its attention maps [len, P] when the decoder attends.
    """
    k = int(beam_size)
    if k < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}.")
    if not 1 <= return_k <= k:
        raise ValueError(f"return_k must be between 1 and beam_size={k}, got {return_k}.")
    alpha_lp = float(length_penalty)

    def penalised(raw: float, length: int) -> float:
        return raw / _wu_penalty(length, alpha_lp) if alpha_lp else raw

    with decoding_mode(decoder):
        features = as_batch(decoder, features, max_len)
        n_images = features.size(0)
        device = features.device
        state = tuple(decoder.init_state(features))
        # Tensors the decoder passes through unchanged (features, attention projections) are identical for all
        # beams of an image; they need re-indexing only when the row -> image layout changes.
        image_constant = [True] * len(state)

        # One row per live beam, grouped by image in rank order: row_img, row_pos (slot within the image).
        row_img = torch.arange(n_images, device=device)
        row_pos = torch.zeros(n_images, dtype=torch.long, device=device)
        row_score = torch.zeros(n_images, device=device)
        tokens = torch.full((n_images,), vocab.start_id, dtype=torch.long, device=device)
        hist_tokens = torch.empty(n_images, 0, dtype=torch.long, device=device)
        hist_alpha: Tensor | None = None

        n_finished = torch.zeros(n_images, dtype=torch.long, device=device)
        active = torch.ones(n_images, dtype=torch.bool, device=device)
        finished: list[list[tuple[float, float, list[int], Tensor | None]]] = [[] for _ in range(n_images)]
        kth_best = torch.full((n_images,), float("-inf"), device=device)  # return_k-th best finished score
        rank = torch.arange(k, device=device)

        # A decoder that offers `step_grouped` keeps its per-image state once per image, never copied per beam.
        grouped = getattr(decoder, "per_image_state", None) if hasattr(decoder, "step_grouped") else None
        if grouped is not None:
            image_constant = list(grouped)
        for step in range(1, max_len + 1):
            if grouped is not None:
                logits, new_state, alpha = decoder.step_grouped(tokens, state, row_img, row_pos, k)
            else:
                logits, new_state, alpha = decoder.step(tokens, state)
                image_constant = [c and (new is old)
                                  for c, new, old in zip(image_constant, new_state, state, strict=True)]
            state = tuple(new_state)
            vocab_size = logits.size(1)
            candidates = row_score.unsqueeze(1) + words_only(F.log_softmax(logits.float(), dim=1), vocab)

            # Lay the live rows out as [image, slot, word]; empty slots are -inf, so the flat index order is
            # exactly the per-image reference's (slot-major, then word id).
            grid = torch.full((n_images, k, vocab_size), float("-inf"), device=device)
            grid[row_img, row_pos] = candidates
            best_scores, best_flat = grid.view(n_images, -1).sort(dim=1, descending=True, stable=True)
            best_scores, best_flat = best_scores[:, :k], best_flat[:, :k]
            parent_pos, words = best_flat // vocab_size, best_flat % vocab_size

            # Only the k - n_finished best candidates of an active image are kept (retired slots stay retired).
            valid = (rank.unsqueeze(0) < (k - n_finished).unsqueeze(1)) & torch.isfinite(best_scores)
            valid &= active.unsqueeze(1)
            ends = valid & (words == vocab.end_id)
            goes_on = valid & ~ends

            slot_row = torch.full((n_images, k), -1, dtype=torch.long, device=device)
            slot_row[row_img, row_pos] = torch.arange(row_img.numel(), device=device)
            parent_row = slot_row.gather(1, parent_pos)  # [images, k]

            step_alpha = None if alpha is None else alpha.float()
            if bool(ends.any()):
                end_img, end_rank = ends.nonzero(as_tuple=True)
                end_rows = parent_row[end_img, end_rank]
                end_tokens = torch.cat([hist_tokens.index_select(0, end_rows),
                                        words[end_img, end_rank].unsqueeze(1)], dim=1).tolist()
                end_alphas = None
                if step_alpha is not None:
                    end_alphas = step_alpha.index_select(0, end_rows).unsqueeze(1)
                    if hist_alpha is not None:
                        end_alphas = torch.cat([hist_alpha.index_select(0, end_rows), end_alphas], dim=1)
                for j, (img, raw) in enumerate(zip(end_img.tolist(), best_scores[end_img, end_rank].tolist(),
                                                   strict=True)):
                    seq = end_tokens[j]
                    finished[img].append((penalised(raw, len(seq)), raw, seq,
                                          None if end_alphas is None else end_alphas[j]))
                    if len(finished[img]) >= return_k:
                        ranked = sorted(f[0] for f in finished[img])[::-1]
                        kth_best[img] = ranked[return_k - 1]
                n_finished += ends.sum(dim=1)

            # The surviving candidates become the new rows, grouped by image, in rank order.
            keep_img, keep_rank = goes_on.nonzero(as_tuple=True)
            new_parent = parent_row[keep_img, keep_rank]
            new_score = best_scores[keep_img, keep_rank]
            new_pos = goes_on.long().cumsum(dim=1)[keep_img, keep_rank] - 1

            # An image is done when all its slots are retired, or when its return_k-th best finished hypothesis
            # beats every continuation any live beam could still reach (log-probs only fall as words are added).
            if step < max_len and bool(active.any()):
                best_live = torch.full((n_images,), float("-inf"), device=device)
                best_live.scatter_reduce_(0, keep_img, new_score, reduce="amax")
                if alpha_lp:
                    # raw <= 0, so raw / lp(len) is largest at one of the two ends of the possible lengths.
                    best_live = torch.maximum(best_live / _wu_penalty(step + 1, alpha_lp),
                                              best_live / _wu_penalty(max_len, alpha_lp))
                decided = (n_finished >= return_k) & (kth_best >= best_live)
                active &= ~decided & (n_finished < k)
                alive = active[keep_img]
                if not bool(alive.all()):
                    keep_img, keep_rank = keep_img[alive], keep_rank[alive]
                    new_parent, new_score, new_pos = new_parent[alive], new_score[alive], new_pos[alive]

            new_tokens = words[keep_img, keep_rank]
            same_layout = torch.equal(keep_img, row_img)
            state = tuple(t if (const and (same_layout or grouped is not None)) else t.index_select(0, new_parent)
                          for t, const in zip(state, image_constant, strict=True))
            hist_tokens = torch.cat([hist_tokens.index_select(0, new_parent), new_tokens.unsqueeze(1)], dim=1)
            if step_alpha is not None:
                chosen_alpha = step_alpha.index_select(0, new_parent).unsqueeze(1)
                hist_alpha = chosen_alpha if hist_alpha is None else torch.cat(
                    [hist_alpha.index_select(0, new_parent), chosen_alpha], dim=1)
            row_img, row_pos, row_score, tokens = keep_img, new_pos, new_score, new_tokens
            if row_img.numel() == 0:
                break

        # Whatever is still live was cut by max_len: candidates only where too few hypotheses finished.
        unfinished: list[list[tuple[float, float, list[int], Tensor | None]]] = [[] for _ in range(n_images)]
        if row_img.numel():
            live_tokens = hist_tokens.tolist()
            for j, (img, raw) in enumerate(zip(row_img.tolist(), row_score.tolist(), strict=True)):
                seq = live_tokens[j]
                unfinished[img].append((penalised(raw, len(seq)), raw, seq,
                                        None if hist_alpha is None else hist_alpha[j]))

    results = []
    for img in range(n_images):
        # sorted() is stable: equal scores keep discovery order, as in the reference implementation.
        best = sorted(finished[img], key=lambda h: -h[0])[:return_k]
        best_captions = [make_caption(vocab, seq, raw, score, alphas, True) for score, raw, seq, alphas in best]
        if len(best_captions) < return_k:
            extra = sorted(unfinished[img], key=lambda h: -h[0])[: return_k - len(best_captions)]
            best_captions += [make_caption(vocab, seq, raw, score, alphas, False)
                              for score, raw, seq, alphas in extra]
        results.append(best_captions)
    return results


# -- one image at a time, written to be read (notebook 08 shows these; the batched functions are the fast ones) --
def greedy_one_image(decoder, features: Tensor, vocab, max_len: int = DEFAULT_MAX_LEN) -> Caption:
    """The caption of ONE image (features [P, C]) taking the most likely word at every step; same as `greedy`."""
    with decoding_mode(decoder):
        features = as_batch(decoder, features, max_len)  # [1, P, C]
        state = decoder.init_state(features)  # the decoder's memory of this image
        token, tokens, log_prob = vocab.start_id, [], 0.0
        for _ in range(max_len):
            logits, state, _ = decoder.step(torch.tensor([token], device=features.device), state)  # [1, V]
            token = int(words_only(logits, vocab)[0].argmax())  # the most likely next word (never <unk>)
            log_prob += float(F.log_softmax(logits[0].float(), dim=0)[token])
            tokens.append(token)
            if token == vocab.end_id:
                break
    return make_caption(vocab, tokens, log_prob, log_prob, None, finished=token == vocab.end_id)


def expand_beams(scores: Tensor, log_probs: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """One beam-search step: the n best one-word continuations of the live beams, best first, as (total log-prob,
    parent beam, word), from the beams' log-probs so far `scores` [B] and this step's log-probs [B, V]."""
    candidates = scores.unsqueeze(1) + log_probs  # [B, V]: every beam extended by every word
    best, flat = candidates.reshape(-1).sort(descending=True, stable=True)  # ties: lower beam, then word
    best, flat = best[:n], flat[:n]  # flat index = beam * V + word
    possible = torch.isfinite(best)  # a word of probability 0 starts no beam
    return best[possible], flat[possible] // log_probs.size(1), flat[possible] % log_probs.size(1)


def beam_search_one_image(decoder, features: Tensor, vocab, beam_size: int = 5, max_len: int = DEFAULT_MAX_LEN,
                          expand: Callable = expand_beams) -> Caption:
    """The best caption of ONE image (features [P, C]) by beam search on raw log-probabilities; same as the
    best caption of `beam_search(..., length_penalty=0.0)`, which does all images and beams at once.
    `expand` chooses each step's continuations (`expand_beams`, or your own with the same signature)."""
    with decoding_mode(decoder):
        features = as_batch(decoder, features, max_len)  # [1, P, C]
        state = decoder.init_state(features)  # one row per live beam: just one at the start
        beams, scores = [[]], torch.zeros(1, device=features.device)  # token lists and log-probs [beams]
        finished = []  # (log-prob, tokens) of the beams that emitted <end>
        for _ in range(max_len):
            last = torch.tensor([b[-1] if b else vocab.start_id for b in beams], device=features.device)
            logits, state, _ = decoder.step(last, state)  # [beams, V]
            log_probs = words_only(F.log_softmax(logits.float(), dim=1), vocab)  # [beams, V]: never <unk>
            n = beam_size - len(finished)  # every finished beam retires its slot
            best, parent, word = expand(scores, log_probs, n)  # [<= n] each
            ends = word == vocab.end_id  # [n]: the candidates that finish here
            for s, p in zip(best[ends].tolist(), parent[ends].tolist(), strict=True):
                finished.append((s, beams[p] + [vocab.end_id]))
            beams = [beams[p] + [w] for p, w in zip(parent[~ends].tolist(), word[~ends].tolist(), strict=True)]
            if not beams:
                break
            scores, state = best[~ends], tuple(t.index_select(0, parent[~ends]) for t in state)
    if finished:  # max() keeps the first of equal scores: the one found first
        score, tokens = max(finished, key=lambda f: f[0])
        return make_caption(vocab, tokens, score, score, None, finished=True)
    return make_caption(vocab, beams[0], float(scores[0]), float(scores[0]), None, finished=False)


# -- convenience ------------------------------------------------------------------------------------------------
def caption_images(decoder, features: Tensor, vocab, method: str = "greedy", batch_size: int = 256,
                   progress: bool = False, **kwargs) -> list[Caption]:
    """Caption every image of `features` [N, P, C] with `method` ("greedy", "beam" or "sample"), in batches.

    `kwargs` go to the method (`max_len`, `beam_size`, `length_penalty`, `temperature`, `top_k`, `top_p`,
    `top_n_schedule`, `generator`). For beam search the best caption of each image is returned.
    """
    from tqdm.auto import tqdm

    if method not in METHODS:
        raise ValueError(f"Unknown decoding method {method!r}; use one of {', '.join(METHODS)}.")
    if features.dim() == 2:
        features = features.unsqueeze(0)
    if method == "sample" and isinstance(kwargs.get("generator"), int):  # one generator across all batches
        device = _device_of(decoder) or features.device
        kwargs["generator"] = torch.Generator(device=device).manual_seed(kwargs["generator"])
    captions: list[Caption] = []
    starts = range(0, features.size(0), batch_size)
    for start in tqdm(starts, desc=f"{method} decoding", disable=not progress):
        chunk = features[start:start + batch_size]
        if method == "greedy":
            captions += greedy(decoder, chunk, vocab, **kwargs)
        elif method == "beam":
            captions += [best[0] for best in beam_search(decoder, chunk, vocab, **kwargs)]
        else:
            captions += sample(decoder, chunk, vocab, **kwargs)
    return captions


def predict(decoder, image_source: Callable[[int], Tensor], image_ids: Iterable[int], vocab,
            method: str = "greedy", batch_size: int = 256, progress: bool = False, **kwargs) -> dict[int, Caption]:
    """Caption the images `image_ids`, fetching each one's features with `image_source(image_id)` ([P, C]).

    Use a `FeatureCache.source` as `image_source`; the result maps image id -> Caption, ready for
    `metrics.coco_scores({i: c.text for i, c in result.items()}, references)`.
    """
    from tqdm.auto import tqdm

    image_ids = list(image_ids)
    out: dict[int, Caption] = {}
    starts = range(0, len(image_ids), batch_size)
    for start in tqdm(starts, desc=f"{method} decoding", disable=not progress):
        ids = image_ids[start:start + batch_size]
        feats = torch.stack([torch.as_tensor(image_source(i)) for i in ids])
        out.update(zip(ids, caption_images(decoder, feats, vocab, method=method, batch_size=len(ids), **kwargs),
                       strict=True))
    return out


def best_of(beams: list[list[Caption]]) -> list[Caption]:
    """The best caption of each image from `beam_search` output."""
    return [options[0] for options in beams]


__all__ = ["Caption", "DEFAULT_MAX_LEN", "METHODS", "beam_search", "beam_search_one_image", "best_of",
           "caption_images", "expand_beams", "filter_logits", "greedy", "greedy_one_image", "length_penalty",
           "predict", "sample", "wide_then_narrow"]

"""Self-critical sequence training (Rennie et al. 2017): fine-tune a captioner on CIDEr-D itself.

After cross-entropy training the model is scored on words it was fed, not on the captions it makes. SCST treats
the decoder as a policy: it samples captions, scores each with CIDEr-D against the image's references, and
raises the log-probability of the samples that beat a baseline (REINFORCE with a baseline):

    loss = -(reward(sample) - baseline) * log p(sample)

* `CiderD`: the reward, computed in-process and vectorised, equal to pycocoevalcap's CIDEr-D (tested);
* `sample_with_log_probs`: several multinomial samples per image, with the gradient of their log-probabilities
  (drawn step by step; a Transformer scores its samples again in one causal pass, which is cheaper to backpropagate);
* `scst_loss`: rewards, the baseline ("greedy": the model's greedy caption, as in the paper; "mean": the mean of
  the image's OTHER samples), the policy-gradient loss and a few numbers to watch;
* `scst_epoch`: one epoch of fine-tuning over the lab's training loader, optionally mixed with the cross-entropy of
  the references (`reference_cross_entropy`);
* `policy_copy`: the copy of a trained decoder to fine-tune, with dropout off.

Known pitfalls, and how they are handled here:

* Captions cut off mid-phrase ("a man riding a"): CIDEr-D never sees where a caption stops, so ending on "a"
  costs nothing and the policy learns to stop early or to trail off. `CiderD(end_token=True)` scores `<end>` as
  a word, so "horse <end>" earns n-grams that "a <end>" never can.
* Short or repetitive captions gaming the metric: CIDEr-D (not plain CIDEr) clips each n-gram count to the
  reference's and multiplies by a Gaussian length penalty, so "a a a a" and two-word captions score little.
* Document frequencies: from the TRAINING references (see `CiderD`), fixed for the whole run.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import decode
from .train import MixedPrecision, batch_features
from .vocab import tokenize

END = "<end>"  # the word `end_token=True` appends; no PTB token looks like it (tokenize splits off "<" and ">")
BASELINES = ("greedy", "mean")


# ---------------------------------------------------------------------------------------------------------------
# The reward: CIDEr-D, vectorised
# ---------------------------------------------------------------------------------------------------------------
def _words(caption) -> list[str]:
    """A caption string goes through the lab's PTB tokenizer; a list of words is taken as already tokenised."""
    return tokenize(caption) if isinstance(caption, str) else [str(w) for w in caption]


def _code_base(n: int) -> int:
    """The largest base B with B**n < 2**63: an n-gram of word ids below B is then one int64 (see `_ngram_table`)."""
    base = int((2**63 - 1) ** (1 / n))
    while (base + 1) ** n <= 2**63 - 1:
        base += 1
    while base ** n > 2**63 - 1:
        base -= 1
    return base


def _ranges(lengths: np.ndarray) -> np.ndarray:
    """[0, 1, ..., l0-1, 0, 1, ..., l1-1, ...] for `lengths` [l0, l1, ...], without a Python loop."""
    starts = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum())) - np.repeat(starts, lengths)


def _ngram_table(flat: np.ndarray, lengths: np.ndarray, n: int, base: int):
    """Every distinct 1..n-gram of every sentence, counted: (sentence, code, order - 1, count), sorted by sentence.

    `flat` holds the word ids (1 .. base-1) of all sentences one after another, `lengths` [S] their word counts.
    A k-gram's code is its word ids read as the digits of a base-`base` number: codes of different orders never
    collide (a k-gram's code lies in [base**(k-1), base**k)) and no Python tuple is ever hashed.
    """
    sentence = np.repeat(np.arange(len(lengths)), lengths)  # [W]
    room = lengths[sentence] - _ranges(lengths)  # [W]: words from here to the end of the sentence
    sents, codes, orders = [], [], []
    for k in range(1, n + 1):
        starts = np.flatnonzero(room >= k)  # [M_k]: where a k-gram begins
        code = flat[starts]
        for j in range(1, k):
            code = code * base + flat[starts + j]  # [M_k]
        sents.append(sentence[starts])
        codes.append(code)
        orders.append(np.full(len(starts), k - 1))
    sent, code, order = np.concatenate(sents), np.concatenate(codes), np.concatenate(orders)
    if not len(sent):  # only empty sentences
        return sent, code, order, np.zeros(0)
    by = np.lexsort((code, sent))  # [M]: grouped by sentence, then n-gram
    sent, code, order = sent[by], code[by], order[by]
    first = np.flatnonzero(np.r_[True, (sent[1:] != sent[:-1]) | (code[1:] != code[:-1])])  # [U]
    counts = np.diff(np.r_[first, len(sent)]).astype(float)  # [U]
    return sent[first], code[first], order[first], counts


class CiderD:
    """CIDEr-D of candidate captions against the references of their images, with the reference side built once.

    `references` is {image_id: [caption, ...]} (strings, tokenised with `vocab.tokenize` as `metrics` does without
    Java, or lists of words). The result equals pycocoevalcap's `Cider().compute_score` (which IS CIDEr-D: n=4,
    sigma=6, clipped counts, Gaussian length penalty, x10) when both take document frequencies from the same
    references. Two quirks of pycocoevalcap are kept so that the numbers match: a caption's "length" in the
    penalty is its number of bigrams (words - 1, and 0 for an empty caption), and IDF is log(#images) - log(df).

    Document frequencies (and log #images) come from `df_references`, by default `references` itself. Build the
    scorer on the TRAINING references, as the SCST authors' code does (their `coco-train-idxs`): pycocoevalcap takes
    them from whatever images it is given, so a training batch of 50 images would make "a", "man" and "dog" look rare
    or common by chance, the same caption would earn a different reward in every batch, and the reward would be a
    noisy moving target. One fixed corpus gives each n-gram one weight for the whole run.

    `end_token=True` appends the word `<end>` to every reference and to every candidate that finished (see
    `scores`). Without it, CIDEr-D cannot tell "a man riding a" (cut off, or stopped mid-phrase) from a caption that
    ends properly: its n-grams are all in the references and nothing rewards an ending, so SCST happily learns to
    trail off. With it, "horse <end>" is a rewarded bigram and "a <end>" never is.

    Why numpy (float64) rather than torch: the work is gathering a few hundred thousand sparse entries by binary
    search, on integer-coded n-grams; float64 on the CPU reproduces pycocoevalcap to ~1e-15, while a GPU would add a
    transfer each way for microseconds of arithmetic, and the rewards are needed as plain numbers anyway.
    """

    def __init__(self, references: Mapping[object, Sequence], df_references: Mapping[object, Sequence] | None = None,
                 n: int = 4, sigma: float = 6.0, end_token: bool = False):
        self.n, self.sigma, self.end_token, self.base = n, float(sigma), end_token, _code_base(n)
        refs = self._tokenised(references)
        df_refs = refs if df_references is None else self._tokenised(df_references)
        self.word_ids: dict[str, int] = {}  # word -> id >= 1; ids up to `base` - 1 are left for unseen words
        for caps in (*refs.values(), *df_refs.values()):
            for words in caps:
                for word in words:
                    self.word_ids.setdefault(word, len(self.word_ids) + 1)
        if not self.word_ids:
            raise ValueError("Every reference caption is empty, so no caption can earn CIDEr-D; pass real references.")
        if len(self.word_ids) >= self.base:
            raise ValueError(f"The references hold {len(self.word_ids)} distinct words, more than n={n}-grams of "
                             f"int64 codes allow ({self.base - 1}); use a smaller n.")
        self.ref_len = float(np.log(float(len(df_refs))))  # log #images of the df corpus, pycocoevalcap's `ref_len`
        self._build(refs, df_refs)

    def _tokenised(self, references: Mapping[object, Sequence]) -> dict[object, list[list[str]]]:
        out = {}
        for image_id, caps in references.items():
            if isinstance(caps, str) or not caps:
                raise ValueError(f"Image {image_id!r} needs a non-empty list of reference captions, got {caps!r}.")
            out[image_id] = [_words(c) + [END] * self.end_token for c in caps]
        return out

    def _table(self, sentences: list[list[str]]):
        """`_ngram_table` of `sentences`; a word no reference has gets a fresh id for this call only."""
        unseen: dict[str, int] = {}
        flat = np.fromiter((self.word_ids.get(w) or unseen.setdefault(w, len(self.word_ids) + 1 + len(unseen))
                            for words in sentences for w in words), np.int64)
        if len(self.word_ids) + len(unseen) >= self.base:
            raise ValueError(f"These candidates hold {len(unseen)} words no reference has, too many for one call; "
                             "score them in smaller batches.")
        lengths = np.fromiter((len(w) for w in sentences), np.int64, len(sentences))
        return _ngram_table(flat, lengths, self.n, self.base)

    def _build(self, refs: dict, df_refs: dict) -> None:
        """Column index of every reference n-gram with its IDF; each reference's tf-idf entries, norms, length."""
        sentences = [w for caps in refs.values() for w in caps]
        row, code, order, tf = self._table(sentences)
        df_sent, df_code = (row, code) if df_refs is refs else self._table([w for caps in df_refs.values()
                                                                            for w in caps])[:2]
        image = np.repeat(np.arange(len(df_refs)), [len(c) for c in df_refs.values()])[df_sent]  # [M_df]
        by = np.lexsort((df_code, image))  # (image, n-gram) pairs side by side, to count each once per image
        image, df_code = image[by], df_code[by]
        once = np.ones(len(image), dtype=bool)  # [M_df]: the first of each (image, n-gram) pair
        once[1:] = (image[1:] != image[:-1]) | (df_code[1:] != df_code[:-1])
        df_codes, df = np.unique(df_code[once], return_counts=True)  # df: images whose references hold the n-gram
        self.codes = np.union1d(df_codes, code)  # [G] sorted: n-grams of the df corpus and of the references
        col = np.searchsorted(self.codes, code)  # [E]
        df_all = np.zeros(len(self.codes))
        df_all[np.searchsorted(self.codes, df_codes)] = df
        self.idf = self.ref_len - np.log(np.maximum(1.0, df_all))  # [G]: pycocoevalcap's df floor of 1
        values = tf * self.idf[col]  # [E]
        keys = row * len(self.codes) + col  # [E]: (reference row, column) as one sortable int64
        self.ref_keys, self.ref_values = keys, values  # sorted already: the table is sorted by (row, n-gram)
        self.ref_norms = np.sqrt(np.bincount(row * self.n + order, values ** 2,
                                             minlength=len(sentences) * self.n)).reshape(-1, self.n)  # [R, n]
        self.ref_lengths = np.array([max(len(w) - 1, 0) for w in sentences], dtype=float)  # [R]: bigram counts
        counts = [len(c) for c in refs.values()]
        self.rows = dict(zip(refs, zip(np.cumsum(counts) - counts, counts, strict=True), strict=True))

    def scores(self, image_ids: Sequence, candidates: Sequence, finished: Sequence[bool] | None = None) -> np.ndarray:
        """CIDEr-D [N] of `candidates[k]` (a string or a list of words) against the references of `image_ids[k]`.

        `finished[k]` (default: all True) says whether candidate k ended with `<end>`; with `end_token=True` only
        finished candidates get the `<end>` word, so a caption cut at max_len earns no ending.
        """
        if len(image_ids) != len(candidates):
            raise ValueError(f"Got {len(image_ids)} image ids for {len(candidates)} candidates; pass one id per caption.")
        missing = [i for i in image_ids if i not in self.rows]
        if missing:
            raise KeyError(f"Image {missing[0]!r} has no references in this CiderD; build it on a corpus holding it.")
        finished = [True] * len(candidates) if finished is None else list(finished)
        words = [_words(c) + [END] * (self.end_token and bool(done))
                 for c, done in zip(candidates, finished, strict=True)]
        first, count = np.array([self.rows[i] for i in image_ids], dtype=np.int64).reshape(-1, 2).T  # [N] each
        return self._score(words, first, count)

    def _score(self, words: list[list[str]], first: np.ndarray, count: np.ndarray) -> np.ndarray:
        cand, code, order, tf = self._table(words)  # [M] each
        col = np.minimum(np.searchsorted(self.codes, code), len(self.codes) - 1)  # [M]
        known = self.codes[col] == code  # [M]: an n-gram no reference holds gets df 0 (floored to 1): idf ref_len
        tfidf = tf * np.where(known, self.idf[col], self.ref_len)  # [M]
        cand_norms = np.sqrt(np.bincount(cand * self.n + order, tfidf ** 2,
                                         minlength=len(words) * self.n)).reshape(-1, self.n)  # [N, n]
        # Pairs (candidate, reference of its image); pair_start[c] + j is candidate c's j-th reference.
        pair_start = np.cumsum(count) - count  # [N]
        pair_cand = np.repeat(np.arange(len(words)), count)  # [P]
        pair_ref = first[pair_cand] + _ranges(count)  # [P]: reference row
        # Each known candidate n-gram meets every reference of its image: find the reference's value by bisection.
        e_cand, e_col, e_val, e_order = cand[known], col[known], tfidf[known], order[known]
        rep = np.repeat(np.arange(len(e_cand)), count[e_cand])  # [K]: the entry each (entry, reference) comes from
        e_pair = pair_start[e_cand][rep] + _ranges(count[e_cand])  # [K]
        key = pair_ref[e_pair] * len(self.codes) + e_col[rep]  # [K]
        at = np.minimum(np.searchsorted(self.ref_keys, key), len(self.ref_keys) - 1)  # [K]
        ref_val = np.where(self.ref_keys[at] == key, self.ref_values[at], 0.0)  # [K]
        # pycocoevalcap's clipping: min(candidate tf-idf, reference tf-idf) * reference tf-idf.
        dot = np.bincount(e_pair * self.n + e_order[rep], np.minimum(e_val[rep], ref_val) * ref_val,
                          minlength=len(pair_cand) * self.n).reshape(-1, self.n).astype(float)  # [P, n]
        norm = cand_norms[pair_cand] * self.ref_norms[pair_ref]  # [P, n]
        cosine = np.divide(dot, norm, out=np.zeros_like(dot), where=norm != 0)  # [P, n]
        cand_len = np.array([max(len(w) - 1, 0) for w in words], dtype=float)  # [N]: bigram counts, as pycocoevalcap
        delta = cand_len[pair_cand] - self.ref_lengths[pair_ref]  # [P]
        per_pair = cosine * np.e ** (-(delta ** 2) / (2 * self.sigma ** 2))[:, None]  # [P, n]
        per_cand = np.zeros((len(words), self.n))
        np.add.at(per_cand, pair_cand, per_pair)  # [N, n]: summed over each candidate's references
        return per_cand.mean(axis=1) / np.maximum(count, 1) * 10.0  # [N]


def caption_words(tokens: Iterable[int], vocab) -> tuple[list[str], bool]:
    """(words before `<end>`, whether `<end>` was emitted) of a generated token-id sequence; padding is skipped."""
    words = []
    for token in tokens:
        if token == vocab.end_id:
            return words, True
        if token != vocab.pad_id:
            words.append(vocab.itos[token])
    return words, False


# ---------------------------------------------------------------------------------------------------------------
# Sampling with gradients, the loss, an epoch
# ---------------------------------------------------------------------------------------------------------------
class Samples(NamedTuple):
    """Sampled captions, `n_samples` rows per image (image-major: row b * n + s is sample s of image b)."""

    tokens: Tensor  # [R, T] token ids, <end> included when emitted, <pad> after it
    log_prob: Tensor  # [R] sum of the log-probabilities of each row's tokens (with gradient)
    mask: Tensor  # [R, T] 1.0 where the token belongs to the caption (up to and including <end>)
    finished: Tensor  # [R] bool: the row emitted <end> within max_len


def sample_with_log_probs(decoder, features: Tensor, vocab, n_samples: int = 5, max_len: int = 16,
                          generator: torch.Generator | None = None, one_pass: bool | None = None) -> Samples:
    """Draw `n_samples` captions per image from the decoder's step distribution, with the gradient of their
    log-probabilities.

    The policy is the distribution the words are drawn from: the decoder's softmax with <pad>, <start> and <unk>
    removed (`decode.words_only`), so log p is taken from that same renormalised distribution.

    How the gradient is kept: a decoder with `teacher_forced` (the Transformer; `one_pass=None` asks the decoder)
    samples without a graph and then scores its samples again in one causal pass over the words that count, which
    backpropagates through a few large matrix products instead of a step per word; any other decoder keeps the
    graph of its steps while it samples (an LSTM's one pass would be the same steps again).
    """
    one_pass = scores_in_one_pass(decoder) if one_pass is None else one_pass
    rows = torch.arange(features.size(0), device=features.device).repeat_interleave(n_samples)  # [R]
    state = decode.select_rows(decoder.init_state(features), rows)  # each [R, ...]
    with torch.set_grad_enabled(torch.is_grad_enabled() and not one_pass):
        tokens, log_prob, mask, done = draw_captions(decoder, state, vocab, max_len, generator)
    if one_pass:
        inputs = torch.cat([torch.full_like(tokens[:, :1], vocab.start_id), tokens[:, :-1]], dim=1)  # [R, T]
        keep = mask.bool()  # [R, T]: the words and <end>, not the padding after it
        logp = F.log_softmax(decode.words_only(decoder.teacher_forced(state, inputs, keep).float(), vocab), dim=1)
        picked = logp.gather(1, tokens[keep].unsqueeze(1)).squeeze(1)  # [N]: each kept word's log p
        log_prob = torch.zeros_like(mask).masked_scatter(keep, picked).sum(1)  # [R]
    return Samples(tokens, log_prob, mask, done)


def scores_in_one_pass(decoder) -> bool:
    """Whether `sample_with_log_probs` scores this decoder's samples in one pass (it has `teacher_forced`)."""
    return hasattr(decoder, "teacher_forced")


def draw_captions(decoder, state: tuple, vocab, max_len: int, generator: torch.Generator | None,
                  drop_at: float = 0.25) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sample one caption per row of `state` with `decode.draw`: tokens [R, T] (<pad> after <end>), their summed
    log p [R], the mask [R, T] of the words up to and including <end>, and which rows ended [R].

    Rows that ended leave the batch once they are `drop_at` of it (`decode.select_rows`): a trained captioner
    ends most samples well before `max_len`, and each step then costs only the captions still being written,
    while the copies of the state that dropping rows needs stay few (bench_scst_ended_rows.py: dropping them at
    every step that ended one saved less; `drop_at=1` keeps every row to the last step).
    """
    rows = state[0].size(0)
    device = state[0].device
    live = torch.arange(rows, device=device)  # [L]: which of the R rows each row still in the batch is
    tokens = torch.full((rows,), vocab.start_id, dtype=torch.long, device=device)  # [L]
    done = torch.zeros_like(tokens, dtype=torch.bool)  # [L]
    out = torch.full((rows, max_len), vocab.pad_id, dtype=torch.long, device=device)  # [R, max_len]
    mask = torch.zeros(rows, max_len, device=device)  # [R, max_len]
    log_prob = torch.zeros(rows, device=device)  # [R]
    for t in range(max_len):
        logits, state, _ = decoder.step(tokens, state)  # [L, V]
        logp = F.log_softmax(decode.words_only(logits.float(), vocab), dim=1)  # [L, V]
        drawn = decode.draw(logp.detach().exp(), generator)  # [L]
        tokens = drawn.masked_fill(done, vocab.pad_id)  # [L]: rows that ended only pad
        out[live, t], mask[live, t] = tokens, (~done).float()
        picked = logp.gather(1, drawn.unsqueeze(1)).squeeze(1).masked_fill(done, 0.0)  # [L]
        log_prob = log_prob.index_add(0, live, picked)  # [R]: out of place, so an LSTM's graph keeps every step
        done = done | (tokens == vocab.end_id)
        if bool(done.all()):
            break
        ended = int(done.sum())
        if ended and ended >= drop_at * done.numel():
            keep = (~done).nonzero().squeeze(1)  # [L']
            state, tokens, live, done = decode.select_rows(state, keep), tokens[keep], live[keep], done[keep]
    out, mask = out[:, :t + 1], mask[:, :t + 1]  # [R, T]
    return out, log_prob, mask, (out == vocab.end_id).any(1)


def leave_one_out(rewards: Tensor, n_samples: int) -> Tensor:
    """Baseline [R] for rewards [R] (image-major, `n_samples` per image): the mean of the image's OTHER samples.

    Leaving the sample itself out keeps the baseline independent of the action it judges, so the gradient stays
    unbiased (with the sample in, a high reward would also raise its own baseline).
    """
    if n_samples < 2:
        raise ValueError("The 'mean' baseline needs n_samples >= 2 (a sample's baseline is its siblings' mean).")
    grouped = rewards.view(-1, n_samples)  # [B, n]
    return ((grouped.sum(1, keepdim=True) - grouped) / (n_samples - 1)).reshape(-1)  # [R]


def greedy_rewards(decoder, features: Tensor, image_ids: Sequence, vocab, cider: CiderD, max_len: int) -> Tensor:
    """CIDEr-D [B] of the decoder's greedy captions (eval mode, no gradient): the paper's baseline."""
    captions = decode.greedy(decoder, features, vocab, max_len)
    words, finished = zip(*(caption_words(c.tokens, vocab) for c in captions), strict=True)
    return torch.as_tensor(cider.scores(list(image_ids), list(words), finished), dtype=torch.float32)


def scst_loss(decoder, features: Tensor, image_ids: Sequence, vocab, cider: CiderD, n_samples: int = 5,
              baseline: str = "greedy", max_len: int = 16,
              generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
    """The self-critical loss for a batch of images (features [B, P, C]) and a few numbers describing it.

    loss = mean over samples of -(reward - baseline) * log p(sample), with log p the SUM over the sample's tokens:
    that is the REINFORCE gradient of the expected reward. Averaging per caption instead would divide each
    caption's gradient by its own length, pushing short captions harder than long ones for the same advantage.
    Stats: mean sample reward, mean baseline, mean sample length in tokens (<end> included) and the fraction of
    samples that emitted <end> within `max_len`.
    """
    if baseline not in BASELINES:
        raise ValueError(f"Unknown baseline {baseline!r}; use 'greedy' or 'mean'.")
    samples = sample_with_log_probs(decoder, features, vocab, n_samples, max_len, generator)
    words = [caption_words(row, vocab)[0] for row in samples.tokens.tolist()]
    ids = [i for i in image_ids for _ in range(n_samples)]  # image-major, like the samples' rows
    rewards = torch.as_tensor(cider.scores(ids, words, samples.finished.tolist()), dtype=torch.float32)  # [R]
    if baseline == "greedy":
        base = greedy_rewards(decoder, features, image_ids, vocab, cider, max_len).repeat_interleave(n_samples)
    else:
        base = leave_one_out(rewards, n_samples)  # [R]
    advantage = (rewards - base).to(samples.log_prob.device)  # [R]: a constant, no gradient flows through it
    loss = -(advantage * samples.log_prob).mean()
    stats = {"reward": float(rewards.mean()), "baseline": float(base.mean()),
             "sample_length": float(samples.mask.sum(1).mean()), "finished": float(samples.finished.float().mean())}
    return loss, stats


def policy_copy(decoder: nn.Module) -> nn.Module:
    """A deep copy of `decoder` to fine-tune with SCST, with dropout off: every nn.Dropout's p and every stacked
    LSTM/GRU's between-layer dropout set to 0; the original keeps its own.

    The policy SCST samples and scores should be the model as it runs at test time; dropout only adds noise to the
    rewards (in the lab's short quick-profile trials, SCST with dropout on lowered CIDEr-D instead of raising it).
    """
    policy = copy.deepcopy(decoder)
    for module in policy.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        elif isinstance(module, nn.RNNBase):  # ShowAndTell with num_layers > 1 drops out inside its nn.LSTM
            module.dropout = 0.0
    return policy


def reference_cross_entropy(decoder: nn.Module, features: Tensor, captions: Tensor, lengths: Tensor,
                            pad_id: int) -> Tensor:
    """The teacher-forced cross-entropy of reference captions [B, T] (`<pad>` ignored), the loss notebook 07's
    `train_one_epoch` spells out: here the anchor of SCST's mixed objective."""
    logits = decoder(features, captions, lengths).logits  # [B, T-1, V]
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), captions[:, 1:].reshape(-1),
                           ignore_index=pad_id)


def scst_epoch(decoder: nn.Module, loader, optimizer, vocab, cider: CiderD, cfg, *, n_samples: int = 5,
               baseline: str = "greedy", max_len: int | None = None,
               generator: torch.Generator | None = None, amp: MixedPrecision | None = None,
               xe_weight: float = 0.0) -> dict:
    """One epoch of self-critical fine-tuning over a training loader of `data.CaptionBatch`; the mean stats.

    With `xe_weight` above 0 the loss adds that many times the cross-entropy of the batch's reference captions, a
    mixed objective (as Paulus et al. 2017 train summarisers): the references hold the policy near varied, human
    phrasings while the reward pulls it towards what CIDEr-D scores. On flickr8k's dev split it kept the LSTM's
    captions apart, where SCST alone collapsed them onto a few phrasings; the Transformer gained more without it
    (benchmarks/results/beyond.json, the dev sweeps named `*-xe*`).

    Mixed precision as in cross-entropy training of a decoder alone (cfg.mixed_precision,
    `environment.autocast_dtype`): bfloat16 on a CPU that computes it in hardware, float32 on CUDA. A caller that
    steps batch by batch passes one `amp` to every call, so that a float16 loss scale, where one is used, carries
    over from batch to batch.
    """
    device, max_len = torch.device(cfg.device), max_len or int(cfg.scst_max_len or cfg.max_caption_len)
    amp = amp or MixedPrecision.for_config(cfg, device.type)
    decoder.train()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    totals, batches = Counter(), 0
    for batch in loader:
        features = batch_features(batch.inputs, None, device, device.type == "cuda")  # [B, P, C]
        with amp.autocast():
            loss, stats = scst_loss(decoder, features, batch.image_ids, vocab, cider, n_samples, baseline, max_len,
                                    generator)
            if xe_weight:
                xe = reference_cross_entropy(decoder, features, batch.captions.to(device), batch.lengths, vocab.pad_id)
                loss, stats = loss + xe_weight * xe, stats | {"xe": float(xe.detach())}
        optimizer.zero_grad(set_to_none=True)
        amp.backward(loss)
        if cfg.grad_clip:
            amp.unscale_(optimizer)
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        amp.step(optimizer)
        totals.update(stats | {"loss": float(loss.detach())})
        batches += 1
    if not batches:
        raise ValueError("The training loader yielded no batch; give scst_epoch a loader with at least one image.")
    return {key: value / batches for key, value in totals.items()}


__all__ = ["BASELINES", "END", "CiderD", "Samples", "caption_words", "draw_captions", "greedy_rewards",
           "leave_one_out", "policy_copy", "reference_cross_entropy", "sample_with_log_probs", "scores_in_one_pass",
           "scst_epoch", "scst_loss"]

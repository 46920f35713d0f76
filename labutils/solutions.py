"""Reference solutions to the notebook exercises, in one place for instructors.

Learners do not import from here directly: each notebook's exercise cell holds a stub, and the checker in
`labutils.exercises` falls back to these functions when the stub is not filled in yet (or is still wrong), so
every notebook runs top to bottom either way. Each function is the short answer an instructor would write on the
board; the lesson modules hold the production versions the checkers compare against.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .vocab import tokenize


def split_sizes(splits):
    """00 · Map each split name to the number of image ids in it."""
    return {name: len(ids) for name, ids in splits.items()}


def images_with_all(coco_instances, names):
    """01 · Ids of the images showing at least one object of EVERY category in `names`."""
    return coco_instances.getImgIds(catIds=coco_instances.getCatIds(catNms=list(names)))


def flip_matrix(width):
    """02 · The 2x3 affine matrix mirroring an image `width` pixels wide left-right: x -> (width - 1) - x."""
    return np.array([[-1.0, 0.0, width - 1.0],
                     [0.0, 1.0, 0.0]])


def encode(text, vocab, max_len):
    """03 · Caption text -> ids: <start>, the known words (unknown -> <unk>), cut to fit, <end>."""
    words = [vocab.stoi.get(word, vocab.unk_id) for word in tokenize(text)]
    return [vocab.start_id, *words[: max_len - 2], vocab.end_id]


def pad(captions):
    """04 · A list of 1-D id tensors -> (padded [B, T] filled with 0 = <pad> on the right, lengths [B])."""
    lengths = torch.tensor([len(c) for c in captions], dtype=torch.long)
    padded = torch.zeros(len(captions), int(lengths.max()), dtype=torch.long)
    for row, caption in enumerate(captions):
        padded[row, : len(caption)] = caption
    return padded, lengths


def topk_accuracy(logits, targets, k, pad_id):
    """07 · Share of the non-<pad> target words [B, T] that are among the k highest logits [B, T, V]."""
    top = logits.topk(k, dim=-1).indices  # [B, T, k]
    hit = (top == targets.unsqueeze(-1)).any(dim=-1)  # [B, T]
    real = targets != pad_id  # [B, T]
    return (hit & real).sum().item() / real.sum().item()


def to_grid(feature_map, grid_size):
    """05 · [B, C, H, W] feature map -> [B, grid_size**2, C], one C-vector per region."""
    pooled = F.adaptive_avg_pool2d(feature_map, grid_size)  # [B, C, g, g]
    return pooled.flatten(2).transpose(1, 2)  # [B, C, P] -> [B, P, C]


def attention_weights(self, enc_proj, h):
    """06 · Additive attention of a ShowAttendTell: alpha [B, P] = softmax over positions of
    full_att(tanh(W_enc a_i + W_dec h)), for enc_proj [B, P, A] = encoder_att(regions) and h [B, H]."""
    query = self.decoder_att(h).unsqueeze(1)  # [B, 1, A]: the same for every position
    scores = self.full_att(torch.tanh(enc_proj + query)).squeeze(2)  # [B, P]
    return torch.softmax(scores, dim=1)


def expand_beams(scores, log_probs, n):
    """08 · One beam-search step: the n best (total log-prob, parent beam, word) of the live beams, best first.
    Totals are the beams' scores so far [B] plus this step's log-probs [B, V]; ties go to the lower beam, then the
    lower word (a stable sort of the flattened candidates); -inf candidates (impossible words) are dropped."""
    totals = (scores.unsqueeze(1) + log_probs).flatten()  # [B * V]: index = beam * V + word
    best, flat = totals.sort(descending=True, stable=True)
    best, flat = best[:n], flat[:n]
    keep = torch.isfinite(best)
    vocab_size = log_probs.size(1)
    return best[keep], flat[keep] // vocab_size, flat[keep] % vocab_size


def bleu1_precision(candidate, references):
    """08 · Clipped unigram precision: each candidate word counts at most as often as in any ONE reference."""
    words = candidate.split()
    if not words:
        return 0.0
    most = {w: max(ref.split().count(w) for ref in references) for w in set(words)}
    return sum(min(words.count(w), most[w]) for w in set(words)) / len(words)


def mass_inside(alpha, mask, grid_size):
    """09 · Share of the attention (flat [grid_size**2], row by row) inside the boolean mask [H, W]: each region's
    weight times the fraction of its pixels inside, summed (H and W multiples of grid_size)."""
    g = grid_size
    H, W = mask.shape
    inside = np.asarray(mask, dtype=np.float64).reshape(g, H // g, g, W // g).mean(axis=(1, 3)).reshape(-1)
    return float((np.asarray(alpha, dtype=np.float64).reshape(-1) * inside).sum())


def causal_mask(T):
    """10 · The causal mask [T, T] (bool) of teacher forcing: row t (the query, word t) may look at columns
    j <= t, itself and the words before it, and at no later word (the library's is `decoders.causal_mask`)."""
    return torch.ones(T, T, dtype=torch.bool).tril()


def leave_one_out(rewards, n_samples):
    """10 · SCST's "mean" baseline [R] for rewards [R] (image-major, n_samples rows per image): for each sample
    the mean reward of the OTHER samples of its image."""
    grouped = rewards.view(-1, n_samples)  # [B, n]: one row per image
    others = grouped.sum(dim=1, keepdim=True) - grouped  # [B, n]: each sample's siblings' total
    return (others / (n_samples - 1)).reshape(-1)  # [R]


def unsupported(caption, references, stopwords):
    """11 · The words of `caption` that are not stop words and that NO reference has, each once, in the
    caption's order: what the caption names that no annotator said."""
    supported = {word for reference in references for word in reference.split()}
    named = [word for word in caption.split() if word not in stopwords and word not in supported]
    return list(dict.fromkeys(named))  # each word once, first occurrence first

"""Tests for labutils.exercises: every checker accepts the reference solution, rejects typical wrong answers with a
hint that does not give the answer away, says "not attempted" for a stub, and hands back the function the notebook
should go on with. Also: the notebooks' exercise cells hold stubs, not answers."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labutils import coco, decode, exercises, solutions
from labutils.decoders import ShowAttendTell
from labutils.vocab import Vocabulary, tokenize

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def stub(*args):
    raise NotImplementedError


def accepted(capsys, result, learner):
    out = capsys.readouterr().out
    assert result is learner, out
    assert out.startswith("✓ ") and out.count("\n") == 1, out


def rejected(capsys, result, reference, secrets, *keywords):
    """One ✗ line that falls back to the reference, names the mistake and shows none of `secrets`."""
    out = capsys.readouterr().out
    assert result is reference, out
    assert out.startswith("✗ ") and out.rstrip().endswith(exercises.FALLBACK.strip(" —")), out
    assert out.count("\n") == 1 and "Traceback" not in out, out
    assert not [s for s in secrets if s in out], out
    assert all(k in out for k in keywords), (keywords, out)


def not_attempted(capsys, result, reference):
    assert result is reference
    assert capsys.readouterr().out == exercises.NOT_ATTEMPTED + "\n"


# ---------------------------------------------------------------------------------------------- 00 split sizes
SPLITS = {"train": list(range(100, 140)), "val": list(range(200, 210)), "test": list(range(300, 311))}
SIZES_SECRETS = [str(solutions.split_sizes(SPLITS)), "40", "11"]


def test_split_sizes_accepts_the_reference_and_a_stub_falls_back(capsys):
    def mine(splits):
        return {name: len(set(ids)) for name, ids in splits.items()}

    accepted(capsys, exercises.check_split_sizes(mine, SPLITS), mine)
    not_attempted(capsys, exercises.check_split_sizes(stub, SPLITS), solutions.split_sizes)


@pytest.mark.parametrize("wrong, keyword", [
    (lambda splits: {name: ids for name, ids in splits.items()}, "len()"),  # the id lists, not their sizes
    (lambda splits: {"train": len(splits["train"])}, "every split name"),
    (lambda splits: sum(len(ids) for ids in splits.values()), "dict"),
    (lambda splits: {"train": 40, "val": 10, "test": 11}, "count is off"),  # typed in, fails the checker's own
    (lambda splits: {name: max(ids) for name, ids in splits.items()}, "count is off"),
    (lambda splits: 1 / 0, "ZeroDivisionError"),
])
def test_split_sizes_rejects_wrong_answers_without_the_answer(capsys, wrong, keyword):
    result = exercises.check_split_sizes(wrong, SPLITS)
    rejected(capsys, result, solutions.split_sizes, SIZES_SECRETS, keyword)


# ---------------------------------------------------------------------------------------------- 01 COCO API
@pytest.fixture(scope="module")
def inst(tiny_cfg):
    return coco.load_instances(tiny_cfg)


PAIR = ["circle", "triangle"]


def test_images_with_all_accepts_the_reference_and_a_stub_falls_back(inst, capsys):
    def mine(coco_instances, names):
        sets = [set(coco_instances.catToImgs[c]) for c in coco_instances.getCatIds(catNms=names)]
        return sorted(set.intersection(*sets), reverse=True)

    accepted(capsys, exercises.check_images_with_all(mine, inst, PAIR), mine)
    not_attempted(capsys, exercises.check_images_with_all(stub, inst, PAIR), solutions.images_with_all)


def _first_only(c, names):
    return c.getImgIds(catIds=c.getCatIds(catNms=names[:1]))


def _union(c, names):
    return sorted({i for cat in c.getCatIds(catNms=names) for i in c.getImgIds(catIds=[cat])})


def _annotation_ids(c, names):
    return c.getAnnIds(catIds=c.getCatIds(catNms=names))


def _category_ids(c, names):
    return c.getCatIds(catNms=names)


def _one_missing(c, names):
    return solutions.images_with_all(c, names)[1:]


@pytest.mark.parametrize("wrong, keyword", [
    (_first_only, "ONE getImgIds call"),
    (_union, "ONE getImgIds call"),
    (_annotation_ids, "annotation ids"),
    (_category_ids, "category ids"),
    (_one_missing, "misses images"),
    (lambda c, names: "abc", "integer image ids"),
])
def test_images_with_all_rejects_wrong_answers_without_the_answer(inst, capsys, wrong, keyword):
    expected = solutions.images_with_all(inst, PAIR)
    assert len(expected) >= 2 and set(expected) != set(_union(inst, PAIR))  # the data can tell them apart
    result = exercises.check_images_with_all(wrong, inst, PAIR)
    rejected(capsys, result, solutions.images_with_all, [str(expected), str(len(expected))], keyword)


# ---------------------------------------------------------------------------------------------- 02 flip matrix
WIDTH = 48
FLIP_SECRETS = [str(solutions.flip_matrix(WIDTH).tolist()), "47.0", "- x", "47 -"]


def test_flip_matrix_accepts_the_reference_and_a_stub_falls_back(capsys):
    from labutils import augment

    def mine(width):
        return augment.compose(augment.scale_matrix(-1, 1), augment.translation_matrix(width - 1, 0))[:2]

    img = np.random.default_rng(0).integers(0, 255, (9, WIDTH, 3), dtype=np.uint8)
    result = exercises.check_flip_matrix(mine, WIDTH)
    accepted(capsys, result, mine)
    assert np.array_equal(augment.apply_affine(img, result(WIDTH)), augment.horizontal_flip(img))
    not_attempted(capsys, exercises.check_flip_matrix(stub, WIDTH), solutions.flip_matrix)


@pytest.mark.parametrize("wrong, keyword", [
    (lambda w: np.array([[-1.0, 0, w], [0, 1, 0]]), "shift is not"),  # off by one pixel
    (lambda w: np.array([[-1.0, 0, 0], [0, 1, 0]]), "off the canvas"),
    (lambda w: np.array([[1.0, 0, 0], [0, -1, w - 1]]), "vertical"),
    (lambda w: np.eye(2, 3), "swaps those two"),
    (lambda w: np.eye(3), "2x3"),
    (lambda w: [[-1, 0, WIDTH - 1], [0, 1, 0]], "for width 7"),  # written for one image size only
])
def test_flip_matrix_rejects_wrong_answers_without_the_answer(capsys, wrong, keyword):
    result = exercises.check_flip_matrix(wrong, WIDTH)
    rejected(capsys, result, solutions.flip_matrix, FLIP_SECRETS, keyword)


# ---------------------------------------------------------------------------------------------- 03 encode
@pytest.fixture(scope="module")
def vocab():
    return Vocabulary.build(["A red circle on the left.", "Two red circles, above a blue square!", "a blue square"])


def _encode_secrets(vocab):
    known = vocab.words[:3]
    texts = [" ".join(known), f"{known[0]} zyzzyva {known[-1]}", " ".join(known * 5), ""]
    return [str(vocab.encode(t, max_len=8)) for t in texts]


def test_encode_accepts_the_reference_and_a_stub_falls_back(vocab, capsys):
    def mine(text, vocab, max_len):
        ids = [vocab.stoi[w] if w in vocab.stoi else vocab.unk_id for w in tokenize(text)]
        return tuple([vocab.start_id] + ids[: max_len - 2] + [vocab.end_id])

    accepted(capsys, exercises.check_encode(mine, vocab), mine)
    not_attempted(capsys, exercises.check_encode(stub, vocab), solutions.encode)


def _no_truncation(text, vocab, max_len):
    return [vocab.start_id, *[vocab.stoi.get(w, vocab.unk_id) for w in tokenize(text)], vocab.end_id]


def _split_not_tokenize(text, vocab, max_len):
    return [vocab.start_id, *[vocab.stoi.get(w, vocab.unk_id) for w in text.split()][: max_len - 2], vocab.end_id]


def _cut_after_end(text, vocab, max_len):
    return _no_truncation(text, vocab, max_len)[:max_len]


def _unknown_as_pad(text, vocab, max_len):
    return [vocab.start_id, *[vocab.stoi.get(w, vocab.pad_id) for w in tokenize(text)][: max_len - 2], vocab.end_id]


def _no_start(text, vocab, max_len):
    return solutions.encode(text, vocab, max_len)[1:]


@pytest.mark.parametrize("wrong, keyword", [
    (_no_truncation, "at most max_len"),
    (_split_not_tokenize, "tokenize(text)"),
    (_cut_after_end, "end with vocab.end_id"),
    (_unknown_as_pad, "unk_id"),
    (_no_start, "start with"),
    (lambda text, vocab, max_len: vocab.stoi[text], "KeyError"),
    (lambda text, vocab, max_len: None, "list of int ids"),
])
def test_encode_rejects_wrong_answers_without_the_answer(vocab, capsys, wrong, keyword):
    result = exercises.check_encode(wrong, vocab)
    rejected(capsys, result, solutions.encode, _encode_secrets(vocab), keyword)


# ---------------------------------------------------------------------------------------------- 04 pad
PAD_SECRETS = ["tensor(", "[4, 3, 6]", "[2]", "[3, 3]"]


def test_pad_accepts_the_reference_and_a_stub_falls_back(capsys):
    def mine(captions):
        return torch.nn.utils.rnn.pad_sequence(captions, batch_first=True), torch.tensor([len(c) for c in captions])

    accepted(capsys, exercises.check_pad(mine), mine)
    not_attempted(capsys, exercises.check_pad(stub), solutions.pad)


def _pads_with_one(captions):
    padded, lengths = solutions.pad(captions)
    padded[padded == 0] = 1
    return padded, lengths


def _pads_left(captions):
    padded, lengths = solutions.pad(captions)
    return torch.stack([torch.roll(p, int(padded.shape[1] - n)) for p, n in zip(padded, lengths, strict=True)]), lengths


def _fixed_width(captions):
    padded = torch.zeros(len(captions), 10, dtype=torch.long)
    for row, caption in enumerate(captions):
        padded[row, : len(caption)] = caption
    return padded, torch.tensor([len(c) for c in captions])


@pytest.mark.parametrize("wrong, keyword", [
    (_pads_with_one, "fill the rest of each row with 0"),
    (_pads_left, "START of its row"),
    (lambda captions: (solutions.pad(captions)[0], solutions.pad(captions)[1] - 2), "lengths are off"),
    (_fixed_width, "longest caption"),
    (lambda captions: solutions.pad(captions)[0], "pair (padded, lengths)"),
])
def test_pad_rejects_wrong_answers_without_the_answer(capsys, wrong, keyword):
    result = exercises.check_pad(wrong)
    rejected(capsys, result, solutions.pad, PAD_SECRETS, keyword)


# ---------------------------------------------------------------------------------------------- 05 grid
GRID_SECRETS = ["tensor(", "(2, 16, 5)", "[2, 16, 5]"]


def test_grid_features_accepts_the_reference_and_a_stub_falls_back(capsys):
    def mine(fmap, g):
        return torch.einsum("bcp->bpc", F.adaptive_avg_pool2d(fmap, (g, g)).reshape(*fmap.shape[:2], -1))

    accepted(capsys, exercises.check_grid_features(mine), mine)
    not_attempted(capsys, exercises.check_grid_features(stub), solutions.to_grid)


@pytest.mark.parametrize("wrong, keyword", [
    (lambda fmap, g: F.adaptive_avg_pool2d(fmap, g).reshape(fmap.size(0), g * g, fmap.size(1)), "transpose(1, 2)"),
    (lambda fmap, g: F.adaptive_avg_pool2d(fmap, g).flatten(2), "swap the last two axes"),
    (lambda fmap, g: fmap.flatten(2).transpose(1, 2), "[B, grid_size**2, C]"),  # no pooling at all
    (lambda fmap, g: F.adaptive_max_pool2d(fmap, g).flatten(2).transpose(1, 2), "adaptive_avg_pool2d"),
    (lambda fmap, g: F.adaptive_avg_pool2d(fmap, g).tolist(), "return a tensor"),
    (lambda fmap, g: 1 / 0, "ZeroDivisionError"),
])
def test_grid_features_rejects_wrong_answers_without_the_answer(capsys, wrong, keyword):
    result = exercises.check_grid_features(wrong)
    rejected(capsys, result, solutions.to_grid, GRID_SECRETS, keyword)


# ---------------------------------------------------------------------------------------------- 07 top-k accuracy
def _topk_secrets():
    gen = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(4, 6, 12, generator=gen), torch.randint(1, 12, (4, 6), generator=gen)
    targets[1, 4:], targets[3, 2:] = 0, 0
    return [f"{solutions.topk_accuracy(logits, targets, k, 0):.{d}f}" for k in (1, 5) for d in (2, 3, 4)]


def test_topk_accuracy_accepts_the_reference_and_a_stub_falls_back(capsys):
    def mine(logits, targets, k, pad_id):
        real = targets != pad_id
        hit = (logits.argsort(dim=-1, descending=True)[..., :k] == targets[..., None]).any(-1)
        return float(hit[real].float().mean())

    accepted(capsys, exercises.check_topk_accuracy(mine), mine)
    not_attempted(capsys, exercises.check_topk_accuracy(stub), solutions.topk_accuracy)


def _counts_pad(logits, targets, k, pad_id):
    return (logits.topk(k, dim=-1).indices == targets[..., None]).any(-1).float().mean().item()


def _hit_count(logits, targets, k, pad_id):
    hit = (logits.topk(k, dim=-1).indices == targets[..., None]).any(-1)
    return int((hit & (targets != pad_id)).sum())


def _top1_only(logits, targets, k, pad_id):
    return solutions.topk_accuracy(logits, targets, 1, pad_id)


def _over_time_axis(logits, targets, k, pad_id):
    top = logits.topk(k, dim=1).indices  # [B, k, V]: the k best POSITIONS per word, not the k best words
    real = targets != pad_id
    hit = (top[..., :1].squeeze(-1)[:, :1] == targets).float()
    return float(hit[real].mean())


@pytest.mark.parametrize("wrong, keyword", [
    (_counts_pad, "<pad> positions are counted"),
    (_hit_count, "count of hits"),
    (_top1_only, "single best word"),
    (_over_time_axis, "last axis"),
    (lambda logits, targets, k, pad_id: [0.5], "one number"),
    (lambda logits, targets, k, pad_id: logits.topk(k, dim=3), "IndexError"),
])
def test_topk_accuracy_rejects_wrong_answers_without_the_answer(capsys, wrong, keyword):
    result = exercises.check_topk_accuracy(wrong)
    rejected(capsys, result, solutions.topk_accuracy, _topk_secrets(), keyword)


@pytest.mark.parametrize("check, args", [
    (exercises.check_split_sizes, (SPLITS,)), (exercises.check_flip_matrix, (WIDTH,)),
    (exercises.check_pad, ()), (exercises.check_grid_features, ()), (exercises.check_attention, ()),
    (exercises.check_topk_accuracy, ()),
    (exercises.check_beam_step, ()),
    (exercises.check_bleu1_precision, ()), (exercises.check_mass_inside, (np.full(16, 1 / 16), np.eye(8, dtype=bool), 4)),
    (exercises.check_causal_mask, ()), (exercises.check_baseline, ()), (exercises.check_unsupported, ()),
])
def test_rerunning_the_check_cell_alone_is_not_praised(capsys, check, args):
    """After a fallback the notebook's name holds the reference; checking it again must not say ✓ to the learner."""
    fallback = check(stub, *args)
    capsys.readouterr()
    not_attempted(capsys, check(fallback, *args), fallback)


# ---------------------------------------------------------------------------------------------- the notebooks
CHECKED = [("00_setup", "check_split_sizes"), ("01_coco_api", "check_images_with_all"),
           ("02_augmentation", "check_flip_matrix"), ("03_vocabulary", "check_encode"), ("04_dataset", "check_pad"),
           ("05_encoder", "check_grid_features"), ("06_decoder", "check_attention"),
           ("07_training", "check_topk_accuracy"), ("08_evaluation", "check_beam_step"),
           ("08_evaluation", "check_bleu1_precision"), ("09_attention", "check_mass_inside"),
           ("10_beyond", "check_causal_mask"), ("10_beyond", "check_baseline"),
           ("11_applications", "check_unsupported")]


@pytest.mark.parametrize("name, checker", CHECKED)
def test_notebook_exercise_is_a_stub_the_checker_replaces(name, checker):
    """The learner's cell defines the function with a `raise NotImplementedError` body (no answer shipped), and a
    later cell rebinds that name to what the checker returns (so the rest of the notebook uses the kept one)."""
    cells = [("".join(c["source"])) for c in json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]
             if c["cell_type"] == "code"]
    check = next(i for i, src in enumerate(cells) if f"exercises.{checker}(" in src)
    call = next(n for n in ast.walk(ast.parse(cells[check])) if isinstance(n, ast.Assign)
                and isinstance(n.value, ast.Call) and getattr(n.value.func, "attr", "") == checker)
    learner = call.targets[0].id
    assert call.value.args[0].id == learner
    defining = [src for src in cells[:check] if f"def {learner}(" in src]
    assert defining, f"{name}: no cell defines {learner}() before the check"
    stub_fn = next(n for n in ast.parse(defining[-1]).body if isinstance(n, ast.FunctionDef) and n.name == learner)
    body = [n for n in stub_fn.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    assert len(body) == 1 and isinstance(body[0], ast.Raise) and body[0].exc.id == "NotImplementedError"
    assert ast.get_docstring(stub_fn) and "# TODO" in defining[-1]


# ---------------------------------------------------------------------------------------------- 06 attention
ATTENTION_SECRETS = ["tensor(", "0."]


def test_attention_accepts_the_reference_and_a_stub_falls_back(capsys):
    def mine(self, enc_proj, h):
        scores = self.full_att(torch.tanh(enc_proj + self.decoder_att(h)[:, None, :]))[..., 0]
        return F.softmax(scores, dim=-1)

    accepted(capsys, exercises.check_attention(mine), mine)
    not_attempted(capsys, exercises.check_attention(stub), solutions.attention_weights)


def test_the_kept_attention_runs_inside_the_decoder(capsys):
    """What the check returns is plugged into ShowAttendTell, and the decoder's forward then runs it."""
    from labutils import decoders

    calls = []

    def mine(self, enc_proj, h):
        calls.append(enc_proj.shape)
        return solutions.attention_weights(self, enc_proj, h)

    kept = exercises.check_attention(mine)
    capsys.readouterr()
    torch.manual_seed(0)
    model = decoders.ShowAttendTell(vocab_size=20, feature_dim=12, embed_dim=8, hidden_dim=10, attention_dim=6).eval()
    inputs = torch.randn(2, 5, 12), torch.tensor([[1, 4, 5, 2], [1, 6, 2, 0]]), torch.tensor([4, 3])
    reference = model(*inputs)
    original = decoders.ShowAttendTell.attention_weights
    try:
        decoders.ShowAttendTell.attention_weights = kept  # what notebook 06's check cell does
        calls.clear()
        again = model(*inputs)
    finally:
        decoders.ShowAttendTell.attention_weights = original
    assert calls and torch.allclose(again.logits, reference.logits)


def _attention_parts(self, enc_proj, h):
    return self.full_att(torch.tanh(enc_proj + self.decoder_att(h).unsqueeze(1)))  # [B, P, 1]


@pytest.mark.parametrize("wrong, keyword", [
    (lambda self, enc_proj, h: torch.softmax(_attention_parts(self, enc_proj, h).squeeze(2), dim=0), "dim=1"),
    (lambda self, enc_proj, h: _attention_parts(self, enc_proj, h).squeeze(2), "softmax along dim=1"),  # raw scores
    (lambda self, enc_proj, h: torch.softmax(_attention_parts(self, enc_proj, h), dim=1), "squeeze"),
    (lambda self, enc_proj, h: torch.softmax(self.full_att(enc_proj + self.decoder_att(h).unsqueeze(1)).squeeze(2),
                                             dim=1), "tanh"),
    (lambda self, enc_proj, h: torch.softmax(self.full_att(torch.tanh(enc_proj)).squeeze(2), dim=1),
     "broadcast over the positions"),  # forgot the query: attention that ignores what was said
    (lambda self, enc_proj, h: torch.softmax(self.full_att(torch.tanh(enc_proj + self.decoder_att(h))).squeeze(2),
                                             dim=1), "RuntimeError"),  # no unsqueeze: [B, A] does not broadcast
    (lambda self, enc_proj, h: (solutions.attention_weights(self, enc_proj, h), None), "one tensor alpha"),
])
def test_attention_rejects_wrong_answers_without_the_answer(capsys, wrong, keyword):
    result = exercises.check_attention(wrong)
    rejected(capsys, result, solutions.attention_weights, ATTENTION_SECRETS, keyword)


# ---------------------------------------------------------------------------------------------- 08 BLEU-1
BLEU1_SECRETS = ["3/7", "0.42", "0.43", "0.75", "0.5", "3 / 7"]


# ---------------------------------------------------------------------------------------------- 08 beam step
NEG = float("-inf")


def _beam_step_secrets():
    """The expected picks of every case, as a hint could print them (tensors, lists, rounded scores)."""
    secrets = ["tensor("]
    for _what, scores, log_probs, n in exercises._beam_step_cases():
        best, parent, word = decode.expand_beams(scores, log_probs, n)
        secrets += [str(parent.tolist()), str(word.tolist())] + [f"{v:.{d}f}" for v in best.tolist() for d in (2, 3)]
    return secrets


def test_beam_step_reference_is_the_library_step_and_breaks_ties_low():
    for _what, scores, log_probs, n in exercises._beam_step_cases():
        for got, expected in zip(solutions.expand_beams(scores, log_probs, n),
                                 decode.expand_beams(scores, log_probs, n), strict=True):
            assert torch.equal(got, expected)
    # Every candidate ties: the lower beam first, then the lower word; the -inf word is never picked.
    best, parent, word = solutions.expand_beams(torch.zeros(2), torch.tensor([[0.0, 0.0], [0.0, NEG]]), 4)
    assert best.tolist() == [0.0, 0.0, 0.0] and parent.tolist() == [0, 0, 1] and word.tolist() == [0, 1, 0]


def test_beam_step_accepts_the_reference_and_a_stub_falls_back(capsys):
    def mine(scores, log_probs, n):  # a different route to the same answer: a loop over the candidates
        vocab_size = log_probs.size(1)
        totals = (scores[:, None] + log_probs).flatten().tolist()
        order = sorted(range(len(totals)), key=lambda i: -totals[i])[:n]  # sorted() is stable
        order = [i for i in order if totals[i] != NEG]
        return (torch.tensor([totals[i] for i in order]), torch.tensor([i // vocab_size for i in order]),
                torch.tensor([i % vocab_size for i in order]))

    accepted(capsys, exercises.check_beam_step(mine), mine)
    accepted(capsys, exercises.check_beam_step(decode.expand_beams), decode.expand_beams)
    not_attempted(capsys, exercises.check_beam_step(stub), solutions.expand_beams)


def _flat_picks(totals, n, descending=True):
    best, flat = totals.flatten().sort(descending=descending, stable=True)
    return best[:n], flat[:n]


def _no_running_score(scores, log_probs, n):
    return solutions.expand_beams(torch.zeros_like(scores), log_probs, n)


def _ascending(scores, log_probs, n):
    best, flat = _flat_picks(scores[:, None] + log_probs, n, descending=False)
    keep = best.isfinite()
    return best[keep], flat[keep] // log_probs.size(1), flat[keep] % log_probs.size(1)


def _divmod_by_beams(scores, log_probs, n):
    best, flat = _flat_picks(scores[:, None] + log_probs, n)
    keep = best.isfinite()
    return best[keep], flat[keep] // scores.size(0), flat[keep] % scores.size(0)


def _keeps_impossible_words(scores, log_probs, n):
    best, flat = _flat_picks(scores[:, None] + log_probs, n)
    return best, flat // log_probs.size(1), flat % log_probs.size(1)


def _ties_to_the_higher_index(scores, log_probs, n):
    totals = (scores[:, None] + log_probs).flatten()
    best, flipped = totals.flip(0).sort(descending=True, stable=True)  # stable on the reversed list
    best, flat = best[:n], totals.numel() - 1 - flipped[:n]
    keep = best.isfinite()
    return best[keep], flat[keep] // log_probs.size(1), flat[keep] % log_probs.size(1)


def _no_cut_at_n(scores, log_probs, n):
    return solutions.expand_beams(scores, log_probs, scores.numel() * log_probs.size(1))


def _true_division(scores, log_probs, n):
    best, parent, word = solutions.expand_beams(scores, log_probs, n)
    return best, (parent * log_probs.size(1) + word) / log_probs.size(1), word


@pytest.mark.parametrize("wrong, keyword", [
    (_no_running_score, "score so far"),
    (_ascending, "descending"),
    (_divmod_by_beams, "flat // V"),
    (_keeps_impossible_words, "-inf candidates"),
    (_ties_to_the_higher_index, "stable=True"),
    (_no_cut_at_n, "wrong number"),
    (_true_division, "integer division"),
    (lambda scores, log_probs, n: solutions.expand_beams(scores, log_probs, n)[:2], "three 1-D tensors"),
    (lambda scores, log_probs, n: log_probs[n], "IndexError"),
])
def test_beam_step_rejects_wrong_answers_without_the_answer(capsys, wrong, keyword):
    result = exercises.check_beam_step(wrong)
    rejected(capsys, result, solutions.expand_beams, _beam_step_secrets(), keyword)


def test_the_kept_beam_step_runs_inside_the_search():
    """Notebook 08 runs the step the checker kept through `beam_search_one_image(..., expand=...)`."""
    calls = []

    def counting(scores, log_probs, n):
        calls.append((scores.shape[0], log_probs.shape, n))
        return solutions.expand_beams(scores, log_probs, n)

    vocab = Vocabulary([f"w{i}" for i in range(6)])
    torch.manual_seed(0)
    decoder = ShowAttendTell(len(vocab), feature_dim=12, embed_dim=8, hidden_dim=10, attention_dim=6)
    features = torch.randn(4, 12)  # [P, C]
    mine = decode.beam_search_one_image(decoder, features, vocab, beam_size=3, max_len=6, expand=counting)
    library = decode.beam_search_one_image(decoder, features, vocab, beam_size=3, max_len=6)
    assert (mine.tokens, mine.score) == (library.tokens, library.score)
    assert calls[0] == (1, (1, len(vocab)), 3)  # the first step extends the one start beam
    assert all(n <= 3 for _, _, n in calls)  # finished beams retire their slots, never add any
    broken = decode.beam_search_one_image(decoder, features, vocab, beam_size=3, max_len=6, expand=_no_running_score)
    assert (broken.tokens, broken.score) != (library.tokens, library.score)  # it really steps with what it is given


def test_bleu1_precision_reference_clips_to_the_most_in_one_reference():
    refs = ["the cat is on the mat", "there is a cat on the mat"]
    assert solutions.bleu1_precision("the the the the the the the", refs) == pytest.approx(2 / 7)
    assert solutions.bleu1_precision("a red circle and a red circle", exercises.BLEU1_CASES[0][1]) == pytest.approx(3 / 7)
    assert solutions.bleu1_precision("", refs) == 0.0


def test_bleu1_precision_accepts_the_reference_and_a_stub_falls_back(capsys):
    from collections import Counter

    def mine(candidate, references):
        counts = Counter(candidate.split())
        most = Counter()
        for ref in references:
            most |= Counter(ref.split())  # | keeps the larger count of each word
        return sum((counts & most).values()) / sum(counts.values())

    accepted(capsys, exercises.check_bleu1_precision(mine), mine)
    not_attempted(capsys, exercises.check_bleu1_precision(stub), solutions.bleu1_precision)


def _unclipped(candidate, references):
    words = candidate.split()
    return sum(any(w in r.split() for r in references) for w in words) / len(words)


def _pooled(candidate, references):
    words, pooled = candidate.split(), " ".join(references).split()
    return sum(min(words.count(w), pooled.count(w)) for w in set(words)) / len(words)


def _distinct_words(candidate, references):
    words = set(candidate.split())
    return sum(any(w in r.split() for r in references) for w in words) / len(words)


def _matches_not_divided(candidate, references):
    return solutions.bleu1_precision(candidate, references) * len(candidate.split())


@pytest.mark.parametrize("wrong, keyword", [
    (_unclipped, "ONE reference"),
    (_pooled, "added together"),
    (_distinct_words, "repeats included"),
    (_matches_not_divided, "at most 1"),
    (lambda candidate, references: "three sevenths", "return a number"),
    (lambda candidate, references: references[5], "IndexError"),
])
def test_bleu1_precision_rejects_wrong_answers_without_the_answer(capsys, wrong, keyword):
    result = exercises.check_bleu1_precision(wrong)
    rejected(capsys, result, solutions.bleu1_precision, BLEU1_SECRETS, keyword)


# ---------------------------------------------------------------------------------------------- 09 mass inside
def _grounding_case():
    mask = np.zeros((16, 16), dtype=bool)
    mask[2:9, 4:13] = True  # cuts through regions, so whole-region counting is wrong
    alpha = np.random.default_rng(1).dirichlet(np.ones(16))
    return alpha, mask


def test_mass_inside_accepts_the_reference_and_a_stub_falls_back(capsys):
    from labutils import grounding

    alpha, mask = _grounding_case()

    def mine(alpha, mask, grid_size):
        return float(np.dot(alpha, grounding.cell_coverage(mask, grid_size)))

    accepted(capsys, exercises.check_mass_inside(mine, alpha, mask, 4), mine)
    not_attempted(capsys, exercises.check_mass_inside(stub, alpha, mask, 4), solutions.mass_inside)
    assert solutions.mass_inside(alpha, mask, 4) == pytest.approx(grounding.mass_inside(alpha, mask, 4))


def _whole_regions(alpha, mask, g):
    H, W = mask.shape
    return float((alpha * mask.reshape(g, H // g, g, W // g).any(axis=(1, 3)).reshape(-1)).sum())


def _column_order(alpha, mask, g):
    H, W = mask.shape
    return float((alpha * mask.reshape(g, H // g, g, W // g).mean(axis=(1, 3)).T.reshape(-1)).sum())


@pytest.mark.parametrize("wrong, keyword", [
    (_whole_regions, "FRACTION"),
    (lambda alpha, mask, g: float(mask.mean()), "weight each region's share by its alpha"),
    (_column_order, "row by row"),
    (lambda alpha, mask, g: float(alpha[mask.reshape(-1)[: len(alpha)]].sum()), "for each of the grid_size**2"),
    (lambda alpha, mask, g: [0.1, 0.2], "return one number"),
])
def test_mass_inside_rejects_wrong_answers_without_the_answer(capsys, wrong, keyword):
    alpha, mask = _grounding_case()
    secrets = [f"{solutions.mass_inside(alpha, mask, 4):.2f}", f"{solutions.mass_inside(alpha, mask, 4):.3f}"]
    result = exercises.check_mass_inside(wrong, alpha, mask, 4)
    rejected(capsys, result, solutions.mass_inside, secrets, keyword)


# ---------------------------------------------------------------------------------------------- 10 causal mask
def _mask_secrets():
    """The expected masks printed as a learner would see them: no hint may show one."""
    return [str(solutions.causal_mask(T)) for T in (5, 8)] + ["tensor(", "[[True", "[True, False"]


def test_causal_mask_accepts_the_reference_and_a_stub_falls_back(capsys):
    def mine(T):
        rows = torch.arange(T)
        return rows[None, :] <= rows[:, None]  # column j allowed for query t when j <= t

    accepted(capsys, exercises.check_causal_mask(mine), mine)
    not_attempted(capsys, exercises.check_causal_mask(stub), solutions.causal_mask)


@pytest.mark.parametrize("wrong, keyword", [
    (lambda T: torch.ones(T, T, dtype=torch.bool).triu(), "LATER words"),  # transposed: looks into the future
    (lambda T: torch.ones(T, T, dtype=torch.bool).tril(-1), "diagonal"),  # a word may not look at itself
    (lambda T: torch.ones(T, T, dtype=torch.bool), "the future included"),  # no mask at all
    (lambda T: ~torch.ones(T, T, dtype=torch.bool).tril(), "inverted"),  # True where hidden
    (lambda T: torch.ones(T, T).tril(), "dtype=torch.bool"),  # right pattern as floats
    (lambda T: torch.ones(T, T + 1, dtype=torch.bool).tril(), "[T, T]"),
    (lambda T: torch.eye(T, dtype=torch.bool), "torch.tril"),  # each word sees only itself
])
def test_causal_mask_rejects_wrong_answers_without_the_answer(capsys, wrong, keyword):
    result = exercises.check_causal_mask(wrong)
    rejected(capsys, result, solutions.causal_mask, _mask_secrets(), keyword)


def test_causal_mask_reference_keeps_the_future_out_of_attention():
    """The reference mask, given to the library's attention, makes word t's output independent of later words."""
    from labutils.decoders import MultiHeadAttention

    torch.manual_seed(0)
    attention = MultiHeadAttention(8, 2).eval()
    x = torch.randn(1, 5, 8)
    changed = x.clone()
    changed[0, 3:] = torch.randn(2, 8)  # new words 3 and 4
    mask = solutions.causal_mask(5)
    before, after = attention(x, x, mask)[0], attention(changed, changed, mask)[0]
    assert torch.allclose(before[0, :3], after[0, :3]) and not torch.allclose(before[0, 3:], after[0, 3:])


# ---------------------------------------------------------------------------------------------- 10 SCST baseline
def _baseline_secrets():
    cases = exercises._baseline_cases()
    values = [f"{float(v):.2f}" for rewards, n in cases for v in solutions.leave_one_out(rewards, n)]
    return [str(solutions.leave_one_out(rewards, n)) for rewards, n in cases] + values + ["tensor("]


def test_baseline_reference_equals_the_library_and_a_stub_falls_back(capsys):
    from labutils import scst

    for rewards, n in exercises._baseline_cases():
        assert torch.allclose(solutions.leave_one_out(rewards, n), scst.leave_one_out(rewards, n))

    def mine(rewards, n_samples):
        grouped = rewards.reshape(-1, n_samples)
        return torch.stack([torch.cat([row[:i], row[i + 1:]]).mean() for row in grouped for i in range(n_samples)])

    accepted(capsys, exercises.check_baseline(mine), mine)
    not_attempted(capsys, exercises.check_baseline(stub), solutions.leave_one_out)


def _others_over_n(rewards, n):
    grouped = rewards.view(-1, n)
    return ((grouped.sum(1, keepdim=True) - grouped) / n).reshape(-1)


def _sample_major(rewards, n):
    grouped = rewards.view(n, -1)  # [n, B]: reads the rows the wrong way round
    return ((grouped.sum(0, keepdim=True) - grouped) / (n - 1)).reshape(-1)


@pytest.mark.parametrize("wrong, keyword", [
    (lambda rewards, n: rewards.view(-1, n).mean(1).repeat_interleave(n), "includes the sample itself"),
    (lambda rewards, n: rewards.mean().expand(rewards.numel()), "whole batch"),  # the plain mean
    (lambda rewards, n: (rewards.sum() - rewards) / (rewards.numel() - 1), "whole batch"),
    (_others_over_n, "n_samples - 1 others"),
    (lambda rewards, n: rewards - solutions.leave_one_out(rewards, n), "advantage"),
    (_sample_major, "image-major"),
    (lambda rewards, n: rewards.view(-1, n).mean(1), "one baseline per image"),
    (lambda rewards, n: solutions.leave_one_out(rewards, n).view(-1, n), "reshape(-1)"),
    (lambda rewards, n: torch.zeros_like(rewards), "n_samples - 1"),
])
def test_baseline_rejects_wrong_answers_without_the_answer(capsys, wrong, keyword):
    result = exercises.check_baseline(wrong)
    rejected(capsys, result, solutions.leave_one_out, _baseline_secrets(), keyword)


# ---------------------------------------------------------------------------------------------- 11 unsupported words
def _unsupported_secrets():
    """The expected answers as a learner would see them printed: no hint may show one."""
    from labutils import applications

    answers = [applications.unsupported(c, r) for c, r in exercises.UNSUPPORTED_CASES]
    return [str(a) for a in answers if a] + ["['"]


def test_unsupported_reference_equals_the_library_and_a_stub_falls_back(capsys):
    from labutils import applications

    stop = set(applications.STOPWORDS)
    for caption, references in exercises.UNSUPPORTED_CASES:
        assert solutions.unsupported(caption, references, stop) == applications.unsupported(caption, references)

    def mine(caption, references, stopwords):
        out = []
        for word in caption.split():
            if word not in stopwords and word not in out and all(word not in r.split() for r in references):
                out.append(word)
        return out

    accepted(capsys, exercises.check_unsupported(mine), mine)
    not_attempted(capsys, exercises.check_unsupported(stub), solutions.unsupported)


def _first_reference_only(caption, references, stopwords):
    return list(dict.fromkeys(w for w in caption.split() if w not in stopwords and w not in references[0].split()))


def _in_every_reference(caption, references, stopwords):
    return list(dict.fromkeys(w for w in caption.split() if w not in stopwords
                              and not all(w in r.split() for r in references)))


@pytest.mark.parametrize("wrong, keyword", [
    (lambda c, r, s: [w for w in c.split() if not any(w in x.split() for x in r)], "stop words"),
    (lambda c, r, s: [w for w in c.split() if w not in s and not any(w in x.split() for x in r)], "once"),
    (lambda c, r, s: list(dict.fromkeys(w for w in c.split() if w not in s and any(w in x.split() for x in r))),
     "DO have"),
    (_first_reference_only, "first reference only"),
    (_in_every_reference, "EVERY reference"),
    (lambda c, r, s: list(dict.fromkeys(w for w in c.split() if w not in s and not any(w in x for x in r))),
     "whole words"),
    (lambda c, r, s: " ".join(w for w in c.split() if w not in s), "list of words"),
    (lambda c, r, s: None, "list of words"),
    (lambda c, r, s: [w for w in c.split()[::-1] if w not in s][:1], "for each word of the caption"),
    (lambda c, r, s: r[5], "IndexError"),
])
def test_unsupported_rejects_wrong_answers_without_the_answer(capsys, wrong, keyword):
    result = exercises.check_unsupported(wrong)
    rejected(capsys, result, solutions.unsupported, _unsupported_secrets(), keyword)

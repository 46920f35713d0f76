"""Tests for labutils.scst: CiderD equals pycocoevalcap's CIDEr-D, the baselines, and SCST raising the reward."""

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.cider.cider_scorer import CiderScorer
from torch import nn

from labutils import decode, scst
from labutils.config import QUICK
from labutils.data import CaptionBatch
from labutils.decoders import CaptionTransformer, ShowAndTell, ShowAttendTell
from labutils.metrics import simple_ptb_tokenize
from labutils.train import cpu_threads
from labutils.vocab import Vocabulary

WORDS = "a man woman dog riding horse on the beach runs grass two people red shirt in water".split()


def random_references(seed: int, n_images: int) -> dict:
    """Reference strings with capitals and punctuation (so tokenisation matters), 1 to 5 per image."""
    rng = random.Random(seed)
    return {f"img{seed}_{i}": [" ".join(rng.choices(WORDS, k=rng.randint(3, 12))).capitalize() + rng.choice(".,! ")
                              for _ in range(rng.choice([1, 3, 5]))] for i in range(n_images)}


def varied_candidates(references: dict, seed: int) -> list[list[str]]:
    """Repeats, a single word, empty, long, unseen words, a copy of its image's reference, and random mixes."""
    rng = random.Random(seed)
    fixed = [["a", "a", "a", "a", "dog", "dog"], ["dog"], [], WORDS * 2, ["zebra", "xylophone", "zebra"],
             simple_ptb_tokenize(list(references.values())[5][0]).split(), ["a", "man", "zebra", "riding"]]
    rest = [rng.choices(WORDS + ["zebra", "unicorn"], k=rng.randint(0, 15)) for _ in range(len(references))]
    return (fixed + rest)[:len(references)]


def coco_cider(references: dict, candidates: list[list[str]]) -> tuple[float, np.ndarray]:
    """pycocoevalcap's CIDEr-D on the lab's PTB tokens, as metrics.evaluate computes it without Java."""
    gts = {i: [simple_ptb_tokenize(r) for r in refs] for i, refs in references.items()}
    res = {i: [" ".join(c)] for i, c in zip(references, candidates, strict=True)}
    return Cider().compute_score(gts, res)


# -- the reward ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ciderd_equals_pycocoevalcap_per_image_and_on_average(seed):
    references = random_references(seed, 40)
    candidates = varied_candidates(references, seed)
    mean, per_image = coco_cider(references, candidates)
    ours = scst.CiderD(references).scores(list(references), candidates)
    assert np.abs(ours - per_image).max() < 1e-9
    assert abs(ours.mean() - mean) < 1e-9
    assert per_image.max() > 1.0 and (per_image == 0).any()  # informative captions and empty ones both present
    strings = scst.CiderD(references).scores(list(references), [" ".join(c) for c in candidates])
    assert np.abs(strings - ours).max() < 1e-12  # a string is tokenised into the same words


def test_ciderd_scores_images_in_any_order_and_repeated():
    references = random_references(3, 12)
    candidates = varied_candidates(references, 3)
    cider = scst.CiderD(references)
    ids = list(references)
    reference_scores = cider.scores(ids, candidates)
    order = [5, 5, 0, 11, 3, 5]
    assert np.array_equal(cider.scores([ids[k] for k in order], [candidates[k] for k in order]),
                          reference_scores[order])


class TrainDocumentFrequencies(CiderScorer):
    """pycocoevalcap's CiderScorer with df and log(#images) taken from another corpus (the SCST authors' setup)."""

    ref_len = property(lambda self: self._fixed_ref_len, lambda self, value: None)  # compute_cider's value ignored


def coco_cider_with_df(references: list[list[str]], candidates: list[str], df_references: list[list[str]]):
    """Per-candidate CIDEr-D by pycocoevalcap's own code, df from `df_references` (all already-tokenised strings)."""
    corpus = CiderScorer()
    for refs in df_references:
        corpus += (None, refs)
    corpus.compute_doc_freq()
    scorer = TrainDocumentFrequencies()
    for refs, cand in zip(references, candidates, strict=True):
        scorer += (cand, refs)
    scorer.document_frequency, scorer._fixed_ref_len = corpus.document_frequency, math.log(len(df_references))
    return np.array(scorer.compute_cider())


def tokenised(references: dict) -> list[list[str]]:
    return [[simple_ptb_tokenize(r) for r in refs] for refs in references.values()]


def test_document_frequencies_from_the_training_set_differ_from_the_evaluated_images():
    train, evaluated = random_references(4, 60), random_references(5, 8)
    candidates = varied_candidates(evaluated, 5)
    own_df = coco_cider(evaluated, candidates)[1]  # what pycocoevalcap gives: df from these 8 images only
    with_train_df = scst.CiderD(evaluated, df_references=train).scores(list(evaluated), candidates)
    expected = coco_cider_with_df(tokenised(evaluated), [" ".join(c) for c in candidates], tokenised(train))
    assert np.abs(with_train_df - expected).max() < 1e-9
    assert np.abs(with_train_df - own_df).max() > 0.1  # the corpus the df come from changes the reward
    # Built once on the whole corpus, an image's reward no longer depends on which images share its batch.
    both = train | evaluated
    whole = scst.CiderD(both)
    batch_of_8 = whole.scores(list(evaluated), candidates)
    alone = whole.scores(list(evaluated)[:1], candidates[:1])
    assert batch_of_8[0] == alone[0]
    all_candidates = varied_candidates(train, 6) + candidates
    assert np.abs(whole.scores(list(both), all_candidates)[-8:] - coco_cider(both, all_candidates)[1][-8:]).max() < 1e-9


def test_end_token_equals_pycocoevalcap_with_an_end_word_and_penalises_trailing_off():
    references = {"horse": ["A man riding a horse.", "a man rides a brown horse", "A person riding a horse."],
                  "dog": ["a dog runs on the grass", "a brown dog running on grass"]}
    full, cut = "a man riding a horse".split(), "a man riding a".split()
    plain, ended = scst.CiderD(references), scst.CiderD(references, end_token=True)
    ids, candidates, finished = ["horse", "horse", "horse", "dog"], [full, cut, full, cut], [True, True, False, True]
    marked = [c + ["<end>"] * done for c, done in zip(candidates, finished, strict=True)]
    refs = {i: [r + " <end>" for r in caps] for i, caps in zip(references, tokenised(references), strict=True)}
    expected = coco_cider_with_df([refs[i] for i in ids], [" ".join(c) for c in marked], list(refs.values()))
    with_end = ended.scores(ids, candidates, finished)
    assert np.abs(with_end - expected).max() < 1e-9
    without_end = plain.scores(ids, candidates, finished)
    # Stopping after "a" loses more against the full caption when the ending is a word...
    assert with_end[1] / with_end[0] < without_end[1] / without_end[0] - 0.1
    # ... and a caption cut by max_len (no <end>) earns less than the same words ended, which plain CIDEr-D ignores.
    assert with_end[2] < with_end[0] and without_end[2] == without_end[0]


def test_ciderd_rejects_unknown_images_and_mismatched_lengths():
    cider = scst.CiderD({1: ["a dog"]})
    with pytest.raises(KeyError, match="no references"):
        cider.scores([2], ["a dog"])
    with pytest.raises(ValueError, match="one id per caption"):
        cider.scores([1, 1], ["a dog"])


# -- baselines and the loss ---------------------------------------------------------------------------------------
def test_leave_one_out_baseline_is_the_mean_of_the_other_samples():
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])  # two images, three samples each
    assert torch.allclose(scst.leave_one_out(rewards, 3), torch.tensor([4.0, 3.5, 1.5, 1.5, 1.5, 0.0]))
    with pytest.raises(ValueError, match="n_samples >= 2"):
        scst.leave_one_out(rewards, 1)


class ChainDecoder(nn.Module):
    """A toy decoder (step interface only) that almost surely says w0 w1 w2 <end>: every sample is the greedy caption,
    yet each word keeps a tiny probability of another, so log p has a real (non-zero) gradient."""

    def __init__(self, vocab: Vocabulary, feature_dim: int):
        super().__init__()
        size = len(vocab)
        self.table = nn.Parameter(torch.randn(size, size) * 0.1)
        self.proj = nn.Linear(feature_dim, size)
        chain = {vocab.start_id: vocab["w0"], vocab["w0"]: vocab["w1"], vocab["w1"]: vocab["w2"],
                 vocab["w2"]: vocab.end_id}
        self.register_buffer("next_word", torch.tensor([chain.get(i, vocab.end_id) for i in range(size)]))

    def init_state(self, features):
        return (self.proj(features.mean(dim=1)),)  # [B, V]

    def step(self, tokens, state):
        peak = 25.0 * nn.functional.one_hot(self.next_word[tokens], self.table.size(0))  # [B, V]
        return self.table[tokens] + state[0] + peak, state, None


@pytest.mark.parametrize("baseline", ["greedy", "mean"])
def test_samples_equal_to_the_greedy_caption_have_zero_advantage_and_zero_gradient(baseline):
    torch.manual_seed(0)
    vocab = Vocabulary(["w0", "w1", "w2", "w3"])
    decoder = ChainDecoder(vocab, feature_dim=6)
    features = torch.randn(3, 4, 6)
    cider = scst.CiderD({0: ["w0 w1 w3", "w0 w2"], 1: ["w0 w1 w2 w3"], 2: ["w3 w2", "w1 w2 w3 w0"]})
    generator = torch.Generator().manual_seed(0)
    loss, stats = scst.scst_loss(decoder, features, [0, 1, 2], vocab, cider, n_samples=4, baseline=baseline,
                                 max_len=6, generator=generator)
    assert stats["finished"] == 1.0 and stats["sample_length"] == 4.0  # w0 w1 w2 <end>, every time
    assert stats["reward"] == stats["baseline"] > 0
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert all(p.grad is not None and not p.grad.any() for p in decoder.parameters())
    # The same samples with a non-zero advantage do move the weights: the zero above is the advantage's doing.
    samples = scst.sample_with_log_probs(decoder, features, vocab, 4, 6, torch.Generator().manual_seed(0))
    decoder.zero_grad()
    (-samples.log_prob.mean()).backward()
    assert any(p.grad.abs().max() > 0 for p in decoder.parameters())


def test_samples_never_hold_banned_tokens_and_pad_after_end():
    torch.manual_seed(1)
    vocab = Vocabulary([f"w{i}" for i in range(6)])
    decoder = ShowAttendTell(len(vocab), feature_dim=8, embed_dim=8, hidden_dim=16, attention_dim=8, dropout=0.0)
    samples = scst.sample_with_log_probs(decoder, torch.randn(4, 3, 8), vocab, n_samples=3, max_len=10,
                                         generator=torch.Generator().manual_seed(1))
    assert samples.tokens.shape[0] == 12 and samples.log_prob.shape == (12,)
    valid = samples.mask.bool()
    assert not torch.isin(samples.tokens[valid], torch.tensor([vocab.pad_id, vocab.start_id, vocab.unk_id])).any()
    assert (samples.tokens[~valid] == vocab.pad_id).all()
    lengths = samples.mask.sum(1).long()
    ended = samples.tokens.gather(1, (lengths - 1).unsqueeze(1)).squeeze(1) == vocab.end_id
    assert torch.equal(ended, samples.finished)


@pytest.mark.parametrize("decoder_max_len", [12, 5])  # 5: the samples run past the position embeddings
def test_transformer_samples_scored_in_one_pass_equal_the_graph_of_their_steps(decoder_max_len):
    # One causal pass over the sampled words gives each sample the log p, and the gradient, that keeping the graph
    # of every step gives; 5 positions also checks that the pass caps positions where `step` does.
    torch.manual_seed(2)
    vocab = Vocabulary([f"w{i}" for i in range(6)])
    decoder = CaptionTransformer(len(vocab), feature_dim=8, dim=16, num_layers=2, num_heads=2, dropout=0.0,
                                 max_len=decoder_max_len, num_positions=3)
    features = torch.randn(4, 3, 8)
    results = {}
    for one_pass in (True, False):
        samples = scst.sample_with_log_probs(decoder, features, vocab, 3, 10, torch.Generator().manual_seed(3),
                                             one_pass=one_pass)
        decoder.zero_grad()
        (samples.log_prob * torch.linspace(-1, 1, 12)).sum().backward()
        results[one_pass] = samples, [p.grad.clone() for p in decoder.parameters()]
    (fast, fast_grads), (steps, step_grads) = results[True], results[False]
    lengths = fast.mask.sum(1)
    assert lengths.min() < lengths.max() and not bool(fast.finished.all())  # ended early, late and not at all
    assert torch.equal(fast.tokens, steps.tokens) and torch.equal(fast.mask, steps.mask)
    torch.testing.assert_close(fast.log_prob, steps.log_prob)
    for fast_grad, step_grad in zip(fast_grads, step_grads, strict=True):
        torch.testing.assert_close(fast_grad, step_grad)


@pytest.mark.parametrize("drop_at", [0.25, 0.0, 1.0])  # the library's; at every step that ended one; never
@pytest.mark.parametrize("kind", ["attention", "transformer"])
def test_ended_samples_leave_the_batch_and_keep_their_own_words_and_log_p(kind, drop_at, monkeypatch):
    # Once `drop_at` of the rows have ended they leave the batch; the rest must stay with their own state: every
    # sample's words, replayed through `step` on the whole batch, give the log p the sampler summed for it.
    torch.manual_seed(4)
    vocab = Vocabulary([f"w{i}" for i in range(6)])
    decoder = (CaptionTransformer(len(vocab), feature_dim=8, dim=16, num_layers=2, num_heads=2, dropout=0.0,
                                  max_len=12, num_positions=3) if kind == "transformer" else
               ShowAttendTell(len(vocab), feature_dim=8, embed_dim=8, hidden_dim=16, attention_dim=8, dropout=0.0))
    rows = torch.arange(4).repeat_interleave(5)  # [20]
    start = tuple(t.index_select(0, rows) for t in decoder.init_state(torch.randn(4, 3, 8)))
    sizes, step = [], decoder.step
    monkeypatch.setattr(decoder, "step", lambda tokens, state: sizes.append(len(tokens)) or step(tokens, state))
    with torch.no_grad():
        tokens, log_prob, mask, finished = scst.draw_captions(decoder, start, vocab, 10,
                                                              torch.Generator().manual_seed(5), drop_at)
    monkeypatch.undo()
    lengths = mask.sum(1)
    assert lengths.min() < lengths.max() and bool(finished.any())
    assert sizes[0] == 20 and sizes == sorted(sizes, reverse=True)
    assert (sizes[-1] == 20) == (drop_at == 1.0), "rows leave unless drop_at keeps them all to the last step"
    replayed, state = torch.zeros(20), start
    previous = torch.full((20,), vocab.start_id)
    with torch.no_grad():
        for t in range(tokens.size(1)):
            logits, state, _ = decoder.step(previous, state)  # [20, V]
            logp = F.log_softmax(decode.words_only(logits.float(), vocab), dim=1)  # [20, V]
            picked = logp.gather(1, tokens[:, t:t + 1]).squeeze(1)  # [20]
            replayed += torch.where(mask[:, t].bool(), picked, torch.zeros_like(picked))
            previous = tokens[:, t]
    torch.testing.assert_close(log_prob, replayed)


def test_decoders_choose_how_to_keep_the_gradient_of_their_samples(monkeypatch):
    # The Transformer scores its samples in one pass (it has `teacher_forced`); an LSTM keeps its steps' graph.
    vocab = Vocabulary([f"w{i}" for i in range(6)])
    calls = []
    original = CaptionTransformer.teacher_forced
    monkeypatch.setattr(CaptionTransformer, "teacher_forced",
                        lambda self, *args: calls.append(type(self)) or original(self, *args))
    for decoder in (CaptionTransformer(len(vocab), feature_dim=8, dim=16, num_layers=1, num_heads=2, dropout=0.0,
                                       max_len=8, num_positions=3),
                    ShowAttendTell(len(vocab), feature_dim=8, embed_dim=8, hidden_dim=16, attention_dim=8)):
        samples = scst.sample_with_log_probs(decoder, torch.randn(2, 3, 8), vocab, 2, 6)
        assert samples.log_prob.requires_grad
    assert calls == [CaptionTransformer]


# -- training -----------------------------------------------------------------------------------------------------
def _dropouts(model: nn.Module) -> list[float]:
    """Every dropout probability of `model`: nn.Dropout's p and the between-layer dropout of a stacked LSTM/GRU."""
    return [m.p if isinstance(m, nn.Dropout) else m.dropout for m in model.modules()
            if isinstance(m, (nn.Dropout, nn.RNNBase))]


@pytest.mark.parametrize("kind", ["transformer", "show_and_tell_2_layers"])
def test_policy_copy_runs_without_dropout_and_leaves_the_original_alone(kind):
    torch.manual_seed(0)
    decoder = (CaptionTransformer(11, 8, dim=16, num_layers=1, num_heads=2, dropout=0.5, max_len=6)
               if kind == "transformer" else ShowAndTell(11, 8, embed_dim=8, hidden_dim=12, num_layers=2, dropout=0.5))
    features, captions, lengths = torch.randn(3, 4, 8), torch.randint(3, 11, (3, 6)), torch.full((3,), 6)
    policy = scst.policy_copy(decoder).train()
    decoder.train()

    def logits(model: nn.Module) -> torch.Tensor:
        return model(features, captions, lengths).logits

    assert torch.equal(logits(policy), logits(policy)), "the copy must run as at test time, even in train mode"
    assert not torch.equal(logits(decoder), logits(decoder)), "the original must keep its dropout"
    assert set(_dropouts(policy)) == {0.0} and set(_dropouts(decoder)) == {0.5}
    pairs = list(zip(decoder.parameters(), policy.parameters(), strict=True))
    assert all(torch.equal(a, b) and a.data_ptr() != b.data_ptr() for a, b in pairs), "equal values, own storage"
    original = next(decoder.parameters()).clone()
    with torch.no_grad():
        next(policy.parameters()).add_(1.0)
    assert torch.equal(next(decoder.parameters()), original), "fine-tuning the copy must not change the original"


TOY_CAPTIONS = {0: "a dog runs", 1: "a cat sleeps", 2: "two birds fly", 3: "a man rides"}


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["float32", "bfloat16"])
def test_a_few_scst_epochs_raise_the_greedy_captions_cider(dtype):
    # bfloat16: the CPU's mixed precision (cfg.mixed_precision on a CPU with it in hardware) must learn as well.
    from labutils.train import MixedPrecision

    torch.manual_seed(0)
    references = {i: [c, c, c, " ".join(c.split()[:2])] for i, c in TOY_CAPTIONS.items()}  # favour one caption
    vocab = Vocabulary.build(c for refs in references.values() for c in refs)
    cider = scst.CiderD(references, end_token=True)
    decoder = ShowAttendTell(len(vocab), feature_dim=8, embed_dim=16, hidden_dim=32, attention_dim=16, dropout=0.0)
    features = torch.randn(4, 3, 8) * 3.0  # [4 images, 3 positions, 8 channels], fixed
    loader = [CaptionBatch(features[:2], None, None, [0, 1]), CaptionBatch(features[2:], None, None, [2, 3])]
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-2)
    cfg = QUICK.replace(device="cpu", grad_clip=5.0, max_caption_len=6)
    generator = torch.Generator().manual_seed(0)

    def greedy_cider() -> float:
        return float(scst.greedy_rewards(decoder, features, list(TOY_CAPTIONS), vocab, cider, max_len=6).mean())

    with cpu_threads(1):  # the same numbers on any machine, and no thread contention on a busy one
        before = greedy_cider()
        amp = MixedPrecision(dtype, "cpu")
        history = [scst.scst_epoch(decoder, loader, optimizer, vocab, cider, cfg, n_samples=5, generator=generator,
                                   amp=amp) for _ in range(30)]
        after = greedy_cider()
    best = float(cider.scores([0], [TOY_CAPTIONS[0]])[0])  # the favoured caption's own reward
    assert before < 0.5 and after > before + 2.0 and after < best, (before, after, best)
    assert history[-1]["reward"] > history[0]["reward"]
    assert set(history[0]) == {"loss", "reward", "baseline", "sample_length", "finished"}


@pytest.mark.parametrize(("scst_max_len", "given", "expected"), [(3, None, 3), (None, None, 6), (3, 5, 5)])
def test_scst_epoch_samples_up_to_the_profiles_scst_max_len(monkeypatch, scst_max_len, given, expected):
    # cfg.scst_max_len caps the samples (None: max_caption_len); an explicit max_len wins over both.
    seen = []
    original = scst.sample_with_log_probs

    def spy(decoder, features, vocab, n_samples, max_len, generator):
        seen.append(max_len)
        return original(decoder, features, vocab, n_samples, max_len, generator)

    monkeypatch.setattr(scst, "sample_with_log_probs", spy)
    torch.manual_seed(0)
    vocab = Vocabulary.build(TOY_CAPTIONS.values())
    cider = scst.CiderD({i: [c] for i, c in TOY_CAPTIONS.items()})
    decoder = ShowAttendTell(len(vocab), feature_dim=8, embed_dim=8, hidden_dim=16, attention_dim=8, dropout=0.0)
    loader = [CaptionBatch(torch.randn(2, 3, 8), None, None, [0, 1])]
    cfg = QUICK.replace(device="cpu", max_caption_len=6, scst_max_len=scst_max_len)
    stats = scst.scst_epoch(decoder, loader, torch.optim.SGD(decoder.parameters(), lr=0.0), vocab, cider, cfg,
                            max_len=given, baseline="mean", generator=torch.Generator().manual_seed(0))
    assert seen == [expected] and stats["sample_length"] <= expected


def test_scst_epoch_adds_the_weighted_cross_entropy_of_the_references():
    # The mixed objective: SCST's loss + weight x the teacher-forced cross-entropy of the batch's references; with
    # no weight (the default), nothing is added.
    torch.manual_seed(0)
    vocab = Vocabulary.build(TOY_CAPTIONS.values())
    cider = scst.CiderD({i: [c] for i, c in TOY_CAPTIONS.items()})
    decoder = ShowAttendTell(len(vocab), feature_dim=8, embed_dim=8, hidden_dim=16, attention_dim=8, dropout=0.0)
    features = torch.randn(2, 3, 8)
    encoded = [torch.tensor(vocab.encode(TOY_CAPTIONS[i])) for i in (0, 1)]
    captions = nn.utils.rnn.pad_sequence(encoded, batch_first=True)  # [2, T], 0 = <pad>
    lengths = torch.tensor([len(c) for c in encoded])
    loader = [CaptionBatch(features, captions, lengths, [0, 1])]
    with torch.no_grad():
        logits = decoder(features, captions, lengths).logits  # [2, T-1, V]
    expected_xe = float(nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), captions[:, 1:].reshape(-1),
                                                    ignore_index=vocab.pad_id))

    def epoch(cfg, weight=0.0) -> dict:  # lr 0: the weights, hence the samples of one seed, stay the same
        return scst.scst_epoch(decoder, loader, torch.optim.SGD(decoder.parameters(), lr=0.0), vocab, cider, cfg,
                               baseline="mean", xe_weight=weight, generator=torch.Generator().manual_seed(0))

    cfg = QUICK.replace(device="cpu", max_caption_len=6)
    alone, mixed, half = epoch(cfg), epoch(cfg, 2.0), epoch(cfg, 0.5)
    assert "xe" not in alone and mixed["xe"] == pytest.approx(expected_xe, rel=1e-5)
    assert mixed["loss"] - alone["loss"] == pytest.approx(2.0 * expected_xe, rel=1e-4)
    assert half["loss"] - alone["loss"] == pytest.approx(0.5 * expected_xe, rel=1e-4)
    assert {k: v for k, v in mixed.items() if k not in ("loss", "xe")} == {k: v for k, v in alone.items() if k != "loss"}

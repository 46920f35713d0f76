"""Tests for labutils.decode: exact checks on toy decoders with known transition tables, then the real decoders."""

import itertools
import math

import pytest
import torch
from benchmark_scripts import load_benchmark
from torch import nn

from labutils import decode
from labutils.decoders import ShowAndTell, ShowAttendTell
from labutils.vocab import Vocabulary

NEG_INF = float("-inf")


@pytest.fixture(autouse=True, scope="module")
def one_thread(single_torch_thread):
    """Run this module on one torch thread (see tests/conftest.py)."""
    yield


class TableDecoder(nn.Module):
    """A Markov-chain 'decoder': logits = log P(next | previous token) from a fixed table, plus an image bias.

    It implements the step interface exactly: the state holds the features (passed through unchanged, like the
    attention decoder's) and a per-row step counter (a new tensor every step). Attention puts weight on the
    position chosen by the previous token, so reordered beams carry visibly different maps.
    """

    uses_attention = True

    def __init__(self, table: torch.Tensor, end_ramp: float = 0.0):
        super().__init__()
        self.register_buffer("table", table.float())
        self.vocab_size = table.size(1)
        self.end_ramp = end_ramp
        self.calls = 0

    def init_state(self, features):
        return features, torch.zeros(features.size(0), 1)

    def step(self, tokens, state):
        features, t = state
        self.calls += 1
        logits = self.table[tokens] + features.mean(dim=1)[:, : self.vocab_size]
        logits[:, 2] = logits[:, 2] + self.end_ramp * t[:, 0]  # <end> (id 2) grows likelier with length
        positions = features.size(1)
        alpha = torch.softmax(torch.nn.functional.one_hot(tokens % positions, positions).float() * 3.0, dim=1)
        return logits, (features, t + 1), alpha


class NeverEnds(TableDecoder):
    """A decoder whose <end> has probability 0: every search must stop at max_len on its own."""

    def step(self, tokens, state):
        logits, state, alpha = super().step(tokens, state)
        logits[:, 2] = NEG_INF
        return logits, state, alpha


def words_vocab(n_words: int) -> Vocabulary:
    return Vocabulary([f"w{i}" for i in range(n_words)])


def log_table(rows: dict[int, dict[int, float]], size: int) -> torch.Tensor:
    """A [size, size] table of log-probabilities from {previous: {next: probability}} (missing = 0)."""
    table = torch.full((size, size), NEG_INF)
    for prev, nexts in rows.items():
        for nxt, p in nexts.items():
            table[prev, nxt] = math.log(p)
    return table


def random_table(vocab: Vocabulary, seed: int, end_bias: float = 0.0) -> torch.Tensor:
    """Random transition logits that never produce the specials <pad>, <start>, <unk>."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(len(vocab), len(vocab), generator=gen) * 2.0
    table[:, [vocab.pad_id, vocab.start_id, vocab.unk_id]] = NEG_INF
    table[:, vocab.end_id] += end_bias
    return table


def zero_features(batch: int, vocab_size: int, positions: int = 3) -> torch.Tensor:
    return torch.zeros(batch, positions, vocab_size)


def image_features(batch: int, vocab_size: int, seed: int, positions: int = 3) -> torch.Tensor:
    """Per-image features: their mean over positions is an image-specific bias on the logits."""
    return torch.randn(batch, positions, vocab_size, generator=torch.Generator().manual_seed(seed))


def forced_log_prob_and_alphas(decoder, features, vocab, tokens):
    """Run the decoder along `tokens` for one image: their total log-prob and the attention at each step."""
    decoder.eval()
    with torch.inference_mode():
        state = decoder.init_state(features)
        prev = torch.tensor([vocab.start_id])
        total, alphas = 0.0, []
        for token in tokens:
            logits, state, alpha = decoder.step(prev, state)
            total += torch.log_softmax(logits.float(), dim=1)[0, token].item()
            if alpha is not None:
                alphas.append(alpha[0])
            prev = torch.tensor([token])
    return total, torch.stack(alphas) if alphas else None


# -- a hand-made chain where greedy and beam search disagree ------------------------------------------------
@pytest.fixture()
def chain():
    """start -> a .5 | b .4 | c .1;  a -> c .35 | d .35 | end .3;  b -> end .9 | a .1;  c, d -> end 1."""
    vocab = Vocabulary(["a", "b", "c", "d"])
    a, b, c, d = (vocab[w] for w in "abcd")
    end = vocab.end_id
    table = log_table({vocab.start_id: {a: 0.5, b: 0.4, c: 0.1}, a: {c: 0.35, d: 0.35, end: 0.3},
                       b: {end: 0.9, a: 0.1}, c: {end: 1.0}, d: {end: 1.0}}, len(vocab))
    return TableDecoder(table), vocab


def test_greedy_takes_the_locally_best_word_and_breaks_ties_to_the_lower_id(chain):
    decoder, vocab = chain
    [caption] = decode.greedy(decoder, zero_features(1, len(vocab)), vocab, max_len=10)
    # After "a", c and d tie at 0.35: the lower id (c) wins, as argmax documents.
    assert caption.text == "a c"
    assert caption.words == ["a", "c", "<end>"]
    assert caption.finished
    assert caption.log_prob == pytest.approx(math.log(0.5 * 0.35 * 1.0), abs=1e-6)


def test_beam_search_finds_the_better_caption_greedy_misses(chain):
    decoder, vocab = chain
    decoder.calls = 0
    [options] = decode.beam_search(decoder, zero_features(1, len(vocab)), vocab, beam_size=2, max_len=30,
                                   return_k=2)
    assert [c.text for c in options] == ["b", "a c"]
    assert options[0].log_prob == pytest.approx(math.log(0.4 * 0.9), abs=1e-6)
    assert options[1].log_prob == pytest.approx(math.log(0.5 * 0.35), abs=1e-6)
    assert options[0].score == options[0].log_prob  # no length penalty
    assert all(c.finished for c in options)
    # b<end> finishes at step 2, a c <end> at step 3: both slots retired, so the search stops after 3 of 30 steps.
    assert decoder.calls == 3


def test_beam_size_one_is_greedy(chain):
    decoder, vocab = chain
    feats = image_features(5, len(vocab), seed=3)
    greedy = decode.greedy(decoder, feats, vocab, max_len=12)
    beams = decode.beam_search(decoder, feats, vocab, beam_size=1, max_len=12)
    assert [b[0].tokens for b in beams] == [g.tokens for g in greedy]
    assert [b[0].log_prob for b in beams] == pytest.approx([g.log_prob for g in greedy], abs=1e-5)


def test_length_penalty_follows_wu_et_al(chain):
    decoder, vocab = chain
    [options] = decode.beam_search(decoder, zero_features(1, len(vocab)), vocab, beam_size=2, max_len=30,
                                   length_penalty=1.0, return_k=2)
    for caption in options:
        expected = caption.log_prob / ((5 + len(caption.tokens)) / 6)
        assert caption.score == pytest.approx(expected, rel=1e-6)
    assert decode.length_penalty(3, 0.0) == 1.0
    assert decode.length_penalty(7, 1.0) == pytest.approx(2.0)


# -- exhaustive search as ground truth --------------------------------------------------------------------------
def brute_force(table: torch.Tensor, vocab: Vocabulary, max_len: int, alpha: float):
    """Every finished caption up to max_len tokens with its log-prob, best first (ranked like beam_search)."""
    logp = torch.log_softmax(table, dim=1)
    word_ids = [i for i in range(len(vocab)) if i >= 4]
    found = []
    for n_words in range(0, max_len):
        for words in itertools.product(word_ids, repeat=n_words):
            seq = [*words, vocab.end_id]
            prev, total = vocab.start_id, torch.zeros(())
            for token in seq:  # the same float32 additions in the same order as the search
                total = total + logp[prev, token]
                prev = token
            raw = total.item()
            found.append((raw / ((5 + len(seq)) / 6) ** alpha if alpha else raw, raw, seq))
    return sorted(found, key=lambda item: -item[0])


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_a_wide_enough_beam_is_exhaustive_search(alpha):
    vocab = words_vocab(3)
    table = random_table(vocab, seed=7, end_bias=0.5)
    decoder = TableDecoder(table)
    max_len = 4
    # 3 + 9 + 27 + 81 = 120 prefixes: a beam of 120 never prunes anything.
    [options] = decode.beam_search(decoder, zero_features(1, len(vocab)), vocab, beam_size=120, max_len=max_len,
                                   length_penalty=alpha, return_k=5)
    expected = brute_force(table, vocab, max_len, alpha)[:5]
    assert [c.tokens for c in options] == [seq for _, _, seq in expected]
    assert [c.score for c in options] == pytest.approx([s for s, _, _ in expected], abs=1e-5)


# -- batching -----------------------------------------------------------------------------------------------------
def test_batched_beam_search_equals_one_image_at_a_time():
    vocab = words_vocab(6)
    decoder = TableDecoder(random_table(vocab, seed=1), end_ramp=0.4)
    feats = image_features(7, len(vocab), seed=2)
    batched = decode.beam_search(decoder, feats, vocab, beam_size=4, max_len=15, return_k=3)
    for i in range(len(feats)):
        [single] = decode.beam_search(decoder, feats[i:i + 1], vocab, beam_size=4, max_len=15, return_k=3)
        assert [c.tokens for c in batched[i]] == [c.tokens for c in single]
        assert [c.score for c in batched[i]] == [c.score for c in single]
        for a, b in zip(batched[i], single, strict=True):
            assert torch.equal(a.alphas, b.alphas)


def test_the_benchmark_compares_the_batched_search_with_the_library_per_image_one():
    bench = load_benchmark("bench_beam_search")
    assert not hasattr(bench, "reference_beam_search")  # beam search is implemented once, in labutils.decode
    vocab = words_vocab(8)
    decoder = TableDecoder(random_table(vocab, seed=0, end_bias=-1.0), end_ramp=0.3)
    feats = image_features(12, len(vocab), seed=10)
    run = bench.run_once(decoder, vocab, feats, beam=5, max_len=9, repeats=2)
    assert (run["identical_best_captions"], run["images"], run["mismatched_images"]) == (12, 12, [])
    assert run["max_abs_log_prob_difference"] == 0.0 and run["repeats"] == len(run["batched_s_all"]) == 2
    low, high = run["speedup_min_max"]
    assert low <= run["speedup_median"] <= high


def test_first_step_expands_one_beam_so_the_k_best_are_distinct(chain):
    decoder, vocab = chain
    [options] = decode.beam_search(decoder, zero_features(1, len(vocab)), vocab, beam_size=4, max_len=5,
                                   return_k=4)
    assert len({tuple(c.tokens) for c in options}) == 4


# -- termination ----------------------------------------------------------------------------------------------------
def test_every_decoding_function_terminates_when_the_decoder_never_ends():
    vocab = words_vocab(5)
    decoder = NeverEnds(random_table(vocab, seed=4))
    feats = image_features(3, len(vocab), seed=5)
    max_len = 7
    results = {
        "greedy": decode.greedy(decoder, feats, vocab, max_len=max_len),
        "sample": decode.sample(decoder, feats, vocab, generator=0, max_len=max_len),
        "sample_top_p": decode.sample(decoder, feats, vocab, top_p=0.9, top_k=3, generator=0, max_len=max_len),
        "beam": decode.best_of(decode.beam_search(decoder, feats, vocab, beam_size=3, max_len=max_len)),
        "caption_images": decode.caption_images(decoder, feats, vocab, method="beam", max_len=max_len),
    }
    for name, captions in results.items():
        assert len(captions) == 3, name
        for caption in captions:
            assert len(caption.tokens) == max_len and not caption.finished, name
            assert vocab.end_id not in caption.tokens, name
            assert len(caption.text.split()) == max_len, name
            assert caption.alphas.shape == (max_len, feats.size(1)), name
    # Without finished hypotheses beam search returns the best unfinished ones, best first.
    options = decode.beam_search(decoder, feats, vocab, beam_size=3, max_len=max_len, return_k=3)
    for per_image in options:
        assert len(per_image) == 3 and not any(c.finished for c in per_image)
        assert [c.score for c in per_image] == sorted((c.score for c in per_image), reverse=True)


def test_real_decoders_terminate_with_an_end_token_they_never_pick():
    vocab = words_vocab(20)
    torch.manual_seed(0)
    for decoder in (ShowAttendTell(len(vocab), 32, 16, 32, 16), ShowAndTell(len(vocab), 32, 16, 32)):
        with torch.no_grad():
            decoder.fc.bias[vocab.end_id] = -1e4  # <end> effectively impossible
        feats = torch.randn(2, 4, 32)
        for captions in (decode.greedy(decoder, feats, vocab, max_len=6),
                         decode.best_of(decode.beam_search(decoder, feats, vocab, beam_size=3, max_len=6)),
                         decode.sample(decoder, feats, vocab, generator=1, max_len=6)):
            assert [len(c.tokens) for c in captions] == [6, 6]
            assert not any(c.finished for c in captions)


# -- the real decoders (random init) ------------------------------------------------------------------------------
@pytest.fixture(params=["attention", "attention_deep_output", "show_and_tell"])
def real_decoder(request):
    torch.manual_seed(0)
    vocab = words_vocab(30)
    if request.param.startswith("attention"):
        decoder = ShowAttendTell(len(vocab), feature_dim=48, embed_dim=16, hidden_dim=32, attention_dim=16,
                                 deep_output=request.param.endswith("deep_output"))
    else:
        decoder = ShowAndTell(len(vocab), feature_dim=48, embed_dim=16, hidden_dim=32)
    with torch.no_grad():  # make <end> reachable so both finished and cut captions occur
        decoder.fc.bias[vocab.end_id] += 2.5
    return decoder, vocab, torch.randn(6, 9, 48).relu()


def test_real_decoders_batched_beam_equals_single_image(real_decoder):
    decoder, vocab, feats = real_decoder
    batched = decode.beam_search(decoder, feats, vocab, beam_size=5, max_len=12, return_k=2)
    readable = [decode.beam_search_one_image(decoder, f, vocab, beam_size=5, max_len=12) for f in feats]
    assert [b[0].tokens for b in batched] == [r.tokens for r in readable]
    for i in range(len(feats)):
        [single] = decode.beam_search(decoder, feats[i:i + 1], vocab, beam_size=5, max_len=12, return_k=2)
        assert [c.tokens for c in single] == [c.tokens for c in batched[i]]


def test_scores_and_attention_maps_belong_to_the_returned_captions(real_decoder):
    decoder, vocab, feats = real_decoder
    beams = decode.beam_search(decoder, feats, vocab, beam_size=4, max_len=10, return_k=3)
    greedy = decode.greedy(decoder, feats, vocab, max_len=10)
    for i in range(len(feats)):
        for caption in [*beams[i], greedy[i]]:
            log_prob, alphas = forced_log_prob_and_alphas(decoder, feats[i:i + 1], vocab, caption.tokens)
            assert caption.log_prob == pytest.approx(log_prob, abs=1e-4)
            if decoder.uses_attention:
                assert caption.alphas.shape == (len(caption.tokens), feats.size(1))
                torch.testing.assert_close(caption.alphas, alphas, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(caption.alphas.sum(1), torch.ones(len(caption.tokens)))
            else:
                assert caption.alphas is None
            assert caption.text == vocab.decode(caption.tokens)
            assert caption.finished == (caption.tokens[-1] == vocab.end_id)


def test_decoding_uses_eval_mode_and_restores_training_mode(real_decoder):
    decoder, vocab, feats = real_decoder
    decoder.dropout.p = 0.9  # would scramble the logits if dropout were active
    decoder.train()
    first = decode.greedy(decoder, feats, vocab, max_len=8)
    second = decode.greedy(decoder, feats, vocab, max_len=8)
    assert [c.tokens for c in first] == [c.tokens for c in second]
    assert decoder.training and decoder.dropout.training
    # Mixed modes survive too: a frozen part kept in eval mode inside a training model stays in eval mode.
    decoder.dropout.eval()
    decode.beam_search(decoder, feats, vocab, beam_size=2, max_len=4)
    assert decoder.training and not decoder.dropout.training


# -- sampling -----------------------------------------------------------------------------------------------------
def test_sampling_with_one_candidate_is_greedy(real_decoder):
    decoder, vocab, feats = real_decoder
    greedy = [c.tokens for c in decode.greedy(decoder, feats, vocab, max_len=10)]
    for kwargs in ({"top_k": 1}, {"top_p": 1e-4}, {"top_n_schedule": [1]}, {"temperature": 1e-4}):
        sampled = decode.sample(decoder, feats, vocab, generator=3, max_len=10, **kwargs)
        assert [c.tokens for c in sampled] == greedy, kwargs


def test_sampling_is_reproducible_with_a_seed_and_varies_without():
    vocab = words_vocab(10)
    decoder = TableDecoder(random_table(vocab, seed=8) * 0.2)  # flat: many plausible captions
    feats = zero_features(40, len(vocab))
    first = decode.sample(decoder, feats, vocab, generator=123, max_len=6)
    again = decode.sample(decoder, feats, vocab, generator=torch.Generator().manual_seed(123), max_len=6)
    assert [c.tokens for c in first] == [c.tokens for c in again]
    assert len({tuple(c.tokens) for c in first}) > 20
    for caption in first:
        assert caption.log_prob == pytest.approx(
            forced_log_prob_and_alphas(decoder, feats[:1], vocab, caption.tokens)[0], abs=1e-4)


def test_top_n_schedule_is_wide_for_the_first_words_and_narrow_later():
    vocab = words_vocab(12)
    table = torch.zeros(len(vocab), len(vocab))
    table[:, 4:] = torch.linspace(3.0, 0.0, 12).unsqueeze(0)  # word 4 best, then 5, 6, ...: same order always
    table[:, [0, 1, 2, 3]] = NEG_INF  # never end: every caption runs all steps
    decoder = TableDecoder(table)
    rule = decode.wide_then_narrow(wide=6, narrow=2, wide_steps=2)
    captions = decode.sample(decoder, zero_features(300, len(vocab)), vocab, top_n_schedule=rule, generator=0,
                             max_len=5)
    by_step = list(zip(*(c.tokens for c in captions), strict=True))
    for step, tokens in enumerate(by_step):
        allowed = set(range(4, 4 + (6 if step < 2 else 2)))
        assert set(tokens) == allowed, step  # every allowed word drawn (300 draws), nothing outside
    # A list works the same way, its last entry repeating; top_k caps it.
    listed = decode.sample(decoder, zero_features(300, len(vocab)), vocab, top_n_schedule=[6, 6, 2], top_k=4,
                           generator=0, max_len=4)
    assert {c.tokens[0] for c in listed} == set(range(4, 8))
    assert {c.tokens[3] for c in listed} == {4, 5}


def test_filter_logits_top_k_and_nucleus():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = lambda out: torch.isfinite(out[0]).nonzero().squeeze(1).tolist()  # noqa: E731
    assert kept(decode.filter_logits(logits, top_k=2)) == [0, 1]
    assert kept(decode.filter_logits(logits, top_p=0.75)) == [0, 1]  # 0.5 + 0.3 >= 0.75
    assert kept(decode.filter_logits(logits, top_p=0.85)) == [0, 1, 2]
    assert kept(decode.filter_logits(logits, top_p=0.3)) == [0]  # the best word is always kept
    assert kept(decode.filter_logits(logits.flip(1), top_p=0.75)) == [2, 3]  # works on unsorted logits
    assert kept(decode.filter_logits(logits, top_k=3, top_p=0.6)) == [0, 1]


# -- convenience and errors -------------------------------------------------------------------------------------------
def test_caption_images_batches_and_predict_maps_ids(real_decoder):
    decoder, vocab, feats = real_decoder
    whole = decode.caption_images(decoder, feats, vocab, method="beam", beam_size=3, max_len=9)
    chunked = decode.caption_images(decoder, feats, vocab, method="beam", beam_size=3, max_len=9, batch_size=4)
    assert [c.tokens for c in whole] == [c.tokens for c in chunked]
    ids = [101, 205, 307, 412, 520, 611]
    source = dict(zip(ids, feats, strict=True)).__getitem__
    predicted = decode.predict(decoder, source, ids, vocab, method="greedy", batch_size=4, max_len=9)
    assert list(predicted) == ids
    assert [c.tokens for c in predicted.values()] == [c.tokens for c in decode.greedy(decoder, feats, vocab, 9)]
    one = decode.caption_images(decoder, feats[0], vocab, method="sample", generator=0, max_len=9)
    assert len(one) == 1 and str(one[0]) == one[0].text


def test_clear_errors_for_bad_arguments(real_decoder):
    decoder, vocab, feats = real_decoder
    with pytest.raises(ValueError, match="beam_size"):
        decode.beam_search(decoder, feats, vocab, beam_size=0)
    with pytest.raises(ValueError, match="return_k"):
        decode.beam_search(decoder, feats, vocab, beam_size=2, return_k=3)
    with pytest.raises(ValueError, match="temperature"):
        decode.sample(decoder, feats, vocab, temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        decode.sample(decoder, feats, vocab, top_p=1.5)
    with pytest.raises(ValueError, match="positions, channels"):
        decode.greedy(decoder, feats.flatten(), vocab)
    with pytest.raises(ValueError, match="method"):
        decode.caption_images(decoder, feats, vocab, method="viterbi")
    with pytest.raises(ValueError, match="top_n_schedule"):
        decode.sample(decoder, feats, vocab, top_n_schedule=[])


# -- the readable one-image versions notebook 08 shows ----------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_readable_beam_search_equals_the_batched_one(seed):
    vocab = words_vocab(8)
    table = random_table(vocab, seed=seed, end_bias=-1.0)
    feats = image_features(12, len(vocab), seed=seed + 10)
    # Endings at varied steps exercise retired slots; NeverEnds exercises the max_len fallback (unfinished).
    for decoder in (TableDecoder(table, end_ramp=0.3), NeverEnds(table)):
        batched = decode.best_of(decode.beam_search(decoder, feats, vocab, beam_size=5, max_len=9))
        readable = [decode.beam_search_one_image(decoder, f, vocab, beam_size=5, max_len=9) for f in feats]
        assert [c.tokens for c in readable] == [c.tokens for c in batched]
        assert [c.score for c in readable] == [c.score for c in batched]
        assert [c.finished for c in readable] == [c.finished for c in batched]
        assert any(c.finished for c in batched) == (not isinstance(decoder, NeverEnds))


def test_readable_decoders_equal_the_batched_ones_on_real_decoders(real_decoder):
    decoder, vocab, feats = real_decoder
    batched_beam = decode.best_of(decode.beam_search(decoder, feats, vocab, beam_size=4, max_len=12))
    readable_beam = [decode.beam_search_one_image(decoder, f, vocab, beam_size=4, max_len=12) for f in feats]
    assert [c.tokens for c in readable_beam] == [c.tokens for c in batched_beam]
    assert [c.score for c in readable_beam] == pytest.approx([c.score for c in batched_beam], abs=1e-5)
    batched_greedy = decode.greedy(decoder, feats, vocab, max_len=12)
    readable_greedy = [decode.greedy_one_image(decoder, f, vocab, max_len=12) for f in feats]
    assert [c.tokens for c in readable_greedy] == [c.tokens for c in batched_greedy]
    assert [c.log_prob for c in readable_greedy] == pytest.approx([c.log_prob for c in batched_greedy], abs=1e-5)
    assert [c.finished for c in readable_greedy] == [c.finished for c in batched_greedy]


def test_readable_versions_on_the_hand_made_chain(chain):
    decoder, vocab = chain
    features = zero_features(1, len(vocab))[0]
    greedy = decode.greedy_one_image(decoder, features, vocab)
    assert (greedy.text, greedy.finished) == ("a c", True)  # the c/d tie goes to the lower id, as in `greedy`
    assert greedy.log_prob == pytest.approx(math.log(0.5 * 0.35), abs=1e-6)
    best = decode.beam_search_one_image(decoder, features, vocab, beam_size=2)
    assert (best.text, best.finished) == ("b", True)  # the caption greedy misses
    assert best.score == pytest.approx(math.log(0.4 * 0.9), abs=1e-6)
    cut = decode.greedy_one_image(decoder, features, vocab, max_len=1)
    assert (cut.words, cut.finished) == (["a"], False)


def test_readable_beam_search_breaks_ties_like_the_batched_one():
    """start -> a;  a -> c .5 | d .5;  c, d -> end: "a c" and "a d" tie, and the lower word id wins in both."""
    vocab = Vocabulary(["a", "b", "c", "d"])
    a, c, d = (vocab[w] for w in "acd")
    table = log_table({vocab.start_id: {a: 1.0}, a: {c: 0.5, d: 0.5}, c: {vocab.end_id: 1.0},
                       d: {vocab.end_id: 1.0}}, len(vocab))
    decoder, features = TableDecoder(table), zero_features(1, len(vocab))
    [batched] = decode.beam_search(decoder, features, vocab, beam_size=2)
    readable = decode.beam_search_one_image(decoder, features[0], vocab, beam_size=2)
    assert readable.text == batched[0].text == "a c"
    assert readable.score == batched[0].score


def test_no_search_emits_unk_pad_or_start_even_when_the_model_prefers_them():
    """A model trained with <unk> targets will rank <unk> first at times; every decoding function must take the
    best real word instead (else `vocab.decode` drops it and leaves a caption like "a dog is jumping over a")."""
    vocab = Vocabulary(["dog", "runs"])
    dog, runs, end = vocab["dog"], vocab["runs"], vocab.end_id
    specials = {vocab.unk_id: 0.5, vocab.pad_id: 0.2, vocab.start_id: 0.1}
    # "dog runs <end>" is also the most likely caption of real words (0.18 x 0.19 x 0.2, against "runs <end>"
    # 0.02 x 0.2 and "dog <end>" 0.18 x 0.01), so beam search must find it too.
    table = log_table({vocab.start_id: {**specials, dog: 0.18, runs: 0.02},
                       dog: {**specials, runs: 0.19, end: 0.01}, runs: {**specials, end: 0.2}}, len(vocab))
    decoder, features = TableDecoder(table), zero_features(1, len(vocab))
    found = {
        "greedy": decode.greedy(decoder, features, vocab, max_len=6)[0],
        "beam": decode.beam_search(decoder, features, vocab, beam_size=3, max_len=6)[0][0],
        # top_k=1 keeps the most likely word left: a real one only if the specials went first
        "sample_top_1": decode.sample(decoder, features, vocab, top_k=1, generator=0, max_len=6)[0],
        "greedy_one_image": decode.greedy_one_image(decoder, features[0], vocab, max_len=6),
        "beam_one_image": decode.beam_search_one_image(decoder, features[0], vocab, beam_size=3, max_len=6),
    }
    for name, caption in found.items():
        assert caption.tokens == [dog, runs, end], name
        assert caption.finished, name
        assert caption.log_prob == pytest.approx(math.log(0.18 * 0.19 * 0.2), abs=1e-5), name  # the model's own
    for seed in range(40):  # plain sampling draws every real word at times, and never a special one
        tokens = decode.sample(decoder, features, vocab, generator=seed, max_len=6)[0].tokens
        assert set(tokens) <= {dog, runs, end} and tokens[-1] == end, (seed, tokens)


def test_draw_follows_each_rows_probabilities_and_never_draws_a_word_of_probability_zero():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0],
                          [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
                          [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                          [2.0, 0.0, 6.0, 0.0, 0.0, 0.0]])  # [4, V]: the last row not normalised
    n = 50_000
    drawn = decode.draw(probs.repeat(n, 1), torch.Generator().manual_seed(0)).view(n, 4)  # [n, 4]
    counts = torch.stack([torch.bincount(drawn[:, row], minlength=6) for row in range(4)])  # [4, V]
    expected = probs / probs.sum(1, keepdim=True)
    assert torch.equal(counts[expected == 0], torch.zeros_like(counts[expected == 0]))
    assert torch.allclose(counts / n, expected, atol=0.01), counts / n  # 0.01 is > 4 standard deviations here


def test_draw_repeats_with_a_seed_and_stays_on_real_words_at_the_top_of_the_range(monkeypatch):
    probs = torch.softmax(torch.randn(64, 30, generator=torch.Generator().manual_seed(1)), dim=1)
    first = decode.draw(probs, torch.Generator().manual_seed(5))
    assert torch.equal(first, decode.draw(probs, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, decode.draw(probs, torch.Generator().manual_seed(6)))
    # The ends of the uniform range must still land on words that can be drawn: 0 on the first of them, and a
    # number that rounds onto the row's total on the last of them.
    starts_and_ends_in_zero = torch.tensor([[0.0, 0.0, 0.25, 0.75, 0.0]])
    for uniform, word in ((torch.zeros, 2), (torch.ones, 3)):
        monkeypatch.setattr(torch, "rand", lambda *size, fill=uniform, **kwargs: fill(*size, dtype=kwargs["dtype"]))
        assert decode.draw(starts_and_ends_in_zero).tolist() == [word], uniform

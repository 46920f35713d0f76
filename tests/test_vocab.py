"""Tests for labutils.vocab: tokenisation policy, vocabulary order, encode/decode, JSON round trip, coverage."""

import json
from collections import Counter

import pytest
import torch

from labutils.vocab import (
    CoverageStats,
    Vocabulary,
    VocabularyFileError,
    count_words,
    coverage,
    min_freq_table,
    tokenize,
    tokenize_all,
)

CAPTIONS = [
    "A red circle on the left.",
    "Two red circles, above a blue square!",
    "a blue square",
    "the   red  square\n",
]


@pytest.fixture
def vocab():
    return Vocabulary.build(CAPTIONS)


def test_tokenize_lowercases_and_drops_punctuation_and_whitespace():
    assert tokenize("Two Red circles, above a BLUE square!") == ["two", "red", "circles", "above", "a", "blue",
                                                                 "square"]
    assert tokenize("the   red\n square .") == ["the", "red", "square"]
    assert tokenize("") == []


def test_tokenize_uses_spacy_english_rules():
    # spaCy's exceptions split contractions and keep abbreviations whole; a plain str.split() would not.
    assert tokenize("Don't stop") == ["do", "n't", "stop"]
    assert tokenize("a 2-year-old dog") == ["a", "2", "year", "old", "dog"]


def test_tokenize_rejects_non_strings():
    with pytest.raises(TypeError, match="string"):
        tokenize(["a", "list"])


def test_tokenize_all_matches_tokenize():
    assert tokenize_all(CAPTIONS) == [tokenize(c) for c in CAPTIONS]


def test_specials_have_fixed_indices(vocab):
    assert vocab.itos[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert (vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id) == (0, 1, 2, 3)
    assert [Vocabulary.PAD, Vocabulary.START, Vocabulary.END, Vocabulary.UNK] == vocab.itos[:4]


def test_order_is_frequency_then_alphabetical(vocab):
    # counts: red 3, a 3, square 3, blue 2, ... ; ties alphabetical
    counts = count_words(CAPTIONS)
    assert counts["red"] == 3 and counts["a"] == 3 and counts["square"] == 3 and counts["blue"] == 2
    assert vocab.words[:4] == ["a", "red", "square", "blue"]
    assert vocab.words[4:] == sorted(vocab.words[4:], key=lambda w: (-counts[w], w))
    assert len(vocab) == 4 + len(counts)
    # building twice, or from a differently ordered corpus, gives identical indices
    assert Vocabulary.build(list(reversed(CAPTIONS))).itos == vocab.itos


def test_min_freq_drops_rare_words():
    vocab = Vocabulary.build(CAPTIONS, min_freq=2)
    assert vocab.words == ["a", "red", "square", "blue", "the"]
    assert "circle" not in vocab and vocab["circle"] == vocab.unk_id
    assert vocab.min_freq == 2
    with pytest.raises(ValueError, match="min_freq"):
        Vocabulary.build(CAPTIONS, min_freq=0)


def test_encode_adds_specials_and_maps_unknown_words(vocab):
    ids = vocab.encode("A red zebra.")
    assert ids == [vocab.start_id, vocab["a"], vocab["red"], vocab.unk_id, vocab.end_id]
    assert vocab.encode("a red", add_specials=False) == [vocab["a"], vocab["red"]]
    assert vocab.encode(["a", "red"]) == vocab.encode("A red")  # pre-tokenized input


def test_encode_truncates_but_keeps_end(vocab):
    ids = vocab.encode("a red square on the left", max_len=5)
    assert len(ids) == 5
    assert ids == [vocab.start_id, vocab["a"], vocab["red"], vocab["square"], vocab.end_id]
    assert vocab.encode("a red", max_len=10) == vocab.encode("a red")  # short captions untouched
    assert vocab.encode("a red", max_len=2) == [vocab.start_id, vocab.end_id]
    with pytest.raises(ValueError, match="max_len"):
        vocab.encode("a red", max_len=1)


def test_decode_stops_at_end_and_drops_specials(vocab):
    ids = [vocab.start_id, vocab["red"], vocab.unk_id, vocab["circle"], vocab.end_id, vocab["blue"], 0, 0]
    assert vocab.decode(ids) == "red circle"
    assert vocab.decode(ids, keep_unk=True) == "red <unk> circle"
    assert vocab.decode(torch.tensor(ids)) == "red circle"
    assert vocab.decode(tuple(ids)) == "red circle"
    assert vocab.decode([vocab["red"], vocab.pad_id, vocab["circle"]]) == "red circle"  # no <end>: all of it
    assert vocab.lookup_tokens(ids[:3]) == ["<start>", "red", "<unk>"]


def test_decode_errors_are_clear(vocab):
    with pytest.raises(ValueError, match="outside this vocabulary"):
        vocab.decode([vocab.start_id, len(vocab) + 5])
    with pytest.raises(ValueError, match="decode_batch"):
        vocab.decode([[1, 2], [1, 2]])


def test_decode_batch(vocab):
    batch = torch.tensor([vocab.encode("a red square"), vocab.encode("the blue") + [0]])
    assert vocab.decode_batch(batch) == ["a red square", "the blue"]


def test_round_trip_of_known_captions(vocab):
    for caption in CAPTIONS:
        assert vocab.decode(vocab.encode(caption)) == " ".join(tokenize(caption))


def test_dict_round_trip_is_plain_json(vocab, tmp_path):
    data = vocab.to_dict()
    assert json.loads(json.dumps(data)) == data
    again = Vocabulary.from_dict(data)
    assert again == vocab and again.counts == vocab.counts and again.min_freq == vocab.min_freq
    # inside a checkpoint: loadable with weights_only=True because it is plain types only
    torch.save({"vocab": data}, tmp_path / "ckpt.pt")
    assert Vocabulary.from_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["vocab"]) == vocab


def test_save_load_round_trip(vocab, tmp_path):
    path = vocab.save(tmp_path / "sub" / "vocab.json")
    loaded = Vocabulary.load(path)
    assert loaded.itos == vocab.itos
    assert loaded.encode("a red zebra") == vocab.encode("a red zebra")
    assert not list(path.parent.glob("*.tmp"))


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="build one"):
        Vocabulary.load(tmp_path / "nope.json")


def test_load_corrupt_or_foreign_files(tmp_path, vocab):
    bad = tmp_path / "bad.json"
    bad.write_text('{"itos": ["<pad>", ', encoding="utf-8")
    with pytest.raises(VocabularyFileError, match="not valid JSON"):
        Vocabulary.load(bad)
    bad.write_bytes(b"\x80\x03PK pickle bytes")
    with pytest.raises(ValueError, match="not valid JSON"):
        Vocabulary.load(bad)
    bad.write_text(json.dumps({"word2idx": {"a": 0}}), encoding="utf-8")
    with pytest.raises(VocabularyFileError, match="not a labutils vocabulary"):
        Vocabulary.load(bad)
    damaged = vocab.to_dict()
    damaged["itos"] = ["a", "<pad>", "<start>", "<end>", "<unk>"]
    with pytest.raises(VocabularyFileError, match="starting with"):
        Vocabulary.from_dict(damaged)
    damaged["itos"] = list(Vocabulary.SPECIALS) + ["a", "a"]
    with pytest.raises(VocabularyFileError, match="repeats"):
        Vocabulary.from_dict(damaged)
    damaged = dict(vocab.to_dict(), version=99)
    with pytest.raises(VocabularyFileError, match="version 99"):
        Vocabulary.from_dict(damaged)


def test_coverage_counts_known_tokens():
    counter = Counter({"a": 6, "red": 3, "zebra": 1})
    vocab = Vocabulary.from_counter(counter, min_freq=2)
    stats = coverage(vocab, counter)
    assert isinstance(stats, CoverageStats)
    assert (stats.n_tokens, stats.n_known, stats.n_types, stats.n_dropped_words) == (10, 9, 3, 1)
    assert stats.coverage == pytest.approx(0.9) and stats.oov_rate == pytest.approx(0.1)
    assert stats.to_dict()["oov_rate"] == pytest.approx(0.1)
    # from caption strings: the same numbers as from the counter
    assert coverage(vocab, ["A red zebra", "a a a a a, red red!"]) == CoverageStats(10, 9, 3, 1)


def test_min_freq_table():
    counter = Counter({"a": 10, "red": 5, "blue": 2, "zebra": 1, "okapi": 1})
    table = min_freq_table(counter, values=(1, 2, 5, 11))
    assert list(table.index) == [1, 2, 5, 11]
    assert table["vocab_size"].tolist() == [9, 7, 6, 4]
    assert table["words_dropped"].tolist() == [0, 2, 3, 5]
    assert table["token_coverage_%"].tolist() == pytest.approx([100.0, 100 * 17 / 19, 100 * 15 / 19, 0.0], abs=1e-3)
    assert (table["token_coverage_%"] + table["oov_rate_%"]).tolist() == pytest.approx([100.0] * 4)

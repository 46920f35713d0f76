"""The Transformer caption decoder: step() == forward(), causality, the key/value cache, decoding, checkpoints."""

import pytest
import torch
import torch.nn.functional as F
from decoder_inputs import B, C, P, T, V, garbage_after_the_end, make_inputs

from labutils import checkpoint as ckpt
from labutils import decode, decoders, solutions, train
from labutils.decoders import CaptionTransformer, build_decoder, from_spec
from labutils.vocab import Vocabulary


@pytest.fixture(autouse=True, scope="module")
def one_thread(single_torch_thread):
    """Run this module on one torch thread (see tests/conftest.py)."""
    yield


def _model(seed=0, **changes):
    torch.manual_seed(seed)
    settings = dict(dim=16, num_layers=2, num_heads=4, dropout=0.2, max_len=T, num_positions=P, feature_norm=True)
    model = CaptionTransformer(V, C, **{**settings, **changes})
    if model.grid_position is not None:
        with torch.no_grad():  # positions start at zero; random ones make the tests see whether they are used
            model.grid_position.normal_()
    return model


def _teacher_steps(model, features, captions):
    """Feed the teacher's tokens through init_state + step: logits [B, T-1, V], alphas [B, T-1, P], last state."""
    state = model.init_state(features)
    logits, alphas = [], []
    for t in range(captions.size(1) - 1):
        step_logits, state, alpha = model.step(captions[:, t], state)
        logits.append(step_logits)
        alphas.append(alpha)
    return torch.stack(logits, dim=1), torch.stack(alphas, dim=1), state


def test_shapes_and_state_layout():
    model = _model()
    features, captions, lengths = make_inputs()
    out = model(features, captions, lengths)
    assert out.logits.shape == (B, T - 1, V) and out.alphas.shape == (B, T - 1, P)
    state = model.init_state(features)
    assert [t.shape for t in state] == ([(B, 4, P, 4)] * 2 + [(B, 4, 0, 4)] * 2) * 2, "four tensors per layer"
    logits, new_state, alpha = model.step(captions[:, 0], state)
    assert logits.shape == (B, V) and alpha.shape == (B, P)
    assert [t.shape for t in new_state] == ([(B, 4, P, 4)] * 2 + [(B, 4, 1, 4)] * 2) * 2, "one more word cached"
    assert all(new_state[i] is state[i] for i in (0, 1, 4, 5)), "the memory passes on untouched (beam search " \
                                                                "reorders only what changes)"
    assert model.last_cross_attention.shape == (B, 2, 4, P)
    assert model.cross_attention_maps(features, captions, lengths).shape == (B, 2, 4, T - 1, P)


def test_step_loop_equals_teacher_forced_forward():
    model = _model().eval()
    features, captions, lengths = make_inputs(seed=3)
    with torch.no_grad():
        out = model(features, captions, lengths)
        logits, alphas, _ = _teacher_steps(model, features, captions)
    mask = decoders.valid_step_mask(lengths, T - 1)
    torch.testing.assert_close(logits[mask], out.logits[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(alphas[mask], out.alphas[mask], atol=1e-6, rtol=0)


def test_attention_is_the_mean_over_heads_and_layers_sums_to_one_and_is_zero_when_padded():
    model = _model().eval()  # dropout would make the two passes differ
    features, captions, lengths = make_inputs()
    out = model(features, captions, lengths)
    maps = model.cross_attention_maps(features, captions, lengths)
    torch.testing.assert_close(out.alphas, maps.mean(dim=(1, 2)))
    mask = decoders.valid_step_mask(lengths, T - 1)
    torch.testing.assert_close(maps.sum(dim=4)[mask.unsqueeze(1).unsqueeze(1).expand(-1, 2, 4, -1)],
                               torch.ones(int(mask.sum()) * 8))
    assert torch.count_nonzero(out.alphas[~mask]) == 0 and torch.count_nonzero(maps.permute(0, 3, 1, 2, 4)[~mask]) == 0
    _, _, alpha = model.step(captions[:, 0], model.init_state(features))
    torch.testing.assert_close(alpha, model.last_cross_attention.mean(dim=(1, 2)))
    torch.testing.assert_close(alpha.sum(dim=1), torch.ones(B))


def test_causal_mask_lets_word_t_see_words_up_to_t_only():
    for steps in (1, 2, 5):
        want = torch.tensor([[j <= t for j in range(steps)] for t in range(steps)])  # row t: the query word
        mask = decoders.causal_mask(steps)
        assert mask.dtype == torch.bool and torch.equal(mask, want)
        assert torch.equal(solutions.causal_mask(steps), mask), "notebook 10's fallback must be the library's mask"
    assert decoders.causal_mask(3, device="meta").device.type == "meta"  # built where the words are


def test_a_changed_word_changes_no_earlier_prediction():
    model = _model().eval()
    features, captions, lengths = make_inputs()
    lengths = torch.full((B,), T)
    for t in range(1, T - 1):
        changed = captions.clone()
        changed[:, t] = (captions[:, t] + 1 - 4) % (V - 4) + 4  # another word at input position t
        with torch.no_grad():
            a, b = model(features, captions, lengths), model(features, changed, lengths)
        torch.testing.assert_close(a.logits[:, :t], b.logits[:, :t], atol=1e-6, rtol=0)
        torch.testing.assert_close(a.alphas[:, :t], b.alphas[:, :t], atol=1e-6, rtol=0)
        assert not torch.allclose(a.logits[:, t], b.logits[:, t], atol=1e-3), "word t must matter from step t on"


def test_tokens_after_the_end_do_not_change_valid_steps():
    model = _model().eval()
    features, captions, lengths = make_inputs()
    a, b = model(features, captions, lengths), model(features, garbage_after_the_end(captions, lengths), lengths)
    mask = decoders.valid_step_mask(lengths, T - 1)
    torch.testing.assert_close(a.logits[mask], b.logits[mask], atol=1e-6, rtol=0)
    torch.testing.assert_close(a.alphas, b.alphas, atol=1e-6, rtol=0)
    targets = captions[:, 1:].reshape(-1)
    torch.testing.assert_close(F.cross_entropy(a.logits.reshape(-1, V), targets, ignore_index=0),
                               F.cross_entropy(b.logits.reshape(-1, V), targets, ignore_index=0))


def test_step_projects_only_the_new_word_and_the_memory_once():
    model = _model().eval()
    features, captions, _ = make_inputs()
    memory_calls, key_rows = [], []
    model.memory_proj.register_forward_hook(lambda *args: memory_calls.append(1))
    model.layers[0].self_attention.key.register_forward_hook(lambda m, inputs, out: key_rows.append(inputs[0].size(1)))
    state = model.init_state(features)
    for t in range(4):
        _, state, _ = model.step(captions[:, t], state)
    assert len(memory_calls) == 1, "init_state projects the grid once; step() reuses its keys and values"
    assert key_rows == [1, 1, 1, 1], "each step computes the keys of its own word only (the rest are cached)"


def test_state_can_be_reordered_for_beam_search():
    model = _model().eval()
    features, captions, _ = make_inputs()
    order = torch.tensor([2, 0, 0, 3])
    with torch.no_grad():
        state = model.init_state(features)
        reordered = tuple(t.index_select(0, order) for t in state)  # the empty cache too
        logits, _, _ = model.step(captions[order, 0], reordered)
        full, state, _ = model.step(captions[:, 0], state)
        torch.testing.assert_close(logits, full[order], atol=1e-6, rtol=0)
        _, state, _ = model.step(captions[:, 1], state)
        reordered = tuple(t.index_select(0, order) for t in state)
        logits, _, alpha = model.step(captions[order, 2], reordered)
        full, _, full_alpha = model.step(captions[:, 2], state)
    torch.testing.assert_close(logits, full[order], atol=1e-6, rtol=0)
    torch.testing.assert_close(alpha, full_alpha[order], atol=1e-6, rtol=0)


def test_position_embeddings_make_the_grid_order_matter():
    features, captions, lengths = make_inputs()
    mirrored = features[:, torch.arange(P).flip(0)]
    placed, plain = _model().eval(), _model(num_positions=None).eval()
    with torch.no_grad():
        same = plain(features, captions, lengths).logits, plain(mirrored, captions, lengths).logits
        differ = placed(features, captions, lengths).logits, placed(mirrored, captions, lengths).logits
    torch.testing.assert_close(*same, atol=1e-5, rtol=0)  # without positions attention cannot tell a mirrored grid
    assert not torch.allclose(*differ, atol=1e-3)
    with pytest.raises(ValueError, match="grid positions"):
        placed(features[:, :3], captions, lengths)


def test_clear_errors_for_captions_past_the_position_embeddings_and_for_bad_sizes():
    model = _model(max_len=3).eval()
    features, captions, lengths = make_inputs()
    with pytest.raises(ValueError, match="position embeddings for 3 words"):
        model(features, captions, lengths)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        CaptionTransformer(V, C, dim=10, num_heads=4)
    with pytest.raises(ValueError, match="grid features"):
        model(features.mean(dim=1), captions, lengths)


# -- decoding ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def captioner():
    """A small decoder fitted for a moment to captions of 3 to 12 tokens, so that searches end at varied steps
    and some are cut by max_len (a random one ends every image's caption alike)."""
    vocab = Vocabulary([f"w{i}" for i in range(30)])
    torch.manual_seed(0)
    model = CaptionTransformer(len(vocab), 12, dim=16, num_layers=2, num_heads=2, dropout=0.1, max_len=12,
                               num_positions=9, feature_norm=True)
    feats, lengths = torch.randn(6, 9, 12), torch.tensor([3, 5, 7, 9, 12, 12])
    captions = torch.randint(4, len(vocab), (6, 12))
    captions[:, 0] = vocab.start_id
    for row, length in enumerate(lengths.tolist()):
        captions[row, length - 1], captions[row, length:] = vocab.end_id, vocab.pad_id
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(25):
        logits = model(feats, captions, lengths).logits  # [6, 11, V]
        loss = F.cross_entropy(logits.reshape(-1, len(vocab)), captions[:, 1:].reshape(-1), ignore_index=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), vocab, feats


@pytest.mark.parametrize("beam_size", [1, 3, 5])
def test_batched_beam_search_equals_the_readable_one(captioner, beam_size):
    model, vocab, feats = captioner
    batched = decode.best_of(decode.beam_search(model, feats, vocab, beam_size=beam_size, max_len=10))
    readable = [decode.beam_search_one_image(model, f, vocab, beam_size=beam_size, max_len=10) for f in feats]
    assert [c.tokens for c in batched] == [c.tokens for c in readable]
    assert [c.score for c in batched] == pytest.approx([c.score for c in readable], abs=1e-5)
    assert [c.finished for c in batched] == [c.finished for c in readable]
    assert any(c.finished for c in batched) and len({len(c) for c in batched}) > 1
    assert all(c.alphas.shape == (len(c), 9) for c in batched)


def test_greedy_and_sampling_run_and_agree_with_the_readable_greedy(captioner):
    model, vocab, feats = captioner
    model.train()
    greedy = decode.greedy(model, feats, vocab, max_len=10)
    assert model.training, "decoding restores the training mode"
    readable = [decode.greedy_one_image(model, f, vocab, max_len=10) for f in feats]
    assert [c.tokens for c in greedy] == [c.tokens for c in readable]
    assert [c.log_prob for c in greedy] == pytest.approx([c.log_prob for c in readable], abs=1e-5)
    assert all(c.alphas.shape == (len(c), 9) for c in greedy)
    samples = decode.sample(model, feats, vocab, generator=0, max_len=10)
    assert samples and [c.tokens for c in samples] == [c.tokens for c in decode.sample(model, feats, vocab,
                                                                                        generator=0, max_len=10)]
    assert decode.sample(model, feats, vocab, top_k=1, max_len=10)[0].tokens == greedy[0].tokens


def test_decoding_longer_than_the_position_embeddings_runs_and_keeps_the_first_words(captioner):
    model, vocab, feats = captioner  # position embeddings for 12 words
    bias = model.fc.bias.detach().clone()
    with torch.no_grad():
        model.fc.bias[vocab.end_id] = -100.0  # never ends: every caption runs to max_len
    try:
        short, long = decode.greedy(model, feats, vocab, max_len=12), decode.greedy(model, feats, vocab, max_len=16)
        beams = decode.beam_search(model, feats, vocab, beam_size=3, max_len=16)
    finally:
        with torch.no_grad():
            model.fc.bias.copy_(bias)
    assert all(len(c) == 16 and not c.finished for c in long) and all(len(b[0]) == 16 for b in beams)
    assert [c.tokens for c in short] == [c.tokens[:12] for c in long]


# -- building, saving, learning ------------------------------------------------------------------------------------
def test_build_decoder_reads_the_config_and_the_spec_rebuilds_it(tmp_path):
    from labutils import get_config

    cfg = get_config("quick")
    built = build_decoder("transformer", V, C, cfg)
    assert isinstance(built, CaptionTransformer) and isinstance(build_decoder("TFM", V, C, cfg), CaptionTransformer)
    assert (built.dim, built.num_layers, built.num_heads, built.ffn_dim) == (
        cfg.transformer_dim, cfg.transformer_layers, cfg.num_heads, 4 * cfg.transformer_dim)
    assert len(built.layers) == cfg.transformer_layers and built.layers[0].self_attention.heads == cfg.num_heads
    assert built.max_len == cfg.max_caption_len and built.word_position.num_embeddings == cfg.max_caption_len
    assert built.grid_position.shape == (cfg.grid_size ** 2, cfg.transformer_dim)
    assert built.feature_norm is not None and built.dropout.p == cfg.dropout
    small = build_decoder("transformer", V, C, cfg.replace(transformer_dim=24, num_heads=3, transformer_layers=1,
                                                            position_embedding=False, feature_norm=False))
    assert (small.dim, small.num_heads, len(small.layers), small.grid_position, small.feature_norm) == (
        24, 3, 1, None, None)


def test_checkpoint_round_trip_gives_the_same_outputs(tmp_path):
    model = _model(dim=8, num_heads=2, ffn_dim=12).eval()
    features, captions, lengths = make_inputs()
    spec = train.decoder_spec(model)
    assert spec["kind"] == "transformer" and spec["ffn_dim"] == 12
    rebuilt = from_spec(spec)
    assert train.decoder_spec(rebuilt) == spec
    rebuilt.load_state_dict(model.state_dict())
    want = model(features, captions, lengths)
    assert torch.equal(rebuilt.eval()(features, captions, lengths).logits, want.logits)
    vocab = Vocabulary([f"w{i}" for i in range(V - 4)])
    path = ckpt.save_checkpoint(tmp_path / "transformer.pt", model.state_dict(), vocab, {}, decoder=spec)
    loaded = train.decoder_from_checkpoint(ckpt.load_checkpoint(path))
    assert isinstance(loaded, CaptionTransformer) and not loaded.training
    assert torch.equal(loaded(features, captions, lengths).logits, want.logits)


def test_a_few_optimisation_steps_lower_the_training_loss():
    model = _model(dropout=0.0).train()
    features, captions, lengths = make_inputs()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        logits = model(features, captions, lengths).logits  # [B, T-1, V]
        loss = F.cross_entropy(logits.reshape(-1, V), captions[:, 1:].reshape(-1), ignore_index=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], f"the loss went from {losses[0]:.3f} to {losses[-1]:.3f} only"

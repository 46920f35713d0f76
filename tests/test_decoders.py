"""Decoders: shapes, masking of padded steps, attention sums, step() == forward(), the penalty, the factory."""

import pytest
import torch
from decoder_inputs import B, C, P, T, V, garbage_after_the_end, make_inputs

from labutils import decoders
from labutils.decoders import ShowAndTell, ShowAttendTell, build_decoder, doubly_stochastic_penalty, from_spec


def _models():
    torch.manual_seed(0)
    return {
        "show_tell_lstm": ShowAndTell(V, C, embed_dim=8, hidden_dim=12, dropout=0.2),
        "show_tell_gru2": ShowAndTell(V, C, embed_dim=8, hidden_dim=12, num_layers=2, rnn="gru", dropout=0.2),
        "show_tell_lstm2": ShowAndTell(V, C, embed_dim=8, hidden_dim=12, num_layers=2, dropout=0.2),
        "attention": ShowAttendTell(V, C, embed_dim=8, hidden_dim=12, attention_dim=9, dropout=0.2),
        "attention_deep_pos": ShowAttendTell(V, C, embed_dim=8, hidden_dim=12, attention_dim=9, dropout=0.2,
                                             deep_output=True, num_positions=P, feature_norm=True, adapter_dim=7),
    }


MODELS = list(_models())


@pytest.mark.parametrize("name", MODELS)
def test_forward_and_step_shapes(name):
    model = _models()[name]
    features, captions, lengths = make_inputs()
    out = model(features, captions, lengths)
    assert out.logits.shape == (B, T - 1, V)
    assert model.vocab_size == V
    if model.uses_attention:
        assert out.alphas.shape == (B, T - 1, P)
    else:
        assert out.alphas is None
    state = model.init_state(features)
    assert all(t.size(0) == B for t in state), "every state tensor must be batch-first"
    logits, new_state, alpha = model.step(captions[:, 0], state)
    assert logits.shape == (B, V)
    assert [t.shape for t in new_state] == [t.shape for t in state]
    assert (alpha.shape == (B, P)) if model.uses_attention else alpha is None


def test_show_and_tell_state_layout():
    model = _models()["show_tell_gru2"]
    (h,) = model.init_state(make_inputs()[0])
    assert h.shape == (B, 2, 12)
    h_c = _models()["show_tell_lstm2"].init_state(make_inputs()[0])
    assert [t.shape for t in h_c] == [(B, 2, 12), (B, 2, 12)]


@pytest.mark.parametrize("name", MODELS)
def test_tokens_after_the_end_do_not_change_valid_steps(name):
    model = _models()[name].eval()
    features, captions, lengths = make_inputs()
    a, b = model(features, captions, lengths), model(features, garbage_after_the_end(captions, lengths), lengths)
    mask = decoders.valid_step_mask(lengths, T - 1)
    assert torch.allclose(a.logits[mask], b.logits[mask], atol=1e-6)
    loss = torch.nn.functional.cross_entropy(a.logits.reshape(-1, V), captions[:, 1:].reshape(-1), ignore_index=0)
    loss_b = torch.nn.functional.cross_entropy(b.logits.reshape(-1, V), captions[:, 1:].reshape(-1), ignore_index=0)
    assert torch.allclose(loss, loss_b)


@pytest.mark.parametrize("name", MODELS)
def test_step_loop_equals_teacher_forced_forward(name):
    model = _models()[name].eval()
    features, captions, lengths = make_inputs(seed=3)
    with torch.no_grad():
        out = model(features, captions, lengths)
        state = model.init_state(features)
        logits, alphas = [], []
        for t in range(T - 1):
            step_logits, state, alpha = model.step(captions[:, t], state)
            logits.append(step_logits)
            alphas.append(alpha)
    logits = torch.stack(logits, dim=1)
    mask = decoders.valid_step_mask(lengths, T - 1)
    assert torch.allclose(logits[mask], out.logits[mask], atol=1e-5)
    if model.uses_attention:
        assert torch.allclose(torch.stack(alphas, dim=1)[mask], out.alphas[mask], atol=1e-6)


@pytest.mark.parametrize("name", ["attention", "attention_deep_pos"])
def test_attention_weights_sum_to_one_and_padding_is_zero(name):
    model = _models()[name]
    features, captions, lengths = make_inputs()
    alphas = model(features, captions, lengths).alphas
    mask = decoders.valid_step_mask(lengths, T - 1)
    sums = alphas.sum(dim=2)
    assert torch.allclose(sums[mask], torch.ones(int(mask.sum())), atol=1e-5)
    assert torch.count_nonzero(alphas[~mask]) == 0
    assert (alphas >= 0).all()
    _, _, alpha = model.step(captions[:, 0], model.init_state(features))
    assert torch.allclose(alpha.sum(dim=1), torch.ones(B), atol=1e-5)


def test_encoder_projection_is_computed_once_per_batch():
    model = _models()["attention"]
    calls = []
    model.encoder_att.register_forward_hook(lambda *args: calls.append(1))
    features, captions, lengths = make_inputs()
    model(features, captions, lengths)
    assert len(calls) == 1, "forward must project the features once, not at every time step"
    state = model.init_state(features)
    for t in range(3):
        _, state, _ = model.step(captions[:, t], state)
    assert len(calls) == 2, "init_state projects once; step() reuses the projection stored in the state"


def test_state_can_be_reordered_for_beam_search():
    model = _models()["attention"].eval()
    features, captions, _ = make_inputs()
    order = torch.tensor([2, 0, 0, 3])
    with torch.no_grad():
        state = model.init_state(features)
        _, state, _ = model.step(captions[:, 0], state)
        reordered = tuple(t.index_select(0, order) for t in state)
        logits, _, _ = model.step(captions[order, 1], reordered)
        full, _, _ = model.step(captions[:, 1], state)
    assert torch.allclose(logits, full[order], atol=1e-6)


def test_doubly_stochastic_penalty_matches_the_formula():
    alphas = torch.zeros(2, 3, 2)
    alphas[0] = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.2, 0.8]])  # length 4: 3 valid steps
    alphas[1, 0] = torch.tensor([0.25, 0.75])  # length 2: 1 valid step
    alphas[1, 1:] = 0.5  # padded steps: must be ignored even if not zeroed
    lengths = torch.tensor([4, 2])
    # image 0: sums (1.7, 1.3) -> (0.49 + 0.09); image 1: sums (0.25, 0.75) -> (0.5625 + 0.0625); mean of 4
    expected = 2.0 * (0.49 + 0.09 + 0.5625 + 0.0625) / 4
    got = doubly_stochastic_penalty(alphas, lengths, alpha_c=2.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_penalty_is_zero_when_every_position_gets_total_attention_one():
    alphas = torch.eye(3).unsqueeze(0)  # step t looks only at position t: each position's total is 1
    assert doubly_stochastic_penalty(alphas, torch.tensor([4])).item() == pytest.approx(0.0)


def test_penalty_gradient_reaches_the_attention_layers():
    model = _models()["attention"]
    features, captions, lengths = make_inputs()
    out = model(features, captions, lengths)
    doubly_stochastic_penalty(out.alphas, lengths).backward()
    assert model.full_att.weight.grad.abs().sum() > 0
    assert model.fc.weight.grad is None  # the penalty does not involve the word predictions


def test_build_decoder_reads_sizes_from_a_config():
    from labutils import get_config

    cfg = get_config("quick", embed_dim=8, hidden_dim=16, attention_dim=4, dropout=0.1)
    sat = build_decoder("attention", V, C, cfg)
    assert isinstance(sat, ShowAttendTell) and sat.encoder_att.out_features == 4 and sat.hidden_dim == 16
    # the lab's additions are on by default: LayerNorm, a 1x1 adapter of hidden_dim units, grid_size**2 positions
    assert sat.feature_norm is not None and sat.adapter_dim == 16 and sat.position.shape == (cfg.grid_size**2, 16)
    plain = build_decoder("attention", V, C, cfg.replace(feature_norm=False, adapter=False, position_embedding=False))
    assert plain.feature_norm is None and plain.adapter is None and plain.position is None
    assert plain.lstm.input_size == 8 + C
    nic = build_decoder("show_and_tell", V, C, cfg.replace(rnn="gru", num_layers=2))
    assert isinstance(nic, ShowAndTell) and nic.rnn_type == "gru" and nic.num_layers == 2
    assert isinstance(build_decoder("SAT", V, C, cfg), ShowAttendTell)
    with pytest.raises(ValueError, match="Unknown decoder kind"):
        build_decoder("perceiver", V, C, cfg)
    with pytest.raises(TypeError, match="takes a LabConfig"):  # one channel: no dicts of settings beside it
        build_decoder("attention", V, C, cfg.to_dict())


def test_from_spec_rebuilds_the_same_decoder():
    from labutils import get_config
    from labutils.train import decoder_spec

    cfg = get_config("quick", embed_dim=8, hidden_dim=16, attention_dim=4, rnn="gru", num_layers=2, adapter=False)
    for kind in ("attention", "show_and_tell"):
        torch.manual_seed(0)
        built = build_decoder(kind, V, C, cfg)
        torch.manual_seed(0)
        rebuilt = from_spec(decoder_spec(built))
        assert type(rebuilt) is type(built) and decoder_spec(rebuilt) == decoder_spec(built)
        assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), rebuilt.state_dict().values(),
                                                      strict=True))


def test_class_defaults_are_the_configs():
    from labutils.config import QUICK

    sat, nic = ShowAttendTell(V, C), ShowAndTell(V, C)
    assert (sat.embedding.embedding_dim, sat.hidden_dim, sat.encoder_att.out_features, sat.dropout.p) == (
        QUICK.embed_dim, QUICK.hidden_dim, QUICK.attention_dim, QUICK.dropout)
    assert (nic.embedding.embedding_dim, nic.rnn.hidden_size, nic.num_layers, nic.rnn_type, nic.dropout.p) == (
        QUICK.embed_dim, QUICK.hidden_dim, QUICK.num_layers, QUICK.rnn, QUICK.dropout)


def test_bad_inputs_give_one_clear_error():
    model = _models()["attention"]
    features, captions, lengths = make_inputs()
    with pytest.raises(ValueError, match="grid features"):
        model(features.mean(dim=1), captions, lengths)
    with pytest.raises(ValueError, match="lengths"):
        model(features, captions, torch.tensor([9, 3, 5, 2]))
    with pytest.raises(ValueError, match="rnn must be"):
        ShowAndTell(V, C, rnn="transformer")


def test_position_embedding_makes_the_decoder_see_where_things_are():
    features, captions, lengths = make_inputs()
    swap = torch.arange(P).flip(0)  # the same grid vectors, mirrored
    plain, placed = _models()["attention"].eval(), _models()["attention_deep_pos"].eval()
    with torch.no_grad():
        placed.position.normal_()
        same = plain(features, captions, lengths).logits, plain(features[:, swap], captions, lengths).logits
        differ = placed(features, captions, lengths).logits, placed(features[:, swap], captions, lengths).logits
    assert torch.allclose(*same, atol=1e-5), "without positions, attention cannot tell a mirrored grid apart"
    assert not torch.allclose(*differ, atol=1e-3)
    with pytest.raises(ValueError, match="grid positions"):
        placed(features[:, :3], captions, lengths)


def test_both_attention_decoders_prepare_the_grid_alike_and_keep_their_checkpoint_keys():
    """LayerNorm, then the projection, then the grid positions; the parameter names older checkpoints hold."""
    features = make_inputs()[0] * 3.0 + 1.0  # off unit scale, so a skipped LayerNorm shows
    sat = _models()["attention_deep_pos"].eval()
    torch.manual_seed(0)
    tfm = decoders.CaptionTransformer(V, C, dim=8, num_layers=1, num_heads=2, num_positions=P, feature_norm=True).eval()
    with torch.no_grad():
        sat.position.normal_()
        tfm.grid_position.normal_()
        normed = torch.nn.functional.layer_norm(features, (C,))  # the LayerNorms start as weight 1, bias 0
        torch.testing.assert_close(sat.prepare_features(features), sat.adapter(normed) + sat.position)
        torch.testing.assert_close(tfm.memory(features), tfm.memory_proj(normed) + tfm.grid_position)
    assert {"feature_norm.weight", "feature_norm.bias", "adapter.0.weight", "position"} <= set(sat.state_dict())
    assert {"feature_norm.weight", "feature_norm.bias", "memory_proj.weight", "grid_position"} <= set(tfm.state_dict())
    for prepare in (sat.prepare_features, tfm.memory):
        with pytest.raises(ValueError, match=f"built for {P} grid positions, got 3; use features from the encoder"):
            prepare(features[:, :3])


def test_grouped_step_equals_step_on_per_beam_copies():
    torch.manual_seed(0)
    from labutils import get_config

    cfg = get_config("quick", embed_dim=8, hidden_dim=16, attention_dim=6, dropout=0.0, grid_size=3)
    decoder = build_decoder("attention", 30, 12, cfg).eval()
    h, c, features, enc_proj = decoder.init_state(torch.randn(4, 9, 12))  # 4 images, one copy each
    # 6 live beams: image 0 has 3 (slots 0-2), image 1 none, image 2 has 1 (slot 0), image 3 has 2 (slots 0 and 1)
    row_image, row_slot = torch.tensor([0, 0, 0, 2, 3, 3]), torch.tensor([0, 1, 2, 0, 0, 1])
    h, c = torch.randn(6, 16), torch.randn(6, 16)  # beams have diverged
    tokens = torch.tensor([4, 5, 6, 7, 8, 9])
    with torch.no_grad():
        want_logits, want_state, want_alpha = decoder.step(
            tokens, (h, c, features[row_image], enc_proj[row_image]))
        logits, state, alpha = decoder.step_grouped(tokens, (h, c, features, enc_proj), row_image, row_slot, 3)
    torch.testing.assert_close(logits, want_logits)
    torch.testing.assert_close(alpha, want_alpha)
    torch.testing.assert_close(state[0], want_state[0])
    torch.testing.assert_close(state[1], want_state[1])
    assert state[2] is features and state[3] is enc_proj  # the per-image grid is passed on, never copied


def test_show_and_tell_normalises_the_pooled_features_when_the_config_asks():
    from labutils import get_config
    from labutils.train import decoder_spec

    cfg = get_config("quick")
    torch.manual_seed(0)
    features = torch.randn(3, 4, 16) * 3.4 + 1.0  # the scale of frozen ImageNet features on real photos
    normed = build_decoder("show_and_tell", 20, 16, cfg.replace(feature_norm=True)).eval()
    plain = build_decoder("show_and_tell", 20, 16, cfg.replace(feature_norm=False)).eval()
    # with the norm, the LSTM's first input does not depend on the features' scale; without it, it does
    assert torch.allclose(normed.image_vector(features), normed.image_vector(features * 10), atol=1e-4)
    assert not torch.allclose(plain.image_vector(features), plain.image_vector(features * 10), atol=1e-2)
    rebuilt = from_spec(decoder_spec(normed))
    rebuilt.load_state_dict(normed.state_dict())
    captions, lengths = torch.tensor([[1, 5, 6, 2]] * 3), torch.tensor([4, 4, 4])
    assert torch.equal(rebuilt.eval()(features, captions, lengths).logits, normed(features, captions, lengths).logits)


def _grid_casts(run, grid_shape):
    """How many times `run()` casts a tensor of `grid_shape` to bfloat16 (autocast's casts included)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        casts = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if func is torch.ops.aten._to_copy.default and tuple(args[0].shape) == grid_shape \
                    and kwargs.get("dtype") == torch.bfloat16:
                Count.casts += 1
            return out

    with Count():
        run()
    return Count.casts


def test_under_autocast_the_attention_grid_is_cast_once_and_gives_what_autocast_would():
    torch.manual_seed(0)
    model = ShowAttendTell(V, C, embed_dim=8, hidden_dim=12, attention_dim=9, dropout=0.0, deep_output=True,
                           num_positions=P, feature_norm=True, adapter_dim=7).eval()
    features, captions, lengths = make_inputs()
    lengths = torch.full((B,), T)  # every row runs every step: the grid is read whole at each
    grid = torch.randn(B, P, C)
    assert decoders.in_autocast_dtype(grid) is grid, "no autocast: the tensor as it is"
    assert model.init_state(features)[2].dtype == torch.float32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert decoders.in_autocast_dtype(grid).dtype == torch.bfloat16
        h, c, state_grid, enc_proj = model.init_state(features)
        assert state_grid.dtype == torch.bfloat16
        logits, _, alpha = model.step(captions[:, 0], (h, c, state_grid, enc_proj))
        # What autocast makes of the float32 grid, cast by the step itself: the same numbers.
        want_logits, _, want_alpha = model.step(captions[:, 0], (h, c, state_grid.float(), enc_proj))
        torch.testing.assert_close(logits, want_logits, rtol=0, atol=0)
        torch.testing.assert_close(alpha, want_alpha, rtol=0, atol=0)
        grid_shape = (B, P, model.context_dim)
        assert _grid_casts(lambda: model(features, captions, lengths), grid_shape) == 1, "forward: once, not per step"

        def generate():
            state = model.init_state(features)
            for t in range(T - 1):
                state = model.step(captions[:, t], state)[1]
        assert _grid_casts(generate, grid_shape) == 1, "init_state casts it; the steps read it as it is"

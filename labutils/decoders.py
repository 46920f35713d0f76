"""Caption decoders with ONE interface: Show and Tell (Vinyals et al. 2015) and Show, Attend and Tell (Xu et al. 2015).

Every decoder takes the encoder's grid of features `[B, P, C]` (P positions of C channels) and offers

* `forward(features, captions, lengths) -> DecoderOutput(logits [B, T-1, V], alphas [B, T-1, P] or None)`:
  teacher forcing, predicting `captions[:, 1:]` from `captions[:, :-1]`; positions past a caption's length are
  padding and never influence the valid positions;
* `init_state(features) -> tuple of tensors`, all batch-first, holding everything `step` needs per image;
* `step(tokens [B], state) -> (logits [B, V], new_state, alpha [B, P] or None)`: one word at a time, for greedy
  decoding, beam search and sampling (which may reorder a state with `t.index_select(0, idx)` on each tensor).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

State = tuple[Tensor, ...]


class DecoderOutput(NamedTuple):
    """What `forward` returns: per-step vocabulary logits and, for attention decoders, per-step attention weights."""

    logits: Tensor
    alphas: Tensor | None


def _check_inputs(features: Tensor, captions: Tensor, lengths: Tensor) -> None:
    if features.dim() != 3:
        raise ValueError(f"Decoders take grid features shaped [batch, positions, channels], got {tuple(features.shape)};"
                         " add a positions axis with features.unsqueeze(1) if you have pooled vectors.")
    if captions.dim() != 2 or captions.size(0) != features.size(0):
        raise ValueError(f"captions must be [batch, time] with the same batch as the features, got "
                         f"{tuple(captions.shape)} for features {tuple(features.shape)}.")
    if lengths.numel() != captions.size(0) or int(lengths.min()) < 2 or int(lengths.max()) > captions.size(1):
        raise ValueError("lengths must give each caption's token count (2 to T, counting <start> and <end>).")


class ShowAndTell(nn.Module):
    """Show and Tell: the pooled image vector is the LSTM's first input, then the caption's word embeddings."""

    uses_attention = False

    def __init__(self, vocab_size: int, feature_dim: int, embed_dim: int = 256, hidden_dim: int = 512,
                 num_layers: int = 1, rnn: str = "lstm", dropout: float = 0.3):
        super().__init__()
        rnn = rnn.lower()
        if rnn not in ("lstm", "gru"):
            raise ValueError(f"rnn must be 'lstm' or 'gru', got {rnn!r}.")
        self.vocab_size, self.feature_dim, self.rnn_type, self.num_layers = vocab_size, feature_dim, rnn, num_layers
        self.image_proj = nn.Linear(feature_dim, embed_dim)
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        rnn_class = nn.LSTM if rnn == "lstm" else nn.GRU
        # Dropout between stacked layers only exists for num_layers > 1 (PyTorch warns otherwise).
        self.rnn = rnn_class(embed_dim, hidden_dim, num_layers=num_layers, batch_first=True,
                             dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_dim, vocab_size)

    def image_vector(self, features: Tensor) -> Tensor:
        """Mean over grid positions, projected to the word-embedding size: the LSTM's input at time -1."""
        return self.image_proj(features.mean(dim=1))

    def forward(self, features: Tensor, captions: Tensor, lengths: Tensor) -> DecoderOutput:
        """Teacher-forced logits [B, T-1, V] for `captions[:, 1:]` (alphas is None: no attention)."""
        _check_inputs(features, captions, lengths)
        words = self.embedding(captions[:, :-1])  # <start> w1 ... : the inputs after the image
        inputs = self.dropout(torch.cat([self.image_vector(features).unsqueeze(1), words], dim=1))
        # Packing runs each caption for exactly its own length, so padding never reaches the valid steps.
        packed = pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=inputs.size(1))
        # Output 0 follows the image alone; outputs 1.. follow <start>, w1, ... and predict w1, w2, ...
        return DecoderOutput(self.fc(self.dropout(out[:, 1:])), None)

    def init_state(self, features: Tensor) -> State:
        """Feed the image vector; return the recurrent state batch-first: (h, c) [B, layers, H] (GRU: (h,))."""
        _, hidden = self.rnn(self.image_vector(features).unsqueeze(1))
        hidden = hidden if isinstance(hidden, tuple) else (hidden,)
        return tuple(h.transpose(0, 1).contiguous() for h in hidden)

    def step(self, tokens: Tensor, state: State) -> tuple[Tensor, State, None]:
        """Logits [B, V] for the word after `tokens` [B], the new state, and None (no attention)."""
        hidden = tuple(h.transpose(0, 1).contiguous() for h in state)
        out, hidden = self.rnn(self.embedding(tokens).unsqueeze(1), hidden if len(hidden) == 2 else hidden[0])
        hidden = hidden if isinstance(hidden, tuple) else (hidden,)
        logits = self.fc(self.dropout(out[:, 0]))
        return logits, tuple(h.transpose(0, 1).contiguous() for h in hidden), None


class ShowAttendTell(nn.Module):
    """Show, Attend and Tell with soft additive (Bahdanau) attention, an `f_beta` gate and an `LSTMCell` loop."""

    uses_attention = True

    def __init__(self, vocab_size: int, feature_dim: int, embed_dim: int = 512, hidden_dim: int = 512,
                 attention_dim: int = 512, dropout: float = 0.5):
        super().__init__()
        self.vocab_size, self.feature_dim, self.hidden_dim = vocab_size, feature_dim, hidden_dim
        self.encoder_att = nn.Linear(feature_dim, attention_dim)  # W_enc: applied once per image
        self.decoder_att = nn.Linear(hidden_dim, attention_dim)   # W_dec: applied to h every step
        self.full_att = nn.Linear(attention_dim, 1)               # w: one score per position
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.init_h = nn.Linear(feature_dim, hidden_dim)
        self.init_c = nn.Linear(feature_dim, hidden_dim)
        self.f_beta = nn.Linear(hidden_dim, feature_dim)  # gate: how much of the context to let in (paper 4.2.1)
        self.lstm = nn.LSTMCell(embed_dim + feature_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_dim, vocab_size)

    def initial_hidden(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """h0 and c0 [B, H] predicted from the mean feature (paper section 3.1.2)."""
        mean = features.mean(dim=1)
        return self.init_h(mean), self.init_c(mean)

    def attend(self, features: Tensor, enc_proj: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """Gated context [B, C] and attention weights alpha [B, P] (softmax over positions) for hidden state h."""
        scores = self.full_att(torch.tanh(enc_proj + self.decoder_att(h).unsqueeze(1))).squeeze(2)
        alpha = torch.softmax(scores, dim=1)
        context = torch.bmm(alpha.unsqueeze(1), features).squeeze(1)
        return torch.sigmoid(self.f_beta(h)) * context, alpha

    def _cell(self, embedded: Tensor, features: Tensor, enc_proj: Tensor, h: Tensor, c: Tensor):
        context, alpha = self.attend(features, enc_proj, h)
        h, c = self.lstm(torch.cat([embedded, context], dim=1), (h, c))
        return self.fc(self.dropout(h)), h, c, alpha

    def forward(self, features: Tensor, captions: Tensor, lengths: Tensor) -> DecoderOutput:
        """Teacher-forced logits [B, T-1, V] and attention weights [B, T-1, P] (zero at padded steps)."""
        _check_inputs(features, captions, lengths)
        batch, steps = captions.size(0), captions.size(1) - 1
        decode_lengths = (lengths - 1).to(captions.device)
        # Sort by length so that the captions still running at step t are the first b_t rows: each step then
        # computes only those rows and padded steps cost (and change) nothing.
        order = torch.argsort(decode_lengths, descending=True)
        features, decode_lengths = features[order], decode_lengths[order]
        embedded = self.dropout(self.embedding(captions[order, :-1]))
        enc_proj = self.encoder_att(features)  # once per batch, not once per step
        h, c = self.initial_hidden(features)
        logits = features.new_zeros(batch, steps, self.vocab_size)
        alphas = features.new_zeros(batch, steps, features.size(1))
        running = (decode_lengths.unsqueeze(0) > torch.arange(steps, device=captions.device).unsqueeze(1)).sum(1)
        for t, b_t in enumerate(running.tolist()):
            if b_t == 0:
                break
            step_logits, h, c, alpha = self._cell(embedded[:b_t, t], features[:b_t], enc_proj[:b_t], h[:b_t], c[:b_t])
            logits[:b_t, t] = step_logits
            alphas[:b_t, t] = alpha
        inverse = torch.argsort(order)
        return DecoderOutput(logits[inverse], alphas[inverse])

    def init_state(self, features: Tensor) -> State:
        """(h [B, H], c [B, H], features [B, P, C], enc_proj [B, P, A]): the projection is computed here, once."""
        h, c = self.initial_hidden(features)
        return h, c, features, self.encoder_att(features)

    def step(self, tokens: Tensor, state: State) -> tuple[Tensor, State, Tensor]:
        """Logits [B, V] for the word after `tokens` [B], the new state, and this step's attention alpha [B, P]."""
        h, c, features, enc_proj = state
        logits, h, c, alpha = self._cell(self.embedding(tokens), features, enc_proj, h, c)
        return logits, (h, c, features, enc_proj), alpha


def valid_step_mask(lengths: Tensor, steps: int) -> Tensor:
    """Bool mask [B, steps]: True where step t predicts a real token (t < length - 1)."""
    return torch.arange(steps, device=lengths.device).unsqueeze(0) < (lengths.to(torch.long) - 1).unsqueeze(1)


def doubly_stochastic_penalty(alphas: Tensor, lengths: Tensor, alpha_c: float = 1.0) -> Tensor:
    """Xu et al. (2015) eq. 14: alpha_c * mean over images and positions of (1 - sum over valid steps of alpha)^2.

    It nudges the model to look at every part of the image at some point of the caption, which the paper found
    gives richer, more descriptive captions.
    """
    mask = valid_step_mask(lengths.to(alphas.device), alphas.size(1)).unsqueeze(2)
    attention_per_position = (alphas * mask).sum(dim=1)  # [B, P]
    return alpha_c * ((1.0 - attention_per_position) ** 2).mean()


DECODER_KINDS = {"show_and_tell": ShowAndTell, "attention": ShowAttendTell}
_ALIASES = {"show_tell": "show_and_tell", "showandtell": "show_and_tell", "nic": "show_and_tell",
            "lstm": "show_and_tell", "show_attend_tell": "attention", "showattendtell": "attention",
            "sat": "attention"}


def canonical_kind(kind: str) -> str:
    """Map a decoder name or alias ("sat", "show_tell", ...) to `show_and_tell` or `attention`."""
    key = kind.lower().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    if key not in DECODER_KINDS:
        raise ValueError(f"Unknown decoder kind {kind!r}; use one of {', '.join(DECODER_KINDS)}.")
    return key


def _setting(cfg, key: str, default=None):
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def build_decoder(kind: str, vocab_size: int, feature_dim: int, cfg) -> nn.Module:
    """Build the decoder `kind` ("show_and_tell" or "attention") with sizes from `cfg` (a LabConfig or its dict)."""
    kind = canonical_kind(kind)
    common = dict(vocab_size=vocab_size, feature_dim=feature_dim, embed_dim=_setting(cfg, "embed_dim"),
                  hidden_dim=_setting(cfg, "hidden_dim"), dropout=_setting(cfg, "dropout"))
    if kind == "show_and_tell":
        return ShowAndTell(**common, num_layers=_setting(cfg, "num_layers", 1), rnn=_setting(cfg, "rnn", "lstm"))
    return ShowAttendTell(**common, attention_dim=_setting(cfg, "attention_dim"))


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of a module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def check_attention_weights(alpha: Tensor, features: Tensor, context: Tensor) -> bool:
    """Exercise check: `alpha` [B, P] must be a distribution over positions and `context` its weighted feature sum."""
    ok_shape = alpha.shape == features.shape[:2] and context.shape == (features.size(0), features.size(2))
    if not ok_shape:
        print(f"Not yet: alpha should be {tuple(features.shape[:2])} and the context "
              f"{(features.size(0), features.size(2))}, got {tuple(alpha.shape)} and {tuple(context.shape)}.")
        return False
    if (alpha < 0).any() or not torch.allclose(alpha.sum(dim=1), torch.ones(alpha.size(0)), atol=1e-5):
        print("Not yet: each row of alpha should be non-negative and sum to 1 over the positions (use a softmax).")
        return False
    expected = (alpha.unsqueeze(2) * features).sum(dim=1)
    if not torch.allclose(context, expected, atol=1e-5):
        print("Not yet: the context should be the alpha-weighted sum of the feature vectors over positions.")
        return False
    print("Correct: alpha is a distribution over the positions and the context is the weighted average feature.")
    return True

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
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .config import QUICK, LabConfig

State = tuple[Tensor, ...]


class DecoderOutput(NamedTuple):
    """What `forward` returns: per-step vocabulary logits and, for attention decoders, per-step attention weights."""

    logits: Tensor
    alphas: Tensor | None


def check_inputs(features: Tensor, captions: Tensor, lengths: Tensor) -> None:
    """Raise a one-sentence ValueError when features, captions and lengths do not fit together."""
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

    # Defaults: the quick profile's settings (labutils.config), the one place they are written down.
    def __init__(self, vocab_size: int, feature_dim: int, embed_dim: int = QUICK.embed_dim,
                 hidden_dim: int = QUICK.hidden_dim, num_layers: int = QUICK.num_layers, rnn: str = QUICK.rnn,
                 dropout: float = QUICK.dropout, feature_norm: bool = False):
        super().__init__()
        rnn = rnn.lower()
        if rnn not in ("lstm", "gru"):
            raise ValueError(f"rnn must be 'lstm' or 'gru', got {rnn!r}.")
        self.vocab_size, self.feature_dim, self.rnn_type, self.num_layers = vocab_size, feature_dim, rnn, num_layers
        # Frozen ImageNet features are far from unit scale (on Flickr8k's photos: std 3.4, values -49..33); fed raw,
        # one large image vector can swamp the word inputs and every photo gets the same caption.
        self.feature_norm = nn.LayerNorm(feature_dim) if feature_norm else None
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
        pooled = features.mean(dim=1)  # [B, C]
        return self.image_proj(pooled if self.feature_norm is None else self.feature_norm(pooled))  # [B, E]

    def forward(self, features: Tensor, captions: Tensor, lengths: Tensor) -> DecoderOutput:
        """Teacher-forced logits [B, T-1, V] for `captions[:, 1:]` (alphas is None: no attention)."""
        check_inputs(features, captions, lengths)
        image = self.image_vector(features).unsqueeze(1)  # [B, 1, E]: the LSTM's input at time -1
        words = self.embedding(captions[:, :-1])  # [B, T-1, E]: <start> w1 ... w_{T-2}
        inputs = self.dropout(torch.cat([image, words], dim=1))  # [B, T, E]
        # Packing runs each caption for exactly its own length, so padding never reaches the valid steps.
        packed = pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)  # packed [sum(lengths), H]
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=inputs.size(1))  # [B, T, H]
        # Output 0 follows the image alone; outputs 1.. follow <start>, w1, ... and predict w1, w2, ...
        return DecoderOutput(self.fc(self.dropout(out[:, 1:])), None)  # logits [B, T-1, V]

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
    """Show, Attend and Tell with soft additive (Bahdanau) attention, an `f_beta` gate and an `LSTMCell` loop.

    Sizes default to the quick profile's (`labutils.config`); the three optional additions to the paper's model
    are off unless asked for, so the class alone is the paper's model (`build_decoder` takes them from the config):
    `feature_norm` (LayerNorm on every grid vector), `adapter_dim` (a trained 1x1 layer + ReLU on top of the
    frozen encoder, so each region's features are re-mapped non-linearly BEFORE attention averages them) and
    `num_positions` (a learned position embedding: an attention-weighted average forgets where its features
    came from, and "to the left of" or "above" need exactly that). `deep_output` is the paper's eq. 7.
    """

    uses_attention = True

    def __init__(self, vocab_size: int, feature_dim: int, embed_dim: int = QUICK.embed_dim,
                 hidden_dim: int = QUICK.hidden_dim, attention_dim: int = QUICK.attention_dim,
                 dropout: float = QUICK.dropout, deep_output: bool = QUICK.deep_output,
                 num_positions: int | None = None, feature_norm: bool = False, adapter_dim: int | None = None):
        super().__init__()
        self.vocab_size, self.feature_dim, self.hidden_dim = vocab_size, feature_dim, hidden_dim
        self.deep_output, self.num_positions, self.adapter_dim = deep_output, num_positions, adapter_dim
        context_dim = adapter_dim or feature_dim  # size of the region vectors attention works on
        self.context_dim = context_dim
        self.feature_norm = nn.LayerNorm(feature_dim) if feature_norm else None
        self.adapter = nn.Sequential(nn.Linear(feature_dim, adapter_dim), nn.ReLU()) if adapter_dim else None
        self.position = nn.Parameter(torch.zeros(num_positions, context_dim)) if num_positions else None
        self.encoder_att = nn.Linear(context_dim, attention_dim)  # W_enc: applied once per image
        self.decoder_att = nn.Linear(hidden_dim, attention_dim)   # W_dec: applied to h every step
        self.full_att = nn.Linear(attention_dim, 1)               # w: one score per position
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.init_h = nn.Linear(context_dim, hidden_dim)
        self.init_c = nn.Linear(context_dim, hidden_dim)
        self.f_beta = nn.Linear(hidden_dim, context_dim)  # gate: how much of the context to let in (paper 4.2.1)
        self.lstm = nn.LSTMCell(embed_dim + context_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        if deep_output:
            # Paper eq. 7 ("deep output"): the word scores see the hidden state, the context AND the previous
            # word, each mapped to the embedding size: L_o tanh(E y + L_h h + L_z z).
            self.out_h = nn.Linear(hidden_dim, embed_dim)
            self.out_z = nn.Linear(context_dim, embed_dim)
            self.fc = nn.Linear(embed_dim, vocab_size)
        else:  # the seed tutorials' simpler output layer: scores from the hidden state alone
            self.fc = nn.Linear(hidden_dim, vocab_size)

    def prepare_features(self, features: Tensor) -> Tensor:
        """Encoder grid [B, P, C] -> the region vectors attention uses [B, P, C'] (identity for the plain paper model)."""
        if self.feature_norm is not None:
            features = self.feature_norm(features)
        if self.adapter is not None:
            features = self.adapter(features)
        if self.position is None:
            return features
        if features.size(1) != self.position.size(0):
            raise ValueError(f"This decoder was built for {self.position.size(0)} grid positions, got "
                             f"{features.size(1)}; use features from the encoder/grid size it was trained on.")
        return features + self.position

    def initial_hidden(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """h0 and c0 [B, H] predicted from the mean feature (paper section 3.1.2)."""
        mean = features.mean(dim=1)
        return self.init_h(mean), self.init_c(mean)

    def attention_weights(self, enc_proj: Tensor, h: Tensor) -> Tensor:
        """Bahdanau (additive) attention: where to look, alpha [B, P], for the previous hidden state h [B, H].

        enc_proj [B, P, A] is W_enc a_i for every region a_i, computed once per image (`init_state`).
        """
        query = self.decoder_att(h).unsqueeze(1)  # [B, 1, A]: W_dec h, the same for every position
        energy = torch.tanh(enc_proj + query)  # [B, P, A]: the query broadcast over the P positions
        scores = self.full_att(energy).squeeze(2)  # [B, P]: e_i = w^T tanh(W_enc a_i + W_dec h)
        return torch.softmax(scores, dim=1)  # [B, P]: over the positions, so each row sums to 1

    def attend(self, features: Tensor, enc_proj: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """The gated context z [B, C] and the attention weights alpha [B, P] for hidden state h [B, H]."""
        alpha = self.attention_weights(enc_proj, h)  # [B, P]
        context = torch.bmm(alpha.unsqueeze(1), features).squeeze(1)  # [B, C]: sum_i alpha_i a_i
        gate = torch.sigmoid(self.f_beta(h))  # [B, C]: beta, how much image this word needs (the paper's is a scalar)
        return gate * context, alpha

    def forward(self, features: Tensor, captions: Tensor, lengths: Tensor) -> DecoderOutput:
        """Teacher-forced logits [B, T-1, V] and attention weights [B, T-1, P] (zero at padded steps)."""
        check_inputs(features, captions, lengths)
        steps = captions.size(1) - 1
        decode_lengths = (lengths - 1).to(captions.device)
        # Sort by length so that the captions still running at step t are the first b_t rows: each step then
        # computes only those rows and padded steps cost (and change) nothing.
        order = torch.argsort(decode_lengths, descending=True)
        features, decode_lengths = self.prepare_features(features[order]), decode_lengths[order]
        embedded = self.dropout(self.embedding(captions[order, :-1]))
        enc_proj = self.encoder_att(features)  # once per batch, not once per step
        h, c = self.initial_hidden(features)
        running = (decode_lengths.unsqueeze(0) > torch.arange(steps, device=captions.device).unsqueeze(1)).sum(1)
        running = running[running > 0].cpu()
        words, hiddens, contexts, alphas = [], [], [], []
        batch = features.size(0)
        for t, b_t in enumerate(running.tolist()):
            # Slicing all rows would still cost a gradient copy of the whole grid per step in backward.
            rows = slice(None) if b_t == batch else slice(b_t)
            context, alpha = self.attend(features[rows], enc_proj[rows], h[rows])
            h, c = self.lstm(torch.cat([embedded[rows, t], context], dim=1), (h[rows], c[rows]))
            words.append(embedded[rows, t])
            hiddens.append(h)
            contexts.append(context)
            alphas.append(alpha)
        # The steps' rows, time-major, ARE a packed sequence: score all words in one matrix product and let
        # pad_packed_sequence lay them out as [B, T-1, ...] with zeros at the padded steps.
        logits = self.output_logits(torch.cat(words), torch.cat(hiddens), torch.cat(contexts))
        inverse = torch.argsort(order)
        return DecoderOutput(_unpack(logits, running, steps)[inverse], _unpack(torch.cat(alphas), running, steps)[inverse])

    def init_state(self, features: Tensor) -> State:
        """(h [B, H], c [B, H], features [B, P, C], enc_proj [B, P, A]): the projection is computed here, once."""
        features = self.prepare_features(features)
        h, c = self.initial_hidden(features)
        return h, c, features, self.encoder_att(features)

    def output_logits(self, embedded: Tensor, h: Tensor, context: Tensor) -> Tensor:
        """Word scores [B, V] from the new hidden state (and, with `deep_output`, the context and previous word)."""
        if self.deep_output:  # paper eq. 7: L_o tanh(E y + L_h h + L_z z)
            return self.fc(self.dropout(torch.tanh(embedded + self.out_h(h) + self.out_z(context))))  # [B, V]
        return self.fc(self.dropout(h))  # [B, V]

    def step(self, tokens: Tensor, state: State) -> tuple[Tensor, State, Tensor]:
        """Logits [B, V] for the word after `tokens` [B], the new state, and this step's attention alpha [B, P]."""
        h, c, features, enc_proj = state  # h, c [B, H]; features [B, P, C]; enc_proj [B, P, A]
        embedded = self.embedding(tokens)  # [B, E]: the previous word
        context, alpha = self.attend(features, enc_proj, h)  # [B, C], [B, P]: look before speaking
        h, c = self.lstm(torch.cat([embedded, context], dim=1), (h, c))  # [B, H] each
        logits = self.output_logits(embedded, h, context)  # [B, V]: scores for the next word
        return logits, (h, c, features, enc_proj), alpha

    # State entries that are the same for every beam of an image (beam search keeps one copy per image).
    per_image_state = (False, False, True, True)

    def step_grouped(self, tokens: Tensor, state: State, row_image: Tensor, row_slot: Tensor,
                     slots: int) -> tuple[Tensor, State, Tensor]:
        """`step` for beam search with h, c per row [R, H] but features/enc_proj per image [N, P, .].

        Row r belongs to image row_image[r] (ascending) at slot row_slot[r] < slots. Same results as `step` on
        row-aligned copies, without copying every image's grid once per beam at every step.
        """
        h, c, features, enc_proj = state
        embedded = self.embedding(tokens)
        alpha = self.attention_weights(enc_proj.index_select(0, row_image), h)
        present, group = torch.unique_consecutive(row_image, return_inverse=True)
        grid = features if present.numel() == features.size(0) else features.index_select(0, present)
        weights = alpha.new_zeros(present.numel(), slots, alpha.size(1))
        weights[group, row_slot] = alpha
        context = torch.bmm(weights, grid)[group, row_slot]  # [R, C]: each row's weighted sum of its image's grid
        context = torch.sigmoid(self.f_beta(h)) * context  # the gate of `attend`
        h, c = self.lstm(torch.cat([embedded, context], dim=1), (h, c))
        logits = self.output_logits(embedded, h, context)
        return logits, (h, c, features, enc_proj), alpha


def _unpack(data: Tensor, batch_sizes: Tensor, steps: int) -> Tensor:
    """Time-major rows of a length-sorted batch ([sum of b_t, ...]) -> padded batch-first [B, steps, ...]."""
    padded, _ = pad_packed_sequence(PackedSequence(data, batch_sizes), batch_first=True, total_length=steps)
    return padded


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


def build_decoder(kind: str, vocab_size: int, feature_dim: int, cfg: LabConfig) -> nn.Module:
    """Build the decoder `kind` ("show_and_tell" or "attention") with every setting from `cfg`.

    The config is the one place of the decoder's settings: change one on it, e.g.
    `build_decoder("attention", V, C, cfg.replace(adapter=False))`. The attention decoder's additions are config
    settings (`feature_norm`, `adapter` of `hidden_dim` units, `position_embedding` for `grid_size**2`
    positions), all on in both profiles; `cfg.replace(feature_norm=False, adapter=False,
    position_embedding=False)` gives the paper's plain model. To rebuild a saved decoder use `from_spec`.
    """
    kind = canonical_kind(kind)
    if not isinstance(cfg, LabConfig):
        raise TypeError(f"build_decoder() takes a LabConfig, got {type(cfg).__name__}; change settings with "
                        "cfg.replace(...), or rebuild a checkpoint's decoder with decoders.from_spec(spec).")
    common = dict(vocab_size=vocab_size, feature_dim=feature_dim, embed_dim=cfg.embed_dim,
                  hidden_dim=cfg.hidden_dim, dropout=cfg.dropout)
    if kind == "show_and_tell":
        return ShowAndTell(**common, num_layers=cfg.num_layers, rnn=cfg.rnn, feature_norm=bool(cfg.feature_norm))
    return ShowAttendTell(**common, attention_dim=cfg.attention_dim, deep_output=bool(cfg.deep_output),
                          num_positions=cfg.grid_size ** 2 if cfg.position_embedding else None,
                          feature_norm=bool(cfg.feature_norm), adapter_dim=cfg.hidden_dim if cfg.adapter else None)


def from_spec(spec) -> nn.Module:
    """Rebuild a decoder from its constructor arguments plus "kind" (what checkpoints store: `train.decoder_spec`)."""
    arguments = dict(spec)
    kind = canonical_kind(arguments.pop("kind"))
    return (ShowAndTell if kind == "show_and_tell" else ShowAttendTell)(**arguments)


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of a module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)

"""Caption decoders with ONE interface: Show and Tell (Vinyals et al. 2015), Show, Attend and Tell (Xu et al. 2015)
and a small pre-norm Transformer decoder (Vaswani et al. 2017).

Every decoder takes the encoder's grid of features `[B, P, C]` (P positions of C channels) and offers

* `forward(features, captions, lengths) -> DecoderOutput(logits [B, T-1, V], alphas [B, T-1, P] or None)`:
  teacher forcing, predicting `captions[:, 1:]` from `captions[:, :-1]`; positions past a caption's length are
  padding and never influence the valid positions;
* `init_state(features) -> tuple of tensors`, all batch-first, holding everything `step` needs per image;
* `step(tokens [B], state) -> (logits [B, V], new_state, alpha [B, P] or None)`: one word at a time, for greedy
  decoding, beam search and sampling (which may reorder a state with `t.index_select(0, idx)` on each tensor).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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


def prepare_grid(features: Tensor, norm: nn.Module | None, project: nn.Module | None,
                 position: Tensor | None) -> Tensor:
    """Encoder grid [B, P, C] -> the vectors a decoder attends over [B, P, D]: the optional LayerNorm, a projection
    (None keeps C) and the optional learned embedding per grid position [P, D].

    Shared by ShowAttendTell and CaptionTransformer, whose modules stay their own attributes (so their state_dict
    keys, and the checkpoints saved with them, do not change).
    """
    if norm is not None:
        features = norm(features)
    if project is not None:
        features = project(features)
    if position is None:
        return features
    if features.size(1) != position.size(0):
        raise ValueError(f"This decoder was built for {position.size(0)} grid positions, got "
                         f"{features.size(1)}; use features from the encoder/grid size it was trained on.")
    return features + position


def in_autocast_dtype(x: Tensor) -> Tensor:
    """`x` in the dtype autocast computes in where it is on, else unchanged. For a tensor every step reads: autocast
    casts a float32 input anew at each call (and its gradient back in the backward pass), so cast it once."""
    device = x.device.type
    return x.to(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else x


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
        return prepare_grid(features, self.feature_norm, self.adapter, self.position)

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
        h, c = self.initial_hidden(features)
        features = in_autocast_dtype(features)  # each step's context reads it
        enc_proj = self.encoder_att(features)  # once per batch, not once per step
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
        features = in_autocast_dtype(features)  # each step's context reads it
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


# -- a Transformer decoder with the same interface ---------------------------------------------------------------
def causal_mask(steps: int, device: torch.device | str | None = None) -> Tensor:
    """The causal mask [T, T] (bool) of teacher forcing: True where word t may look at word j, i.e. j <= t."""
    return torch.ones(steps, steps, dtype=torch.bool, device=device).tril()


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with `heads` heads (Vaswani et al. 2017, section 3.2), written out so that its
    weights [B, heads, Tq, Tk] can be returned and drawn. Used for self-attention (words look at earlier words)
    and cross-attention (words look at grid positions)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"transformer_dim={dim} must be a multiple of num_heads={heads}; change one of them.")
        self.heads, self.head_dim = heads, dim // heads
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def split_heads(self, x: Tensor) -> Tensor:
        """[B, T, D] -> [B, heads, T, D/heads]: each head works on its own slice of the channels."""
        return x.view(x.size(0), x.size(1), self.heads, self.head_dim).transpose(1, 2)

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values [B, heads, Tk, D/heads] of `x` [B, Tk, D]: computed once per memory or cached token."""
        return self.split_heads(self.key(x)), self.split_heads(self.value(x))

    def attend(self, x: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Output [B, Tq, D] and weights [B, heads, Tq, Tk] of the queries from `x` [B, Tq, D]; `mask` [Tq, Tk] is
        True where a query may look."""
        queries = self.split_heads(self.query(x))  # [B, h, Tq, d]
        scores = queries @ keys.transpose(-2, -1) / math.sqrt(self.head_dim)  # [B, h, Tq, Tk]
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))  # softmax gives exactly 0 there
        weights = torch.softmax(scores, dim=-1)  # [B, h, Tq, Tk]: each query's weights sum to 1
        mixed = (weights @ values).transpose(1, 2)  # [B, Tq, h, d]: the heads' weighted values side by side
        return self.out(mixed.reshape(x.size(0), x.size(1), -1)), weights  # [B, Tq, D]

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Queries from `x` [B, Tq, D] attend over `context` [B, Tk, D] (self-attention: context is x)."""
        return self.attend(x, *self.keys_values(context), mask)


class TransformerDecoderLayer(nn.Module):
    """One pre-norm layer: x + SelfAttn(LN x) (causal), x + CrossAttn(LN x, memory), x + FFN(LN x).

    Pre-norm (LayerNorm inside each branch, Xiong et al. 2020) leaves the residual path an identity from the
    embeddings to the last layer, so a small model trains without the learning-rate warm-up post-norm needs.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.norm_self, self.self_attention = nn.LayerNorm(dim), MultiHeadAttention(dim, heads)
        self.norm_cross, self.cross_attention = nn.LayerNorm(dim), MultiHeadAttention(dim, heads)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Linear(ffn_dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory_kv: tuple[Tensor, Tensor], causal: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher forcing: all T words [B, T, D] at once; word t sees words <= t only (`causal` [T, T])."""
        normed = self.norm_self(x)
        x = x + self.dropout(self.self_attention(normed, normed, causal)[0])  # [B, T, D]
        return self.cross_and_ffn(x, memory_kv)

    def step(self, x: Tensor, memory_kv: tuple[Tensor, Tensor], past_keys: Tensor,
             past_values: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One new word [B, 1, D] attending over the cached keys/values [B, h, t, d] of the earlier words and its
        own; returns the output, the cross-attention weights and the extended cache [B, h, t+1, d]."""
        normed = self.norm_self(x)
        keys, values = self.self_attention.keys_values(normed)  # [B, h, 1, d]: only the new word is projected
        keys, values = torch.cat([past_keys, keys], dim=2), torch.cat([past_values, values], dim=2)
        x = x + self.dropout(self.self_attention.attend(normed, keys, values)[0])  # no mask: no future is cached
        x, weights = self.cross_and_ffn(x, memory_kv)
        return x, weights, keys, values

    def cross_and_ffn(self, x: Tensor, memory_kv: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """The cross-attention and feed-forward branches; returns x and the cross weights [B, h, T, P]."""
        looked, weights = self.cross_attention.attend(self.norm_cross(x), *memory_kv)  # [B, T, D], [B, h, T, P]
        x = x + self.dropout(looked)
        return x + self.dropout(self.ffn(self.norm_ffn(x))), weights


class CaptionTransformer(nn.Module):
    """A pre-norm Transformer caption decoder (Vaswani et al. 2017's decoder, as in the d2l and TensorFlow
    captioning tutorials) with the same `forward` / `init_state` / `step` interface as the LSTM decoders.

    The grid [B, P, C] becomes a memory of P vectors (optional LayerNorm, a Linear to `dim`, plus a learned
    embedding per grid position, as ShowAttendTell's `num_positions`). Words are token + learned position
    embeddings for up to `max_len` positions. `forward` runs the whole caption in one pass with a causal mask;
    `step` feeds one word and reuses a cache of the earlier words' keys and values, so each step costs one word.
    `alphas` are the cross-attention weights averaged over heads and layers, [B, T-1, P], each row summing to 1.
    """

    uses_attention = True

    def __init__(self, vocab_size: int, feature_dim: int, dim: int = QUICK.transformer_dim,
                 num_layers: int = QUICK.transformer_layers, num_heads: int = QUICK.num_heads,
                 ffn_dim: int | None = None, dropout: float = QUICK.dropout, max_len: int = QUICK.max_caption_len,
                 num_positions: int | None = None, feature_norm: bool = False):
        super().__init__()
        self.vocab_size, self.feature_dim, self.dim, self.max_len = vocab_size, feature_dim, dim, max_len
        self.num_layers, self.num_heads, self.ffn_dim = num_layers, num_heads, ffn_dim or 4 * dim
        self.num_positions, self.dropout_p = num_positions, dropout
        self.feature_norm = nn.LayerNorm(feature_dim) if feature_norm else None
        self.memory_proj = nn.Linear(feature_dim, dim)
        # Starts at zero ("no position"), as ShowAttendTell's: cross-attention learns where things are from data.
        self.grid_position = nn.Parameter(torch.zeros(num_positions, dim)) if num_positions else None
        # Not scaled by sqrt(dim): the embeddings are not shared with the output layer, so they keep
        # nn.Embedding's unit scale, the same as the position embedding they are added to.
        self.embedding = nn.Embedding(vocab_size, dim)
        self.word_position = nn.Embedding(max_len, dim)
        self.layers = nn.ModuleList(TransformerDecoderLayer(dim, num_heads, self.ffn_dim, dropout)
                                    for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(dim)  # pre-norm leaves the residual stream unnormalised: do it once here
        self.fc = nn.Linear(dim, vocab_size)
        self.dropout = nn.Dropout(dropout)
        self.last_cross_attention: Tensor | None = None  # [B, layers, heads, P] of the latest `step`

    def memory(self, features: Tensor) -> Tensor:
        """Grid [B, P, C] -> memory [B, P, D] that the words attend over (position-aware when asked for)."""
        return prepare_grid(features, self.feature_norm, self.memory_proj, self.grid_position)

    def memory_keys_values(self, features: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Each layer's cross-attention keys and values [B, heads, P, d], computed once per image."""
        memory = self.memory(features)  # [B, P, D]
        return [layer.cross_attention.keys_values(memory) for layer in self.layers]

    def embed(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """Token + position embeddings [B, T, D] of `tokens` [B, T] at `positions` [T]."""
        return self.dropout(self.embedding(tokens) + self.word_position(positions))  # [B, T, D]

    def run(self, features: Tensor, captions: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher forcing in one pass: logits [B, T-1, V] and cross-attention [B, layers, heads, T-1, P]."""
        check_inputs(features, captions, lengths)
        memory_kv = self.memory_keys_values(features)  # per layer: keys, values [B, h, P, d]
        steps = captions.size(1) - 1
        if steps > self.max_len:
            raise ValueError(f"This decoder has position embeddings for {self.max_len} words, got captions of "
                             f"{steps + 1} tokens; cap them at max_len + 1 tokens or build it with a larger max_len.")
        x, maps = self.words_pass(memory_kv, captions[:, :-1])  # [B, T-1, D], [B, L, h, T-1, P]
        mask = valid_step_mask(lengths.to(x.device), steps)[:, None, None, :, None]  # [B, 1, 1, T-1, 1]
        return self.fc(self.final_norm(x)), maps * mask  # zero at padded steps

    def words_pass(self, memory_kv: Sequence[tuple[Tensor, Tensor]], inputs: Tensor) -> tuple[Tensor, Tensor]:
        """All layers over the words `inputs` [B, T] (<start> w1 .. w_{T-1}) at once, each word seeing itself and
        the words before it: the output [B, T, D] and the cross-attention [B, layers, heads, T, P]."""
        steps = inputs.size(1)
        # Capped as `step` caps them (`run` refuses longer captions before it gets here).
        positions = torch.arange(steps, device=inputs.device).clamp(max=self.max_len - 1)  # [T]
        x = self.embed(inputs, positions)  # [B, T, D]
        causal = causal_mask(steps, x.device)  # [T, T]: j <= t
        maps = []
        for layer, kv in zip(self.layers, memory_kv, strict=True):
            x, weights = layer(x, kv, causal)  # weights [B, h, T, P]
            maps.append(weights)
        return x, torch.stack(maps, dim=1)

    def teacher_forced(self, state: State, inputs: Tensor, keep: Tensor) -> Tensor:
        """Logits [N, V] of the next word at the N positions where `keep` [B, T] is True, from a fresh `init_state`
        (rows selected or repeated as the caller needs) and the words `inputs` [B, T]: what T `step`s from that
        state give, in one causal pass. SCST scores its sampled captions this way: the samples are drawn without
        a graph, and only one pass, over the words that count, is kept for the backward pass."""
        memory_kv = [(state[4 * i], state[4 * i + 1]) for i in range(self.num_layers)]  # per layer [B, h, P, d]
        x = self.words_pass(memory_kv, inputs)[0]  # [B, T, D]
        return self.fc(self.final_norm(x[keep]))  # [N, V]: padded positions cost neither projection nor softmax

    def forward(self, features: Tensor, captions: Tensor, lengths: Tensor) -> DecoderOutput:
        """Teacher-forced logits [B, T-1, V] and attention [B, T-1, P] (mean over heads and layers, 0 when padded)."""
        logits, maps = self.run(features, captions, lengths)
        return DecoderOutput(logits, maps.mean(dim=(1, 2)))

    def cross_attention_maps(self, features: Tensor, captions: Tensor, lengths: Tensor) -> Tensor:
        """Every layer's and head's cross-attention [B, layers, heads, T-1, P] of a teacher-forced pass."""
        return self.run(features, captions, lengths)[1]

    def init_state(self, features: Tensor) -> State:
        """Four batch-first tensors per layer: its memory keys and values [B, h, P, d] (fixed per image) and its
        cache of the earlier words' keys and values [B, h, t, d] (empty at the start; t is the next word's position,
        capped at max_len - 1). One tensor each, not one stack of the layers: a step that picked its layer out of a
        stack would make the backward pass write a zero tensor of the whole stack for every layer at every step.
        """
        state = []
        for keys, values in self.memory_keys_values(features):
            empty = keys.new_zeros(keys.size(0), self.num_heads, 0, self.dim // self.num_heads)  # [B, h, 0, d]
            state += [keys, values, empty, empty.clone()]
        return tuple(state)

    def step(self, tokens: Tensor, state: State) -> tuple[Tensor, State, Tensor]:
        """Logits [B, V] for the word after `tokens` [B], the state with this word cached, and alpha [B, P]."""
        # Training captions never reach past max_len positions; a longer decode (decode's default max_len may be
        # larger than cfg.max_caption_len) reuses the last position's embedding instead of failing mid-caption.
        position = torch.tensor([min(state[2].size(2), self.max_len - 1)], device=tokens.device)  # [1]
        x = self.embed(tokens.unsqueeze(1), position)  # [B, 1, D]: at the next position
        new_state, maps = [], []
        for i, layer in enumerate(self.layers):
            memory_keys, memory_values, past_keys, past_values = state[4 * i:4 * i + 4]
            x, weights, keys, values = layer.step(x, (memory_keys, memory_values), past_keys, past_values)
            # The memory passes on as the same objects: beam search then knows it needs no reordering per row.
            new_state += [memory_keys, memory_values, keys, values]
            maps.append(weights[:, :, 0])  # [B, h, P]
        self.last_cross_attention = torch.stack(maps, dim=1)  # [B, L, h, P]
        logits = self.fc(self.final_norm(x[:, 0]))  # [B, V]
        return logits, tuple(new_state), self.last_cross_attention.mean(dim=(1, 2))  # alpha [B, P]


DECODER_KINDS = {"show_and_tell": ShowAndTell, "attention": ShowAttendTell, "transformer": CaptionTransformer}
_ALIASES = {"show_tell": "show_and_tell", "showandtell": "show_and_tell", "nic": "show_and_tell",
            "lstm": "show_and_tell", "show_attend_tell": "attention", "showattendtell": "attention",
            "sat": "attention", "tfm": "transformer", "caption_transformer": "transformer",
            "captiontransformer": "transformer"}


def canonical_kind(kind: str) -> str:
    """Map a decoder name or alias ("sat", "show_tell", "tfm", ...) to `show_and_tell`, `attention` or `transformer`."""
    key = kind.lower().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    if key not in DECODER_KINDS:
        raise ValueError(f"Unknown decoder kind {kind!r}; use one of {', '.join(DECODER_KINDS)}.")
    return key


def build_decoder(kind: str, vocab_size: int, feature_dim: int, cfg: LabConfig) -> nn.Module:
    """Build the decoder `kind` ("show_and_tell", "attention" or "transformer") with every setting from `cfg`.

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
    if kind == "transformer":  # its own sizes: transformer_dim, transformer_layers, num_heads (FFN 4x the dim)
        return CaptionTransformer(vocab_size, feature_dim, dim=cfg.transformer_dim, num_layers=cfg.transformer_layers,
                                  num_heads=cfg.num_heads, dropout=cfg.dropout, max_len=cfg.max_caption_len,
                                  num_positions=cfg.grid_size ** 2 if cfg.position_embedding else None,
                                  feature_norm=bool(cfg.feature_norm))
    return ShowAttendTell(**common, attention_dim=cfg.attention_dim, deep_output=bool(cfg.deep_output),
                          num_positions=cfg.grid_size ** 2 if cfg.position_embedding else None,
                          feature_norm=bool(cfg.feature_norm), adapter_dim=cfg.hidden_dim if cfg.adapter else None)


def from_spec(spec) -> nn.Module:
    """Rebuild a decoder from its constructor arguments plus "kind" (what checkpoints store: `train.decoder_spec`)."""
    arguments = dict(spec)
    kind = canonical_kind(arguments.pop("kind"))
    return DECODER_KINDS[kind](**arguments)


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of a module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)

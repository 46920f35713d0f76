"""Shared by the decoder tests (test_decoders, test_transformer_decoder): one small teacher-forcing batch."""

import torch

B, P, C, V, T = 4, 6, 10, 17, 8  # batch, grid positions, feature channels, vocabulary, caption tokens
LENGTHS = torch.tensor([8, 3, 5, 2])  # one full caption, the shortest possible (<start> <end>) and two between


def make_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features [B, P, C], captions [B, T] (<start>=1, random words, <end>=2, then <pad>=0) and their lengths [B]."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(B, P, C, generator=gen)
    captions = torch.randint(4, V, (B, T), generator=gen)
    captions[:, 0] = 1
    for row, length in enumerate(LENGTHS.tolist()):
        captions[row, length - 1] = 2  # <end>
        captions[row, length:] = 0  # <pad>
    return features, captions, LENGTHS.clone()


def garbage_after_the_end(captions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """`captions` [B, T] with random words instead of <pad> after each caption's end: a decoder whose valid steps
    change when these do lets padding leak backwards."""
    changed = captions.clone()
    for row, length in enumerate(lengths.tolist()):
        changed[row, length:] = torch.arange(length, T) % (V - 4) + 4
    return changed

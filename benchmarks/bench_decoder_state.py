"""How the decoders keep their generation state, timed inside the SCST sampling step: the library's layout against
the plain one it replaced, written out below as a reference class with the library's weights.

- Transformer: four tensors per layer (`CaptionTransformer.init_state`) against one stack of the layers per tensor
  `[B, layers, heads, P or t, d]` (`StackedStateTransformer`). A step that picks layer i out of a stack
  (`memory_keys[:, i]`) is cheap forward, but its backward pass writes a zero tensor of the whole stack and adds
  the layer's gradient into it, for every layer at every step, and the word cache is stacked anew at every step.
- Attention LSTM: the grid in the state already in autocast's dtype (`ShowAttendTell.init_state`) against the
  float32 grid (`GridCastEveryStep`), which autocast casts anew in every step's context product, and whose
  gradient it casts back in the backward pass.

SCST runs the backward pass through every sampled word, so the layout sets how many SCST batches fit in its
minutes. What is timed: `bench_scst_sampling.scst_step_seconds` (the flickr8k profile's SCST batch, sampled with
the autograd graph of every step, as the library did for both decoders when this was recorded: `one_pass=False`,
while the Transformer now scores its samples in one pass, bench_scst_one_pass.py; then the backward pass, under
the profile's mixed precision) with the two layouts alternating, `--repeats` pairs, on the same weights and seeds
(they draw the same tokens: checked at every pair).
Sizes as in `bench_scst_sampling.py`; random weights and features.

`--steps xe` times the attention LSTM's cross-entropy training step instead (its teacher-forced `forward` casts
the grid once too; the reference leaves it float32 there as well): whether the cast changes how long the LSTM's
cross-entropy training takes, which sets the Transformer's epochs at equal minutes in bench_beyond.py. Captions of
8 to 20 tokens, random words.

    python benchmarks/bench_decoder_state.py --label cpu-2cores
    python benchmarks/bench_decoder_state.py --steps xe --repeats 15 --label cpu-2cores-xe
    python benchmarks/bench_decoder_state.py --repeats 2 --images 8 --out /tmp/t.json --label smoke

Run from the repository root.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scst_sampling import (  # noqa: E402
    add_run_arguments,
    add_step_arguments,
    alternate,
    measure_and_record,
    ratio_summary,
    scst_step_seconds,
)

from labutils import decoders, scst, train  # noqa: E402
from labutils.vocab import Vocabulary  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "decoder_state.json"
GOAL = "SCST step with the library's state faster than with the reference layout (ratio > 1), same tokens"
LAYOUTS = ("library", "reference")


class StackedStateTransformer(decoders.CaptionTransformer):
    """The reference layout: state = (memory keys, memory values, word keys, word values), each [B, L, h, ., d]."""

    def init_state(self, features):
        pairs = self.memory_keys_values(features)  # per layer: [B, h, P, d] each
        keys, values = torch.stack([k for k, _ in pairs], dim=1), torch.stack([v for _, v in pairs], dim=1)
        empty = keys.new_zeros(keys.size(0), self.num_layers, self.num_heads, 0, self.dim // self.num_heads)
        return keys, values, empty, empty.clone()

    def step(self, tokens, state):
        memory_keys, memory_values, past_keys, past_values = state
        position = torch.tensor([min(past_keys.size(3), self.max_len - 1)], device=tokens.device)
        x = self.embed(tokens.unsqueeze(1), position)  # [B, 1, D]
        new_keys, new_values, maps = [], [], []
        for i, layer in enumerate(self.layers):
            x, weights, keys, values = layer.step(x, (memory_keys[:, i], memory_values[:, i]),
                                                  past_keys[:, i], past_values[:, i])
            new_keys.append(keys)
            new_values.append(values)
            maps.append(weights[:, :, 0])
        self.last_cross_attention = torch.stack(maps, dim=1)  # [B, L, h, P]
        state = (memory_keys, memory_values, torch.stack(new_keys, dim=1), torch.stack(new_values, dim=1))
        return self.fc(self.final_norm(x[:, 0])), state, self.last_cross_attention.mean(dim=(1, 2))

    def teacher_forced(self, state, inputs, keep):
        memory_kv = [(state[0][:, i], state[1][:, i]) for i in range(self.num_layers)]
        return self.fc(self.final_norm(self.words_pass(memory_kv, inputs)[0][keep]))


@contextlib.contextmanager
def grid_left_float32():
    """`decoders.in_autocast_dtype` made a no-op while it lasts: autocast then casts the float32 grid at every use,
    as it did before the library cast it once."""
    cast, decoders.in_autocast_dtype = decoders.in_autocast_dtype, lambda features: features
    try:
        yield
    finally:
        decoders.in_autocast_dtype = cast


class GridCastEveryStep(decoders.ShowAttendTell):
    """The reference state of the attention LSTM: the grid stays float32 in generation (`init_state`) and in
    teacher forcing (`forward`), so autocast casts it at every step."""

    def init_state(self, features):
        with grid_left_float32():
            return super().init_state(features)

    def forward(self, features, captions, lengths):
        with grid_left_float32():
            return super().forward(features, captions, lengths)


REFERENCES = {"transformer": StackedStateTransformer, "attention": GridCastEveryStep}


def pair_of_decoders(kind: str, cfg, vocab_size: int, feature_dim: int) -> dict:
    """The library's decoder and its reference with the same weights, ready for SCST (training mode)."""
    library = decoders.build_decoder(kind, vocab_size, feature_dim, cfg)
    reference = REFERENCES[kind](**{k: v for k, v in train.decoder_spec(library).items() if k != "kind"})
    reference.load_state_dict(library.state_dict())
    return {"library": scst.policy_copy(library).train(), "reference": scst.policy_copy(reference).train()}


def same_tokens(models: dict, features, vocab, args, seed: int) -> bool:
    """Whether both layouts sample the same captions from the same seed (the two compute the same thing)."""
    drawn = [scst.sample_with_log_probs(m, features, vocab, args.samples, args.max_len,
                                        torch.Generator().manual_seed(seed), one_pass=False).tokens
             for m in models.values()]
    return torch.equal(*drawn)


def xe_step_seconds(decoder, features, captions, lengths, pad_id: int, amp) -> float:
    """Seconds of one cross-entropy training step: the teacher-forced pass and its backward pass."""
    started = time.perf_counter()
    with amp.autocast():
        loss = scst.reference_cross_entropy(decoder, features, captions, lengths, pad_id)
    loss.backward()
    seconds = time.perf_counter() - started
    decoder.zero_grad(set_to_none=True)
    return seconds


def measure_xe(cfg, args) -> dict:
    """Seconds per cross-entropy step of the attention LSTM with each way of keeping its grid, alternating, and the
    ratio reference / library of each pair (the Transformer's teacher-forced pass has no state to lay out)."""
    torch.manual_seed(0)
    vocab = Vocabulary([f"w{i}" for i in range(args.vocab_size - 4)])  # + <pad> <start> <end> <unk>
    models = pair_of_decoders("attention", cfg, len(vocab), args.feature_dim)
    features = torch.randn(args.images, cfg.grid_size ** 2, args.feature_dim)  # [B, P, C]
    lengths = torch.randint(8, 21, (args.images,))  # [B] tokens, <start> and <end> included
    captions = torch.randint(4, len(vocab), (args.images, int(lengths.max())))  # [B, T]
    captions[torch.arange(captions.size(1)) >= lengths[:, None]] = vocab.pad_id  # [B, T]: padded after the caption
    amp = train.MixedPrecision.for_config(cfg, "cpu")

    def step(name, seed, warm_up):
        rows = slice(2) if warm_up else slice(None)
        return xe_step_seconds(models[name], features[rows], captions[rows], lengths[rows], vocab.pad_id, amp)

    def check(seed):
        with torch.no_grad(), amp.autocast():
            losses = [scst.reference_cross_entropy(m, features, captions, lengths, vocab.pad_id)
                      for m in models.values()]
        if not torch.equal(*losses):
            raise RuntimeError("the two layouts gave different losses: the reference is out of date")

    with train.cpu_threads(cfg.cpu_threads):
        times = alternate(step, list(LAYOUTS), args.repeats, check)
    return {"decoder": "attention", "layers": None, "step": "cross-entropy", "reference": GridCastEveryStep.__name__,
            "rows": args.images, "vocab_size": len(vocab),
            **ratio_summary(times, "reference", "library", "reference_over_library")}


def measure(item: tuple[str, int | None], cfg, args) -> dict:
    """Seconds per SCST step (or, for item ("attention", "xe"), cross-entropy step) of decoder `item` =
    (kind, layers) with each layout, alternating, and the ratio reference / library of each pair."""
    if item == ("attention", "xe"):
        return measure_xe(cfg, args)
    kind, layers = item
    cfg = cfg.replace(transformer_layers=layers) if layers else cfg
    torch.manual_seed(0)
    vocab = Vocabulary([f"w{i}" for i in range(args.vocab_size - 4)])  # + <pad> <start> <end> <unk>
    models = pair_of_decoders(kind, cfg, len(vocab), args.feature_dim)
    features = torch.randn(args.images, cfg.grid_size ** 2, args.feature_dim)  # [B, P, C]
    amp = train.MixedPrecision.for_config(cfg, "cpu")

    def step(name, seed, warm_up):
        return scst_step_seconds(models[name], features[:2] if warm_up else features, vocab, args, amp, seed,
                                 one_pass=False)

    def check(seed):
        with torch.no_grad(), amp.autocast():
            if not same_tokens(models, features, vocab, args, seed):
                raise RuntimeError("the two layouts sampled different captions: the reference is out of date")

    with train.cpu_threads(cfg.cpu_threads):
        times = alternate(step, list(LAYOUTS), args.repeats, check)
    return {"decoder": kind, "layers": layers, "step": "SCST", "reference": REFERENCES[kind].__name__,
            "rows": args.images * args.samples, "vocab_size": len(vocab),
            **ratio_summary(times, "reference", "library", "reference_over_library")}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_arguments(parser)
    parser.add_argument("--kinds", nargs="+", default=["attention", "transformer"],
                        choices=["attention", "transformer"])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 3], help="Transformer layer counts to time")
    parser.add_argument("--steps", nargs="+", default=["scst"], choices=["scst", "xe"],
                        help="which training steps to time: SCST's (each of --kinds), the attention LSTM's "
                             "cross-entropy step")
    add_run_arguments(parser, RESULTS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    items = [(kind, layers) for kind in args.kinds for layers in (args.layers if kind == "transformer" else [None])
             if "scst" in args.steps]
    items += [("attention", "xe")] if "xe" in args.steps else []
    return measure_and_record(argv, args, items, measure, "bench_decoder_state.py", GOAL)


if __name__ == "__main__":
    raise SystemExit(main())

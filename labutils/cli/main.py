"""`python -m labutils COMMAND`: run the notebooks, caption images, prepare a profile, re-record references."""

from __future__ import annotations

import importlib
import sys

from ..config import get_config
from ..infra.datasets import ensure_dataset

# Each command's module is imported only when that command runs, so `run` or `--help` do not load torch.
COMMANDS = {"run": "labutils.infra.runner", "caption": "labutils.cli.caption", "prepare": "labutils.cli.prepare",
            "demo": "labutils.cli.demo",
            "refs": "labutils.infra.notebook_refs", "layout": "labutils.infra.layout",
            "notebook-header": "labutils.infra.colab", "alt-text": "labutils.cli.alt_text",
            "video": "labutils.cli.video"}

USAGE = """usage: python -m labutils COMMAND [...]

commands:
  run       execute the lab's notebooks in order and print a summary
  caption   caption one or more images with a trained checkpoint; --speak reads each caption aloud into a WAV
  demo      a local web page: caption a photo, see where the model looked, hear it (needs gradio)
  alt-text  write alt text for a folder of photos: an accessible HTML gallery, a CSV, optionally EXIF/XMP
  video     caption a video scene by scene into WebVTT subtitles
  dataset   generate (quick) or prepare (flickr8k, coco) the profile's dataset
  prepare   before a workshop: download, resize once and build the feature cache (--help for options)
  refs      re-record the notebooks' reference outputs for nbval (maintainers)
  layout    list the package's modules floor by floor (maintainers)
  notebook-header  regenerate the notebooks' Colab badge and install cell from the repository address (maintainers)

`python -m labutils COMMAND --help` shows a command's options."""


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a sub-command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command in COMMANDS:
        return importlib.import_module(COMMANDS[command]).main(rest)
    if command == "dataset":
        try:
            cfg = get_config(rest[0] if rest else None)
        except ValueError as err:  # an unknown or renamed profile: its one sentence, not a traceback
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(ensure_dataset(cfg))
        return 0
    print(f"Unknown command {command!r}; run `python -m labutils --help` to see the commands.", file=sys.stderr)
    return 2

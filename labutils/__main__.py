"""Command line: `python -m labutils run` (execute the notebooks) and `python -m labutils caption` (caption images)."""

from __future__ import annotations

import sys

USAGE = """usage: python -m labutils COMMAND [...]

commands:
  run       execute the lab's notebooks in order and print a summary
  caption   caption one or more images with a trained checkpoint
  dataset   generate (quick) or prepare (full) the profile's dataset
  prepare   before a workshop: download, resize once and build the feature cache (--help for options)
  refs      re-record the notebooks' reference outputs for nbval (maintainers)

`python -m labutils COMMAND --help` shows a command's options."""


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a sub-command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "run":
        from .runner import main as run_main

        return run_main(rest)
    if command == "caption":
        from .caption_cli import main as caption_main

        return caption_main(rest)
    if command == "prepare":
        from .prepare import main as prepare_main

        return prepare_main(rest)
    if command == "refs":
        from .notebook_refs import main as refs_main

        return refs_main(rest)
    if command == "dataset":
        from .coco import ensure_dataset
        from .config import get_config

        profile = rest[0] if rest else None
        print(ensure_dataset(get_config(profile)))
        return 0
    print(f"Unknown command {command!r}; run `python -m labutils --help` to see the commands.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

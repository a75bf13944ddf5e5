"""``inversionview ioi ...``: the IOI case study's commands (issue 15)."""


from pathlib import Path
from typing import Annotated, Optional

import typer

ioi_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                      help="The indirect-object-identification case study: prompts, the "
                           "training mixture, the circuit's heads and their readings.")


def register(app: typer.Typer) -> None:
    """Add the ``ioi`` command group to ``app``."""
    from inversionview import options
    from inversionview.cli import ForceOpt, JsonOpt, SeedOpt, _emit
    from inversionview.options import Range

    IOI_LINES = Range("lines", 1, 100_000_000)

    @ioi_app.command("corpus")
    def corpus_command(
        out: Annotated[Path, typer.Option("--out", help="The .txt file to write (one text "
                                          "per line, for `inversionview train-lm --corpus`).")],
        lines: Annotated[int, typer.Option("--lines", help="Texts to write.",
                                           callback=IOI_LINES.callback)] = 400_000,
        text: Annotated[Optional[Path], typer.Option(
            "--text", help="General text mixed in (a .txt file, one text per line; "
            "default: none, its share goes to repeated runs of words).")] = None,
        seed: SeedOpt = 0,
        force: ForceOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Write the bundled IOI model's training mixture: IOI prompts of the train templates
        with their answers, controls (ABC, give-back), repeated runs of words, general text."""
        from inversionview.files import atomic_path
        from inversionview.ioi.corpus import MIXTURE, mixture_lines
        from inversionview.text.sources import read_texts

        options.check_output_file(out, "--out", (".txt",), force)
        text_lines = read_texts(text) if text is not None else []
        written = mixture_lines(lines, seed, text_lines)
        with atomic_path(out) as temporary:
            temporary.write_text("\n".join(written) + "\n", encoding="utf-8")
        _emit({"out": str(out), "lines": len(written), "seed": seed,
               "text": None if text is None else str(text), "mixture": MIXTURE}, as_json,
              f"wrote {len(written):,} texts to {out} (seed {seed})")

    app.add_typer(ioi_app, name="ioi")

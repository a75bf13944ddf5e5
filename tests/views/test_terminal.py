"""The terminal view of a query result."""


def test_attribute_columns_fit_their_widest_value():
    """Issue 31: on the factual model "Republic of the Congo" pushed its row's columns out of
    line and the agreement table cut the template to `The capita`. Columns now grow to their
    widest value (up to MAX_CELL, past which a value ends in "…") and the rows line up."""
    import re

    from cli_runner import invoke

    from inversionview.views.terminal import MAX_CELL

    result = invoke(["query", "lm-factual", "--input", "The capital of France is", "--site", "a3.1",
                     "--position", "END", "--candidates", "64", "--search", "0", "--threads", "1"])
    assert result.exit_code == 0, result.stderr
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in result.stdout.splitlines()]
    header = next(i for i, line in enumerate(lines) if line.startswith("distance "))
    end = next(i for i in range(header, len(lines)) if lines[i].startswith("showing "))
    columns = lines[header].index("  ×")  # where the attribute cells end
    rows = [line for line in lines[header + 1: end] if not line.startswith(("─", "  ["))]
    assert len(rows) > 2 and all(len(row) >= columns and row[columns - 1] != " " for row in rows)
    agreement = lines[lines.index("attribute agreement with the query (the decoder's distinct "
                                  "well-formed samples):") + 1:]
    agreement = [line for line in agreement[: next((i for i, l in enumerate(agreement) if not l), None)]]
    assert len({len(line) for line in agreement}) == 1  # every row as wide as the header
    template = next(line for line in agreement if line.startswith("template"))
    assert "…" in template and len(template.split("…")[0].split(None, 1)[1]) == MAX_CELL - 1

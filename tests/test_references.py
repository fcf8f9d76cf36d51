"""benchmarks.references runs end to end at its --quick budget (the same code as the full benchmark)."""

import pytest

from benchmarks import references


@pytest.mark.slow
def test_quick_references_write_every_row(tmp_path):
    output = tmp_path / "references.md"
    assert references.main(["--quick", "--output", str(output)]) == 0
    text = output.read_text()
    assert "a tiny budget to check the script, not a result" in text and "finished." in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| source")]
    assert len(rows) == len(references.ROWS)
    assert "not run" not in text
    for row in rows:  # every row measured something: a mean, and with 2 seeds a spread
        ours = row.rsplit("|", 2)[1]
        assert "+-" in ours and "(n=2)" in ours, row

"""`plait bench migration`: a migrated call's output equals the unmigrated one's; the table and the JSON say what the
pause and the recompute took; bad input exits 2."""

from __future__ import annotations

import json

from plait.cli import main as cli_main
from tests.served_process import TINY_ARGS


def test_migration_bench_checks_outputs_and_writes_json(tmp_path, capsys):
    output = tmp_path / "migration.json"
    args = ["bench", "migration", "--prompt-lens", "48,600", "--repeats", "1", "--output", str(output), *TINY_ARGS]
    assert cli_main(args) == 0
    results = json.loads(output.read_text())["results"]
    assert [r["prompt_tokens"] for r in results] == [48, 600]
    for result in results:
        assert result["output_equal"] and result["kv_tokens_copied"] >= result["prompt_tokens"]
        assert result["pause_s"][0] > 0 and result["recompute_s"][0] > 0
    assert "recompute / pause" in capsys.readouterr().out


def test_bad_lengths_exit_2(capsys):
    assert cli_main(["bench", "migration", "--prompt-lens", "a,b", *TINY_ARGS]) == 2
    assert "--prompt-lens" in capsys.readouterr().err

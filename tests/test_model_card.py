"""The model card's MSRC tables are the ones rendered from the recorded ``wfss eval --json`` cells."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_model_card_tables_match_the_recorded_eval_cells():
    rendered = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "msrc_table.py"), "--results",
         str(ROOT / "benchmarks" / "results" / "msrc-table.jsonl"), "--render"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    tables = [t.strip() for t in rendered.strip().split("\n\n")]
    card = (ROOT / "napari_wfss" / "models" / "default" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert len(tables) >= 2 and all(t.startswith("| ") for t in tables[:2])
    for table in tables[:2]:  # the method table and the per-class table
        assert table in card, table.splitlines()[0]


def test_model_card_clutter_tables_match_the_recorded_run():
    rendered = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "clutter_scenes.py"), "--render",
         str(ROOT / "benchmarks" / "results" / "clutter-scenes.jsonl"), "--seed", "0"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    tables = [t.strip() for t in rendered.strip().split("\n\n")]
    card = (ROOT / "napari_wfss" / "models" / "default" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert len(tables) == 4 and all("| shipped |" in t for t in tables)
    for table in tables:  # tags and its presence study, then masks and its
        assert table in card, table.splitlines()[0]

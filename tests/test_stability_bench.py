"""bench/stability.py: the table and summary of several seeded runs, and the lesions.py
commands of each recipe (no training here: bench/stability.py --runs 2 --epochs 1 is the smoke run)."""
import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import stability  # noqa: E402


def metrics(tj, j, m):
    return {"isic": {"macro_average": {"threshold_jaccard": tj, "jaccard": j}}, "mask_map": {"mAP@0.5": m},
            "num_images": 40}


def test_rows_summary_and_table():
    rows = [stability.run_row(metrics(0.78, 0.80, 0.9), 1, 452.0), stability.run_row(metrics(0.12, 0.30, 0.2), 2, 470.4),
            stability.run_row(metrics(0.70, 0.75, 0.8), 3, 460.0)]
    summary = stability.summarise(rows)
    assert summary["threshold_jaccard"] == {"min": 0.12, "median": 0.70, "max": 0.78}
    assert summary["wall_s"]["median"] == 460.0 and summary["mask_map"]["max"] == 0.9
    table = stability.markdown(rows, summary, 1.93, "quick recipe, 3 seeds")
    lines = table.splitlines()
    assert "| 2 | 7 min 50 s | 0.120 | 0.300 | 0.200 |" in lines
    assert "| **median** | 7 min 40 s | 0.700 | 0.750 | 0.800 |" in lines
    assert lines[-1] == "Machine: bare ResNet-50 training step at 512, batch 2: 1.93 s."


def test_commands_of_both_recipes(tmp_path):
    args = argparse.Namespace(recipe="quick", split_seed=42, minutes=None, data=None)
    argv = stability.train_argv(args, 5, tmp_path, ["NORM=gn"])
    assert argv[:4] == ["--mode", "train", "--dataset", "synthetic"] and argv[-2:] == ["--set", "NORM=gn"]
    assert argv[argv.index("--seed") + 1] == "5" and argv[argv.index("--split-seed") + 1] == "42"

    args.recipe, args.data, args.minutes = "real", str(tmp_path), 30.0
    argv = stability.train_argv(args, 5, tmp_path / "logs", ["NORM=gn", "PRECISE_BN_BATCHES=100"])
    assert argv[argv.index("--seed") + 1] == "5"
    assert argv[argv.index("--split-seed") + 1] == "42"  # one validation set for every seed
    assert argv[argv.index("--minutes") + 1] == "30"
    assert "NORM=\"gn\"" in argv and "PRECISE_BN_BATCHES=100" in argv and "AUGMENTATION=\"geometric\"" in argv

"""benchmarks/dataset.py: the table it writes from finished cells."""
import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "dataset.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_dataset", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cell(ipc, students, baselines=None, teacher=None):
    card = {"ipc": ipc, "device": "cpu", "epochs": 300}
    return {"card": card, "students": students, "baselines": baselines or {}, "teacher": teacher or {}}


def student(acc, soft=False, kd=None, curve=None):
    m = {"accuracy": acc, "accuracy_std": 0.5, "soft_labels": soft, "iterations": 100, "distill_s": 12.0,
         "curve": curve or []}
    if kd is not None:
        m.update(kd_random_real=kd, kd_random_real_std=1.0)
    return m


def test_table_has_baselines_kd_reference_and_curves(tmp_path):
    bench = load_bench()
    (tmp_path / "cells").mkdir()
    rr = {"random_real": {"accuracy": 60.0}, "random_real_noaug": {"accuracy": 58.0}}
    cells = {"ipc1_random_real": cell(1, {"random_real": student(60.0)}, rr, {"accuracy": 94.0, "model": "full"}),
             "ipc1_sre2l": cell(1, {"sre2l": student(40.0, soft=True, kd=66.0)}),
             "ipc1_mtt": cell(1, {"mtt": student(70.0, curve=[{"iteration": 50, "accuracy": 65.0},
                                                               {"iteration": 100, "accuracy": 70.0}])})}
    for k, v in cells.items():
        (tmp_path / "cells" / f"{k}.json").write_text(json.dumps(v))
    bench.write_table(tmp_path, "t", 60.0)
    text = (tmp_path / "results.md").read_text()
    assert "Full data: 94.00%" in text
    row = next(line for line in text.splitlines() if "| sre2l |" in line)
    assert "| yes |" in row and "66.00 +- 1.00" in row and "| 60.00 | 58.00 |" in row
    assert "IPC 1 mtt: 50: 65.0, 100: 70.0" in text


def test_tier_cells_name_registered_methods_with_valid_params():
    bench = load_bench()
    from distill.registry import methods

    for tier in bench.TIERS.values():
        labels = set()
        for ipc, cells in tier["methods"].items():
            for name, iters, params, *rest in cells:
                methods.get(name, "dataset").validate(params, f"{name}.params")  # raises on an unknown or bad param
                label = rest[0] if rest else name
                assert (ipc, label) not in labels, f"two cells named {label} at IPC {ipc}"
                labels.add((ipc, label))

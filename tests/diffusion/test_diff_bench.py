"""`distill bench` with a lower-is-better primary metric (the diffusion suite's SWD)."""
from distill.bench import load_suite, write_outputs


def test_diff_bench_sorts_lower_is_better_first(tmp_path):
    suite = load_suite("benchmarks/diffusion.yaml", output_dir=str(tmp_path))
    assert suite.baselines == [] and len(suite.cells()) == 30
    res = [{"recipe": "moons", "method": m, "method_name": m, "seed": s, "primary_metric": "swd",
            "higher_is_better": False, "last": v + 0.01 * s, "best": v, "teacher": 0.03, "wall_s": 1.0, "metrics": {}}
           for m, v in (("progressive", 0.3), ("reflow", 0.05), ("dmd", 0.1)) for s in (0, 1)]
    write_outputs(suite, res)
    md = (tmp_path / "results.md").read_text()
    assert "lower is better" in md
    assert md.index("| reflow") < md.index("| dmd") < md.index("| progressive")

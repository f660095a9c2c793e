"""`mcgraph bench`: the quick mode runs end to end, its JSON validates against the shipped schema, and the
reports (Markdown table, README "Results" section, plots) are generated from it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mcgraph.bench.report import SCHEMA_PATH, load_schema, results_section, validate
from mcgraph.bench.settings import BenchSettings, quick_settings
from mcgraph.bench.summary import pareto_front
from mcgraph.cli.main import main
from tests.conftest import TINY_WEIGHTS_STEP


@pytest.fixture(scope="module")
def quick_run(tiny_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    code = main(["bench", "--quick", "--peers", "--weights", str(tiny_weights), "--steps", "12",
                 "--peer-steps", "8", "--thresholds", "motioncache=0.05,0.1", "--out", str(out), "--no-progress",
                 "--threads", "1"])
    assert code == 0
    return out, json.loads((out / "bench.json").read_text())


def test_quick_bench_writes_valid_json(quick_run):
    out, data = quick_run
    validate(data)  # the shipped schema
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(load_schema())
    assert SCHEMA_PATH.name == "schema.json"
    env = data["environment"]
    assert env["torch"] == torch.__version__ and env["checkpoint"]["step"] == TINY_WEIGHTS_STEP and env["threads"] == [1]
    s = data["settings"]
    assert s["quick"] and s["steps"] == 12 and s["frames"] == 12 and s["thresholds"]["motioncache"] == [0.05, 0.1]
    assert data["generation"]["segments"] == 2 and data["generation"]["calls_per_row"] == 2
    assert data["generation"]["reproducible"]  # every timed generation reproduced the counted one exactly
    for name in ("bench.json", "report.md", "results.md", "pareto.png", "computed_fraction.png", "strip.png",
                 "tokens_psnr.png"):
        assert (out / name).is_file(), name


def test_quick_bench_figures_are_consistent(quick_run):
    _, data = quick_run
    runs = {r["id"]: r for r in data["runs"]}
    assert set(runs) == {"none", "teacache-0.1", "flowcache-0.1", "motioncache-hidden-0.05",
                         "motioncache-hidden-0.1", "placebo-hidden-0.05", "placebo-hidden-0.1", "oracle-0.2",
                         "oracle-0.6"}
    base = data["baseline"]["per_seed"][0]
    assert base["flops"] > 0 and base["model_calls"] == 2 * data["generation"]["rows"]
    none = runs["none"]["summary"]
    # the captured graph without a cache computes exactly what the model computes
    assert none["psnr"] == "inf" and none["identical"] and none["flop_speedup"] == pytest.approx(1.0)
    assert none["executed_fraction"] == 1.0 and none["peak_cache_bytes"] == 0
    for r in runs.values():
        su = r["summary"]
        if r["policy"] == "oracle":
            continue  # untimed: test_quick_bench_controls
        assert su["speedup"]["1"] > 0 and su["wall_s"]["1"] > 0
        assert su["efficiency"]["1"] == pytest.approx(su["speedup"]["1"] / su["flop_speedup"])
        seed = r["per_seed"][0]
        assert seed["model_calls"] == base["model_calls"]
        assert len(seed["wall_repeats"]["1"]) == data["settings"]["repeats"]
        if r["policy"] == "none":
            continue
        # caching skips arithmetic: fewer FLOPs, fewer tokens; the FLOP ratio follows the tokens computed
        assert su["flop_speedup"] > 1.0 and 0 < su["executed_fraction"] < 1
        assert su["peak_cache_bytes"] > 0
        assert seed["paths"]["full"] + seed["paths"]["subset"] + seed["paths"]["skip"] == seed["calls"]
        assert len(r["per_row_executed_fraction"]) == data["generation"]["rows"]
        assert all(0 <= x <= 1 for x in r["per_row_executed_fraction"])
        assert su["psnr"] == "inf" or su["psnr"] > 10
        assert 0 < su["ssim"] <= 1 and su["latent_rel_error"] >= 0
    # a higher threshold never computes more (MotionCache, same source)
    lo, hi = runs["motioncache-hidden-0.05"]["summary"], runs["motioncache-hidden-0.1"]["summary"]
    assert hi["flops"] <= lo["flops"]
    assert any(r["pareto"] for r in runs.values())


def test_quick_bench_peers(quick_run):
    _, data = quick_run
    peers = data["peers"]
    assert peers["model"]["class"] == "diffusers.WanTransformer3DModel"
    methods = {(r["framework"], r["method"]) for r in peers["runs"]}
    assert {("diffusers", "first_block_cache"), ("diffusers", "pyramid_attention_broadcast"),
            ("diffusers", "taylorseer"), ("mcgraph", "flowcache"), ("mcgraph", "motioncache")} <= methods
    assert peers["baseline"]["flops"] > 0
    for r in peers["runs"]:
        assert r["rel_error"] >= 0 and r["speedup"]["1"] > 0 and r["flops"] > 0
        if r["framework"] == "mcgraph":
            assert 0 < r["executed_fraction"] <= 1


def test_reports_and_readme_section(quick_run, tmp_path, capsys):
    out, data = quick_run
    report = (out / "report.md").read_text()
    assert "| policy | τ |" in report and "motioncache[hidden]" in report and "FirstBlockCache" in report
    assert "placebo[hidden]" in report and "| oracle | f=0.2 |" in report
    assert "### Quality at matched compute" in report and "### Cached-video gates" in report
    assert "| uncached | " in report.split("### Cached-video gates")[1]
    section = (out / "results.md").read_text()
    assert "### Quality at matched compute" in section
    assert section.startswith("## Results")
    assert "mcgraph bench --quick" in section and "--peers" in section  # the command that reproduces it
    assert "pareto.png" in section and "Peer comparison" in section
    # regenerate from the JSON alone, with the README's plot folder
    code = main(["bench", "--from-json", str(out / "bench.json"), "--out", str(tmp_path), "--readme",
                 "--readme-plots-dir", "docs/bench"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "## Results" in printed and "docs/bench/pareto.png" in printed
    assert (tmp_path / "results.md").read_text().startswith("## Results")
    assert (tmp_path / "pareto.png").is_file()
    assert results_section(data, "x").count("\n") > 10


def test_schema_rejects_malformed_results(quick_run):
    import jsonschema

    _, data = quick_run
    bad = json.loads(json.dumps(data))
    bad["runs"][0]["summary"]["speedup"] = {"1": -1}
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
    bad = json.loads(json.dumps(data))
    del bad["environment"]["torch"]
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
    bad = json.loads(json.dumps(data))
    bad["runs"][1]["per_seed"][0]["psnr"] = "infinite"
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)


def test_pareto_front():
    pts = [(1.0, 50.0), (2.0, 40.0), (1.5, 30.0), (3.0, 20.0), (2.0, 45.0)]
    assert pareto_front(pts) == [0, 4, 3]
    assert pareto_front([(1.0, math.inf), (2.0, 30.0)]) == [0, 1]


def test_settings_validation_and_usage_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown policies"):
        BenchSettings(policies=("none", "magic"))
    with pytest.raises(ValueError, match="thresholds"):
        BenchSettings(thresholds={"none": (0.1,)})
    q = quick_settings()
    assert q.quick and q.seeds == (0,) and q.motion_sources == ("hidden",)
    assert main(["bench", "--thresholds", "teacache", "--out", str(tmp_path)]) == 2
    assert main(["bench", "--motion-sources", "pixels", "--out", str(tmp_path)]) == 2
    assert main(["bench", "--overlap", "3", "--out", str(tmp_path)]) == 2  # not whole chunks
    err = capsys.readouterr().err
    assert "overlap_frames=3" in err
    assert main(["bench", "--help"]) == 0
    help_text = capsys.readouterr().out
    for option in ("--quick", "--seeds", "--thresholds", "--threads", "--out", "--repeats", "--motion-sources",
                   "--peers", "--from-json"):
        assert option in help_text


# ------------------------------------------------------------------ controls, gates, matched compute
def test_quick_bench_controls(quick_run):
    """The placebo is MotionCache's sweep with permuted weights; the oracle is untimed and runs the full stack."""
    _, data = quick_run
    runs = {r["id"]: r for r in data["runs"]}
    for tau in (0.05, 0.1):
        pl, mc = runs[f"placebo-hidden-{tau:g}"], runs[f"motioncache-hidden-{tau:g}"]
        assert pl["policy"] == "placebo" and pl["series"] == "placebo[hidden]" and pl["timed"]
        assert pl["config"]["placebo_seed"] == data["settings"]["placebo_seed"] == 0
        assert {k: v for k, v in pl["config"].items() if k != "placebo_seed"} == \
            {k: v for k, v in mc["config"].items() if k != "placebo_seed"}
        assert mc["config"]["placebo_seed"] is None
        assert pl["summary"]["speedup"]["1"] > 0 and 0 < pl["summary"]["executed_fraction"] < 1
    oracles = [runs["oracle-0.2"], runs["oracle-0.6"]]
    for r in oracles:
        su, seed = r["summary"], r["per_seed"][0]
        assert r["policy"] == "oracle" and r["fraction"] == r["config"]["fraction"] and r["threshold"] is None
        assert not r["timed"] and not r["pareto"] and not r["pareto_overall"]
        assert su["wall_s"] is su["speedup"] is su["efficiency"] is None
        assert seed["wall_s"] is seed["speedup"] is seed["wall_repeats"] is None
        assert su["flop_speedup"] == pytest.approx(1.0, abs=0.05)  # the full stack every call
        assert 0 < su["executed_fraction"] < 1 and (su["psnr"] == "inf" or su["psnr"] > 10)
        assert seed["model_calls"] == data["baseline"]["per_seed"][0]["model_calls"]
    assert oracles[0]["summary"]["executed_fraction"] < oracles[1]["summary"]["executed_fraction"]


def test_quick_bench_gates(quick_run):
    from mcgraph.bench.video_gates import GATE_KEYS

    _, data = quick_run
    base = data["baseline"]
    assert set(base["per_seed"][0]["gates"]) == set(GATE_KEYS) and base["summary"]["gates"]["n"] == 1
    real = base["per_seed"][0]["gates"]["changing_fraction_real"]
    for r in data["runs"]:
        g = r["per_seed"][0]["gates"]
        assert set(g) == set(GATE_KEYS) and r["summary"]["gates"]["n"] == 1
        assert g["changing_fraction_real"] == real  # the same real clip for every video of a seed
        assert 0 <= g["outside_fraction"] <= 1 and 0 <= g["label_colours"] <= 1
    # the captured graph without a cache makes the uncached video exactly: the same gate numbers
    none = next(r for r in data["runs"] if r["id"] == "none")
    assert none["per_seed"][0]["gates"] == base["per_seed"][0]["gates"]


def test_quick_bench_matched_compute(quick_run):
    from mcgraph.bench.summary import db_value

    _, data = quick_run
    m = data["matched_compute"]
    assert m["targets"] == data["settings"]["match_fractions"] == [0.3, 0.45, 0.6]
    assert {s["series"] for s in m["series"]} == {r["series"] for r in data["runs"] if r["policy"] != "none"}
    found = 0
    for s in m["series"]:
        rs = [r for r in data["runs"] if r["series"] == s["series"]]
        fr = [r["per_seed"][0]["executed_fraction"] for r in rs]
        ps = [min(100.0, db_value(r["per_seed"][0]["psnr"])) for r in rs]
        for p in s["points"]:
            st = p["psnr"]
            assert st["n"] == len(st["values"]) == len(st["seeds"]) <= 1 and st["lo"] is st["hi"] is None
            inside = min(fr) <= p["target"] <= max(fr)
            assert (st["n"] == 1) == inside  # a value exactly where the sweep brackets the target
            if inside:
                found += 1
                assert min(ps) - 1e-9 <= st["mean"] <= max(ps) + 1e-9
    assert found  # the 0.05/0.1 MotionCache sweep brackets 60 % here


def test_interpolate_at():
    from mcgraph.bench.matched import DB_CAP, interpolate_at

    pts = [(0.8, 50.0), (0.2, 30.0), (0.4, 40.0)]  # unsorted on purpose
    assert interpolate_at(pts, 0.3) == pytest.approx(35.0)
    assert interpolate_at(pts, 0.6) == pytest.approx(45.0)
    assert interpolate_at(pts, 0.4) == pytest.approx(40.0)
    assert interpolate_at(pts, 0.1) is None and interpolate_at(pts, 0.81) is None  # outside the sweep
    assert interpolate_at([(0.3, 33.0)], 0.3) == 33.0 and interpolate_at([(0.3, 33.0)], 0.31) is None
    assert interpolate_at([], 0.5) is None
    assert interpolate_at([(0.2, 40.0), (0.6, math.inf)], 0.4) == pytest.approx((40.0 + DB_CAP) / 2)
    assert interpolate_at([(0.2, 40.0), (0.5, math.nan), (0.6, 60.0), (None, 1.0)], 0.4) == pytest.approx(50.0)


def test_t_interval():
    from mcgraph.bench.matched import t_interval, t_quantile_975

    ci = t_interval([1.0, 2.0, 3.0])
    h = 4.303 * 1.0 / math.sqrt(3)
    assert ci["n"] == 3 and ci["mean"] == pytest.approx(2.0)
    assert (ci["lo"], ci["hi"]) == (pytest.approx(2.0 - h), pytest.approx(2.0 + h))
    ci = t_interval([5.0, None, math.nan, 7.0])  # missing values dropped: n = 2, df = 1
    assert ci["n"] == 2 and ci["hi"] - ci["mean"] == pytest.approx(12.706 * math.sqrt(2) / math.sqrt(2))
    assert t_interval([4.0]) == {"mean": 4.0, "lo": None, "hi": None, "n": 1}
    assert t_interval([]) == {"mean": None, "lo": None, "hi": None, "n": 0}
    assert t_quantile_975(7) == 2.365 and t_quantile_975(30) == 2.042
    assert t_quantile_975(40) == pytest.approx(2.021, abs=1e-3) and t_quantile_975(120) == pytest.approx(1.980, abs=1e-3)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_matched_compute_synthetic():
    from mcgraph.bench.matched import matched_compute, matched_table

    def run(rid, series, per_seed):
        return {"id": rid, "policy": series, "series": series,
                "per_seed": [{"seed": s, "executed_fraction": f, "psnr": p, "psnr_moving": p if p == "inf" else p - 1.0,
                              "psnr_static": None} for s, f, p in per_seed]}

    runs = [run("none", "none", [(0, 1.0, "inf")]),
            run("a-lo", "a", [(0, 0.2, 30.0), (1, 0.2, 32.0), (2, 0.2, 34.0), (3, 0.5, 20.0)]),
            run("a-hi", "a", [(0, 0.6, 40.0), (1, 0.6, 42.0), (2, 0.6, 44.0), (3, 0.6, 21.0)])]
    m = matched_compute(runs, [0.4, 0.7], seeds=[0, 1, 2, 3])
    assert [s["series"] for s in m["series"]] == ["a"] and m["series"][0]["runs"] == ["a-lo", "a-hi"]
    at, out = m["series"][0]["points"]
    assert at["psnr"]["seeds"] == [0, 1, 2]  # seed 3's sweep (0.5..0.6) does not reach 0.4
    assert at["psnr"]["values"] == [pytest.approx(35.0), pytest.approx(37.0), pytest.approx(39.0)]
    h = 4.303 * 2.0 / math.sqrt(3)
    assert at["psnr"]["mean"] == pytest.approx(37.0) and at["psnr"]["hi"] == pytest.approx(37.0 + h)
    assert at["psnr_moving"]["mean"] == pytest.approx(36.0) and at["psnr_static"]["n"] == 0
    assert out["psnr"] == {"mean": None, "lo": None, "hi": None, "n": 0, "seeds": [], "values": []}
    table = matched_table(m)
    assert "| 40% | a | 37.00 [" in table and "outside the sweep" in table


def test_schema_new_fields(quick_run):
    import jsonschema

    _, data = quick_run
    assert data["schema_version"] == 2
    validate(data)
    bad = json.loads(json.dumps(data))
    del bad["matched_compute"]
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
    bad = json.loads(json.dumps(data))
    bad["matched_compute"]["series"][0]["points"][0]["psnr"]["n"] = -1
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
    bad = json.loads(json.dumps(data))
    del bad["runs"][-1]["per_seed"][0]["gates"]["velocity_error"]
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
    bad = json.loads(json.dumps(data))
    del bad["runs"][0]["per_seed"][0]["gates"]
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
    bad = json.loads(json.dumps(data))
    bad["runs"][-1]["policy"] = "magic"
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
    # a version-1 file (written before the controls) still validates, so --from-json keeps working on it
    old = json.loads(json.dumps(data))
    old["schema_version"] = 1
    del old["matched_compute"]
    for r in [old["baseline"], *old["runs"]]:
        r["summary"].pop("gates")
        for s in r["per_seed"]:
            s.pop("gates")
    validate(old)


def test_bench_settings_controls(tmp_path):
    from mcgraph.bench.settings import BENCH_POLICIES, sweep_configs

    s = BenchSettings()
    assert s.seeds == tuple(range(8)) and s.policies == BENCH_POLICIES
    assert {"placebo", "oracle"} <= set(s.policies) and s.oracle_fractions == (0.2, 0.3, 0.45, 0.6)
    cfgs = sweep_configs(BenchSettings(policies=("placebo", "oracle"), motion_sources=("latent", "hidden")), 10.0)
    assert [c.id for c in cfgs] == ["placebo-latent-0.02", "placebo-latent-0.05", "placebo-latent-0.1",
                                    "placebo-latent-0.2", "oracle-0.2", "oracle-0.3", "oracle-0.45", "oracle-0.6"]
    assert all(c.config.placebo_seed == 0 for c in cfgs[:4]) and not any(c.timed for c in cfgs[4:])
    with pytest.raises(ValueError, match="oracle_fractions"):
        BenchSettings(oracle_fractions=(0.0,))
    assert main(["bench", "--match-fractions", "1.5", "--out", str(tmp_path)]) == 2
    assert main(["bench", "--policies", "placebo,nope", "--out", str(tmp_path)]) == 2
    assert main(["bench", "--runtimes", "eager", "--oracle-fractions", "0.3", "--out", str(tmp_path)]) == 2

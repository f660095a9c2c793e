"""Every flag of every command is checked before any work starts: a bad value exits with code 2 and a message
naming the flag, fast, without generating, benchmarking, exporting or writing anything."""

from __future__ import annotations

import time

import pytest

from mcgraph.cli.main import main

# {file}: an existing regular file (nothing can be created under it); {missing}: a path that does not exist;
# {out}: a fresh writable folder
CASES = [
    (["demo", "--out", "{file}/sub"], "--out"),
    (["demo", "--out", "{file}"], "--out"),
    (["demo", "--steps", "0"], "--steps"),
    (["demo", "--frames", "-1"], "--frames"),
    (["demo", "--seed", "-1"], "--seed"),
    (["demo", "--fps", "0"], "--fps"),
    (["demo", "--guidance", "-1"], "--guidance"),
    (["demo", "--shift", "0"], "--shift"),
    (["demo", "--addnoise", "-5"], "--addnoise"),
    (["demo", "--threshold", "nan"], "--threshold"),
    (["demo", "--gif-scale", "0"], "--gif-scale"),
    (["demo", "--weights", "{missing}"], "--weights"),
    (["demo", "--weights", "{out}"], "--weights"),
    (["bench", "--peer-steps", "-5"], "--peer-steps"),
    (["bench", "--seeds", "0,-1"], "--seeds"),
    (["bench", "--oracle-fractions", "0,0.5"], "--oracle-fractions"),
    (["bench", "--match-fractions", "1.5"], "--match-fractions"),
    (["bench", "--repeats", "0"], "--repeats"),
    (["bench", "--steps", "0"], "--steps"),
    (["bench", "--frames", "0"], "--frames"),
    (["bench", "--window", "0"], "--window"),
    (["bench", "--overlap", "-1"], "--overlap"),
    (["bench", "--ar-step", "-1"], "--ar-step"),
    (["bench", "--guidance", "inf"], "--guidance"),
    (["bench", "--shift", "-2"], "--shift"),
    (["bench", "--addnoise", "-1"], "--addnoise"),
    (["bench", "--threads", "0"], "--threads"),
    (["bench", "--weights", "{missing}"], "--weights"),
    (["bench", "--from-json", "{missing}"], "--from-json"),
    (["bench", "--out", "{file}/sub"], "--out"),
    (["bench", "--runtimes", "eager", "--out", "{file}/sub"], "--out"),
    (["export", "{file}/sub/m.onnx"], "FILE"),
    (["export", "{out}"], "FILE"),
    (["export", "{out}/m.onnx", "--shift", "0"], "--shift"),
    (["export", "{out}/m.onnx", "--steps", "0"], "--steps"),
    (["export", "{out}/m.onnx", "--weights", "{missing}"], "--weights"),
    (["inspect", "--dump", "{file}/sub"], "--dump"),
]


@pytest.fixture
def no_work(monkeypatch):
    """Every command's first expensive step fails the test: a usage error must come before it."""
    import mcgraph.bench.demo_run
    import mcgraph.bench.run
    import mcgraph.bench.runtime_bench
    import mcgraph.cli.export
    import mcgraph.compiler.analysis

    def started(*args, **kwargs):
        pytest.fail("the command started working before rejecting a bad flag")

    for module, name in ((mcgraph.bench.demo_run, "run_demo"), (mcgraph.bench.run, "run_bench"),
                         (mcgraph.bench.runtime_bench, "run_runtime_bench"), (mcgraph.cli.export, "build_subject"),
                         (mcgraph.compiler.analysis, "inspect")):
        monkeypatch.setattr(module, name, started)


def _fill(argv, tmp_path) -> list[str]:
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "out").mkdir()
    paths = {"file": tmp_path / "file", "missing": tmp_path / "missing.safetensors", "out": tmp_path / "out"}
    return [a.format(**paths) for a in argv]


@pytest.mark.parametrize("argv, flag", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_a_bad_flag_is_refused_before_any_work(argv, flag, tmp_path, capsys, no_work):
    argv = _fill(argv, tmp_path)
    if argv[0] in ("demo", "bench") and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    start = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err
    message = err.strip().splitlines()[-1]  # argparse prints the usage (every flag) above it
    assert message.startswith(f"mcgraph {argv[0]}: error: ") and flag in message, err
    assert "Traceback" not in err
    assert not list((tmp_path / "out").iterdir())  # nothing written


def test_an_output_folder_is_made_before_the_work(tmp_path, monkeypatch, capsys):
    """demo --out used to be created only when the video was written, after the whole generation."""
    import mcgraph.bench.demo_run
    from mcgraph.bench.settings import SettingsError

    out = tmp_path / "a" / "b"
    seen = []

    def fake_run_demo(out_dir, **kwargs):
        seen.append(out_dir.is_dir())
        raise SettingsError("stop here")

    monkeypatch.setattr(mcgraph.bench.demo_run, "run_demo", fake_run_demo)
    assert main(["demo", "--out", str(out)]) == 2
    assert seen == [True] and "stop here" in capsys.readouterr().err

import os
import subprocess
import sys

import pytest
from PIL import Image

from mcgraph.cli.main import build_parser, main
from mcgraph.zoo.scenes import LABEL_VOCAB_SIZE
from mcgraph.zoo.weights import BUNDLED_WEIGHTS


def run(*argv):
    return main([str(a) for a in argv])


def test_demo_end_to_end(tiny_weights, tmp_path, capsys):
    code = run("demo", "--steps", 2, "--out", tmp_path, "--weights", tiny_weights, "--threads", 1, "--no-progress")
    out = capsys.readouterr().out
    assert code == 0
    # 28 frames = windows [0, 16) and [12, 28); cbs 4, ar_step 4 (lag capped at 2 steps): 8 + 6 rows, CFG x2
    assert "28 frames in 2 window(s), 14 rows, 28 model calls" in out
    with Image.open(tmp_path / "demo.gif") as gif:
        assert gif.n_frames == 28 and gif.size == (128, 128)
    with Image.open(tmp_path / "demo_strip.png") as strip:  # generated row + a rendering of the scene
        assert strip.size == (28 * 64 + 27 * 2, 2 * 64 + 2)


def test_demo_with_label(tiny_weights, tmp_path, capsys):
    code = run("demo", "--steps", 1, "--frames", 4, "--window", 4, "--overlap", 0, "--guidance", 1, "--label",
               "1,5", "--out", tmp_path, "--weights", tiny_weights, "--threads", 1)
    assert code == 0
    assert "1 rows, 1 model calls" in capsys.readouterr().out
    with Image.open(tmp_path / "demo_strip.png") as strip:
        assert strip.size == (4 * 64 + 3 * 2, 64)


def test_help_version_and_usage_errors(tiny_weights, tmp_path, capsys):
    assert run("--help") == 0
    assert "demo" in capsys.readouterr().out
    assert run("demo", "--help") == 0
    help_text = capsys.readouterr().out
    for option in ("--steps", "--threads", "--out", "--seed", "--label", "--guidance", "--weights"):
        assert option in help_text
    assert run("--version") == 0
    assert capsys.readouterr().out.startswith("mcgraph ")
    assert run() == 2  # no command
    assert run("demo", "--bogus") == 2
    assert run("demo", "--steps", 0) == 2
    assert run("demo", "--steps", "many") == 2
    assert run("nosuchcommand") == 2
    assert run("demo", "--label", "1,x", "--weights", tiny_weights) == 2
    assert run("demo", "--label", str(LABEL_VOCAB_SIZE), "--weights", tiny_weights) == 2
    # only known once the model is loaded: the history must be whole chunks of the model's 4 frames
    assert run("demo", "--overlap", 3, "--weights", tiny_weights, "--out", tmp_path) == 2
    assert "overlap_frames" in capsys.readouterr().err


def test_missing_weights_is_a_usage_error(tmp_path, capsys):
    assert run("demo", "--weights", tmp_path / "none.safetensors", "--out", tmp_path) == 2  # checked when parsing
    err = capsys.readouterr().err
    assert "argument --weights: no such file" in err and "none.safetensors" in err and "Traceback" not in err


def test_subcommands_register_from_small_functions(monkeypatch, capsys):
    import mcgraph.cli.main as cli

    def add_hello(subparsers):
        p = subparsers.add_parser("hello-test", help="say hello")
        p.add_argument("--fail", action="store_true")

        def func(args):
            if args.fail:
                raise RuntimeError("boom")
            print("hello")
            return 0

        p.set_defaults(func=func)

    monkeypatch.setattr(cli, "SUBCOMMANDS", [*cli.SUBCOMMANDS, add_hello])
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"demo", "hello-test"} <= set(sub.choices)
    assert main(["hello-test"]) == 0 and capsys.readouterr().out == "hello\n"
    assert main(["hello-test", "--fail"]) == 1
    assert "mcgraph hello-test: error: RuntimeError: boom" in capsys.readouterr().err


def _python(*args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120, **kw)


def test_python_dash_m_and_lazy_imports():
    p = _python("-m", "mcgraph", "--version")
    assert p.returncode == 0 and p.stdout.startswith("mcgraph ")
    p = _python("-m", "mcgraph", "demo", "--no-such-option")
    assert p.returncode == 2 and "unrecognized arguments" in p.stderr
    heavy = ("onnx", "onnxruntime", "onnxscript", "diffusers", "matplotlib")
    code = (
        "import sys, mcgraph, mcgraph.cli, mcgraph.video.sampler, mcgraph.video.schedule, mcgraph.eval.video_io, mcgraph.video.adapters;"
        f"bad = [m for m in {heavy!r} if m in sys.modules]; assert not bad, bad"
    )
    p = _python("-c", code)
    assert p.returncode == 0, p.stderr


@pytest.mark.skipif(not BUNDLED_WEIGHTS.is_file(), reason="bundled weights not written yet (training)")
def test_demo_with_bundled_weights(tmp_path):
    p = _python("-m", "mcgraph", "demo", "--steps", "1", "--frames", "8", "--window", "8", "--overlap", "0",
                "--threads", "1", "--no-progress", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert "8 frames in 1 window(s), 2 rows, 4 model calls" in p.stdout
    assert (tmp_path / "demo.gif").is_file() and (tmp_path / "demo_strip.png").is_file()

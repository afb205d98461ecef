"""Issue 17, as a newcomer meets it: bad levels, leftovers, domains, noise and help.

Every user error is one line on stderr, exit 2, raised before models load or folders are
made; an interrupted or failed diff leaves no empty report folder behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import CORPUS, model_folder, word_dataset
from lensbias.cli import cli, main
from lensbias.compress import CalibConfig, Recipe
from lensbias.concepts.jsonl import write_jsonl
from lensbias.diff import MARKER, DiffConfig, run_diff
from lensbias.errors import LensbiasError
from lensbias.models.tokenizer import BPETokenizer
from lensbias.model_pair import merged_dataset, parse_compress_spec
from lensbias.store import ActivationStore

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--no-sae", "--max-examples", "8", "-q"]


@pytest.fixture()
def model_dir(bpe, tmp_path) -> Path:
    return model_folder(tmp_path / "model", bpe)


@pytest.fixture()
def data_file(tmp_path) -> Path:
    path = tmp_path / "words.jsonl"
    write_jsonl(word_dataset(CORPUS[:8]), path)
    return path


@pytest.fixture()
def calib_file(tmp_path) -> Path:
    path = tmp_path / "calib.txt"
    path.write_text(" ".join(CORPUS * 4))
    return path


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.split("\n") if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lensbias: error: "), err
    return lines[0]


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ------------------------------------------------- items 1, 2, 10: levels and recipes

@pytest.mark.parametrize("args, message", [
    (["--compress", "gptq:nan"], "bits must be a whole number, got nan"),
    (["--compress", "gptq:inf"], "bits must be a whole number, got inf"),
    (["--compress", "rtn:4.5"], "bits must be a whole number, got 4.5"),
    (["--compress", "gptq:0.5"], "bits must be a whole number, got 0.5"),
    (["--compress", "layer-drop:1.5"], "n_drop must be a whole number, got 1.5"),
    (["--compress", "distill:inf"], "n_layers must be a whole number, got inf"),
    (["--compress", "wanda:nan"], "sparsity must be a finite number, got nan"),
    (["--compress", "svd:inf"], "rank_ratio must be a finite number, got inf"),
    (["--compress", "wanda:1.5"], "sparsity must be in [0, 1), got 1.5"),
    (["--compress", "gptq:0"], "bits must be one of (2, 3, 4, 8), got 0"),
    (["--compress", "sparsegpt:3:2"], "N:M pattern needs 0 < N < M"),
    (["--compress", "wanda:0.5", "--calib", "poetry"],
     "calibration domain 'poetry' is neither one of code, prose, mixed, c"),
    (["--compress", "rtn:4", "--calib", "poetry"],
     "calibration domain 'poetry' is neither one of code, prose, mixed, c"),
])
def test_bad_level_or_calib_is_one_line_and_leaves_nothing(args, message, model_dir, data_file,
                                                          tmp_path, capsys):
    before = listing(tmp_path)
    out = tmp_path / "report"
    rc = main(["diff", str(model_dir), *args, "-d", str(data_file), "--out", str(out), *FAST])
    assert rc == 2
    assert message in error_line(capsys)
    assert not out.exists() and listing(tmp_path) == before


def test_whole_levels_are_kept_exact():
    calib = CalibConfig()
    assert parse_compress_spec("rtn:4", calib).params == {"bits": 4}
    assert parse_compress_spec("gptq:4.0", calib).params == {"bits": 4}
    assert type(parse_compress_spec("gptq:3", calib).params["bits"]) is int
    assert parse_compress_spec("layer-drop:1", calib).params == {"n_drop": 1}
    assert parse_compress_spec("wanda:0.25", calib).params == {"sparsity": 0.25}
    assert parse_compress_spec("sparsegpt:2:4", calib).params == {"nm": "2:4"}
    assert parse_compress_spec("magnitude:2:4", calib).params == {"nm": "2:4"}
    with pytest.raises(LensbiasError, match="must be a number"):
        parse_compress_spec("rtn:2:4", calib)


def test_tokenizer_mismatch_leaves_no_folder(model_dir, data_file, tmp_path, capsys):
    other = BPETokenizer.train(["zq xv wk jj " * 20, "qqq zzz xxx vvv"], vocab_size=270)
    other_dir = model_folder(tmp_path / "other", other)
    before = listing(tmp_path)
    out = tmp_path / "report"
    assert main(["diff", str(model_dir), str(other_dir), "-d", str(data_file),
                 "--out", str(out), *FAST]) == 2
    assert "use different tokenizers" in error_line(capsys)
    assert not out.exists() and listing(tmp_path) == before


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs /sys")
def test_unwritable_out_is_one_line(model_dir, data_file, capsys):
    """/sys refuses new folders even to root (EPERM); it was a PermissionError traceback."""
    try:
        os.mkdir("/sys/lensbias-x")
    except OSError:
        pass
    else:
        os.rmdir("/sys/lensbias-x")
        pytest.skip("/sys accepts folders here")
    assert main(["diff", str(model_dir), "-d", str(data_file), "--out", "/sys/lensbias-x",
                 *FAST]) == 2
    assert "lensbias: error: cannot write in /sys: " in error_line(capsys)
    assert main(["compress", str(model_dir), "-m", "magnitude", "--out",
                 "/sys/lensbias-y"]) == 2
    assert "lensbias: error: cannot write in /sys: " in error_line(capsys)
    assert not Path("/sys/lensbias-x").exists() and not Path("/sys/lensbias-y").exists()


# ------------------------------------------------- item 10: interrupted and failed diffs

def _interrupt_at(name: str):
    def stage(current: str) -> None:
        if current == name:
            raise KeyboardInterrupt
    return stage


def test_interrupted_diff_leaves_no_empty_report_folder(model_dir, data_file, tmp_path):
    config = DiffConfig(datasets=(str(data_file),), max_examples=8, sae=False)
    recipe = Recipe("magnitude", {"sparsity": 0.5})
    new = tmp_path / "new"
    with pytest.raises(KeyboardInterrupt):
        run_diff(str(model_dir), None, recipe, config, new, stage=_interrupt_at("compress"))
    assert not new.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KeyboardInterrupt):
        run_diff(str(model_dir), None, recipe, config, empty, stage=_interrupt_at("compress"))
    assert empty.is_dir() and not list(empty.iterdir())
    # finished work is kept for the rerun: the compressed model, with its marker
    kept = tmp_path / "kept"
    with pytest.raises(KeyboardInterrupt):
        run_diff(str(model_dir), None, recipe, config, kept, stage=_interrupt_at("cache"))
    assert (kept / MARKER).is_file() and (kept / "model-b" / "recipe.json").is_file()
    assert not (kept / "cache").exists()


def test_failing_compression_leaves_no_report_folder(model_dir, data_file, tmp_path,
                                                     monkeypatch, capsys):
    import lensbias.diff

    def broken(*args, **kwargs):
        raise lensbias.diff.LensbiasError("compression produced NaN/Inf in W; too aggressive")

    monkeypatch.setattr(lensbias.diff, "compress_on_the_fly", broken)
    out = tmp_path / "report"
    assert main(["diff", str(model_dir), "--compress", "magnitude:0.5", "-d", str(data_file),
                 "--out", str(out), *FAST]) == 2
    assert "NaN/Inf" in error_line(capsys)
    assert not out.exists()


SLOW_COMPRESS = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import lensbias.diff

    def slow(a, recipe, folder):
        Path(sys.argv[1]).write_text("compressing")
        time.sleep(120)

    lensbias.diff.compress_on_the_fly = slow
    from lensbias.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def test_sigterm_mid_diff_cleans_up_as_ctrl_c(model_dir, data_file, tmp_path):
    """A real process sent SIGTERM unwinds as on Ctrl-C (it died and left the folder).
    Ctrl-C itself is the KeyboardInterrupt of the in-process test above."""
    signum, rc, line = signal.SIGTERM, 143, "lensbias: terminated"
    ready, out = tmp_path / "ready", tmp_path / "report"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_COMPRESS, str(ready), "diff",
                             str(model_dir), "--compress", "magnitude:0.5", "-d",
                             str(data_file), "--out", str(out), *FAST],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ready.exists(), proc.communicate(timeout=10)
    assert (out / MARKER).exists()  # the folder was made before the signal
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == rc, err
    # (an import may log its own line first: bitsandbytes does, without the `kernels` package)
    assert [x for x in err.split("\n") if x.startswith("lensbias")] == [line], err
    assert "Traceback" not in err
    assert not out.exists()


# ------------------------------------------------- item 3: the level used is recorded

def test_recipe_states_the_default_level(model_dir, data_file, calib_file, tmp_path):
    calib = CalibConfig(str(calib_file), n_seqs=4, seq_len=16)
    assert parse_compress_spec("wanda", calib).params == {"sparsity": 0.5}
    assert parse_compress_spec("gptq", calib).params == {"bits": 4}
    assert parse_compress_spec("layer-drop", calib).params == {"n_drop": 1}
    assert parse_compress_spec("distill", calib).params == {}  # None: chosen from the model
    out = tmp_path / "wanda"
    assert main(["compress", str(model_dir), "-m", "wanda", "--calib", str(calib_file),
                 "--calib-seqs", "4", "--calib-len", "16", "--no-eval", "-o", str(out)]) == 0
    saved = json.loads((out / "recipe.json").read_text())
    assert saved["recipe"]["params"] == {"sparsity": 0.5}
    # diff's on-the-fly copy records the level and what it achieved
    config = DiffConfig(datasets=(str(data_file),), max_examples=8, sae=False)
    report = tmp_path / "report"
    with pytest.raises(KeyboardInterrupt):
        run_diff(str(model_dir), None, parse_compress_spec("magnitude", calib), config, report,
                 stage=_interrupt_at("cache"))
    saved = json.loads((report / "model-b" / "recipe.json").read_text())
    assert saved["recipe"]["params"] == {"sparsity": 0.5}
    assert saved["measured"]["sparsity"]["attn"] == pytest.approx(0.5, abs=0.01)


# ------------------------------------------------- items 7, 12: user data

def test_user_data_gets_a_domain(model_dir, tmp_path, capsys):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"text": "The cat sat on the mat.", "spans": [{"start": 4, "end": 7,
                                                        "labels": {"kind": "noun"}}]},
        {"text": "def add(a, b): return a", "labels": {"domain": "code"}},
    ]) + "\n")
    for extra, expected in [([], ["user", "code"]), (["--domain", "prose"], ["prose", "code"])]:
        out = tmp_path / f"c{len(extra)}.h5"
        assert main(["cache", str(model_dir), "-d", str(path), "-o", str(out), "-q",
                     *extra]) == 0
        with ActivationStore(out) as store:
            classes = store.classes("domain")
            by_example = {}
            for ex, code in zip(store.tokens()["example"], store.labels("domain")):
                by_example.setdefault(int(ex), set()).add(classes[code])
        assert [by_example[i] for i in sorted(by_example)] == [{d} for d in expected]
    merged = merged_dataset([str(path), str(path)], None, None, "notes")
    assert [e.seq_labels["domain"] for e in merged.examples] == ["notes", "code"] * 2
    assert main(["cache", str(model_dir), "-d", str(path), "--domain", " ",
                 "-o", str(tmp_path / "x.h5")]) == 2
    assert "domain must be a non-empty name" in error_line(capsys)


@pytest.mark.parametrize("content, what", [("", "has no examples"),
                                           ("\n\n   \n", "has no examples"),
                                           ('{"text": ""}\n{"text": "  "}\n',
                                            "has only blank texts")])
def test_empty_dataset_is_refused_before_the_model(content, what, tmp_path, monkeypatch,
                                                   capsys):
    """The model named does not exist: the dataset error must come first."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    for argv in (["cache", "no-such-model", "-d", str(path)],
                 ["diff", "no-such-model", "-d", str(path), *FAST]):
        assert main(argv) == 2
        line = error_line(capsys)
        assert f"dataset {path} {what}" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl"]


def test_cache_checks_its_output_before_the_model(data_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["cache", "no-such-model", "-d", str(data_file), "-o", "missing/c.h5"]) == 2
    assert "output folder missing does not exist" in error_line(capsys)


def test_failed_cache_leaves_no_empty_activations_folder(model_dir, data_file, tmp_path,
                                                         monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = listing(tmp_path)
    assert main(["cache", str(model_dir), "-d", str(data_file), "--hook",
                 "blocks.9.hook_resid_post", "-q"]) == 2
    assert "has no hook 'blocks.9.hook_resid_post'" in error_line(capsys)
    assert listing(tmp_path) == before


# ------------------------------------------------- item 13: summary without warning walls

def test_summary_prints_no_warnings_and_uses_diffs_probe(model_dir, data_file, tmp_path,
                                                         capsys):
    from lensbias.probes import LinearProbe, ProbeConfig
    from lensbias.probes.linear import stratified_split
    from lensbias.probes.pair import document_ids, token_strata

    out = tmp_path / "c.h5"
    assert main(["cache", str(model_dir), "-d", str(data_file), "-o", str(out), "-q"]) == 0
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["summary", str(out)]) == 0
    assert [str(w.message) for w in caught] == []
    text, err = capsys.readouterr()
    assert err == ""
    with ActivationStore(out) as store:
        hook = store.hooks[-1]
        labels = store.labels("kind")
        rows = np.flatnonzero(labels >= 0)
        domain = token_strata(store).get("domain")
        test = stratified_split(document_ids(store)[rows],
                                None if domain is None else domain[rows], 0.25, seed=0)
        acts, y = store.activations(hook, rows), labels[rows]
    cfg = ProbeConfig()
    probe = LinearProbe(C=cfg.C or 1.0, max_iter=cfg.max_iter).fit(acts[~test], y[~test])
    row = next(line for line in text.splitlines() if line.startswith("kind "))
    assert float(row.split()[-2]) == pytest.approx(probe.score(acts[test], y[test]), abs=1e-3)


# ------------------------------------------------- item 15: help ends with examples

@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_subcommand_help_ends_with_examples(name):
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    lines = result.output.rstrip().split("\n")
    start = max(i for i, line in enumerate(lines) if line.strip() == "Examples:")
    assert start > max(i for i, line in enumerate(lines) if line.startswith("Options:"))
    examples = [line.strip() for line in lines[start + 1:]]
    assert all(line.startswith("lensbias ") for line in examples), examples
    assert any(line.startswith(f"lensbias {name}") for line in examples), examples


# ------------------------------------------------- item 6: the README's Python snippet

def readme_python() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) == 1, "the README has one Python snippet; this test runs it"
    return blocks[0]


def test_readme_python_snippet_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_python(), "README.md", "exec"), namespace)  # noqa: S102
    acts, labels = namespace["acts"], namespace["labels"]
    assert acts.ndim == 2 and len(acts) == len(labels) > 100
    assert len(np.unique(labels)) >= 3
    with ActivationStore(namespace["a"]) as a, ActivationStore(namespace["b"]) as b:
        assert a.n_tokens == b.n_tokens
        hook = "blocks.2.hook_resid_post"
        rows = np.arange(min(200, a.n_tokens))
        assert not np.allclose(a.activations(hook, rows), b.activations(hook, rows))

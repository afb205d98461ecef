"""`lensbias sweep`: config validation, grid expansion, resumable runs, pool = sequential,
and the analysis (interaction with bootstrap CI, collapse thresholds, Spearman)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import lensbias.sweep.cell as sweep_cell
from conftest import CORPUS, model_folder
from lensbias.concepts.jsonl import write_jsonl
from lensbias.concepts.schema import ConceptDataset, Example, Span
from lensbias.errors import LensbiasError
from lensbias.sweep import (analyse, anisotropy_vs_loss, cells, interaction, load_sweep_config,
                            phase_curves, read_results, run_sweep)
from lensbias.sweep.analysis import collapse_threshold, spearman
from lensbias.sweep.config import sweep_config_from_dict
from lensbias.sweep.run import TIMING_FIELDS


def domain_dataset() -> ConceptDataset:
    """Prose words carry a prose-only concept, code words a code-only one."""
    examples = []
    for i, text in enumerate(CORPUS * 2):
        code = "def" in text or "for" in text
        spans, pos = [], 0
        for word in text.split():
            start = text.index(word, pos)
            pos = start + len(word)
            label = ({"code_kind": "ident" if word[0].isalpha() else "symbol"} if code
                     else {"prose_kind": "long" if len(word) > 3 else "short"})
            spans.append(Span(start, pos, label))
        examples.append(Example(f"ex{i}", text, tuple(spans),
                                {"domain": "code" if code else "prose"}))
    return ConceptDataset("domains", tuple(examples))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, bpe):
    root = tmp_path_factory.mktemp("sweep")
    model = model_folder(root / "model", bpe)
    data = root / "domains.jsonl"
    write_jsonl(domain_dataset(), data)
    raw = {"models": [str(model)], "methods": [{"name": "magnitude", "levels": [0.5]}],
           "calib": ["code", "prose"], "seeds": [0], "datasets": [str(data)],
           "max_chars": None, "n_bootstrap": 20}
    return root, raw, sweep_config_from_dict(raw)


@pytest.fixture(scope="module")
def first(setup):
    root, raw, cfg = setup
    out = root / "s1"
    run_sweep(cfg, out, jobs=1, progress=False)
    return out, read_results(out, cfg)


def strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]


# --- config -----------------------------------------------------------------------------

BASE = "models: [tiny-mixed]\nmethods:\n  - {name: wanda, levels: [0.5]}\n"


@pytest.mark.parametrize("text, message", [
    (BASE + "seed: [0]\n", "seed: unknown field (did you mean seeds?)"),
    (BASE + "calib: []\n", "calib: is empty"),
    (BASE + "seeds: [0.5]\n", "seeds[0]: must be a whole number"),
    (BASE + "sae: maybe\n", "sae: must be true or false"),
    (BASE + "max_chars: lots\n", "max_chars: must be a whole number"),
    ("models: [tiny-mixed]\nmethods: [{name: wandaa, levels: [0.5]}]\n",
     "methods[0].name: unknown compression method 'wandaa' (did you mean wanda?)"),
    ("models: [tiny-mixed]\nmethods: [{name: wanda, levels: []}]\n",
     "methods[0] (wanda).levels: is empty"),
    ("models: [tiny-mixed]\nmethods: [{name: wanda}]\n", "methods[0] (wanda).levels: missing"),
    ("models: [tiny-mixed]\nmethods: [{name: gptq, levels: [3, 1]}]\n",
     "methods[0] (gptq).levels[1]: bits must be one of"),
    ("models: [tiny-mixed]\nmethods: [{name: wanda, levels: [0.5], color: red}]\n",
     "methods[0] (wanda).color: unknown field"),
    ("models: [tiny-mixed]\nmethods: [wanda]\n", "methods[0]: must be a mapping"),
    ("models: tiny-mixed\nmethods: [{name: wanda, levels: [0.5]}]\n", "models: must be a list"),
    ("methods: [{name: wanda, levels: [0.5]}]\n", "models: missing"),
    ("models: [a\n", "not valid YAML"),
])
def test_config_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(LensbiasError) as err:
        load_sweep_config(path)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_grid_order_and_stable_ids(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("models: [tiny-mixed]\nmethods:\n  - {name: magnitude, levels: [0.3, 0.6]}\n"
                    "  - {name: gptq, levels: [4.0], group_size: 32}\ncalib: [code, prose]\n"
                    "seeds: [0, 1]\nmax_chars: 8000\n")
    cfg = load_sweep_config(path)
    grid = cells(cfg)
    assert [(c.method, c.level, c.calib, c.seed) for c in grid[:5]] == [
        ("magnitude", 0.3, "code", 0), ("magnitude", 0.3, "code", 1),
        ("magnitude", 0.3, "prose", 0), ("magnitude", 0.3, "prose", 1),
        ("magnitude", 0.6, "code", 0)]
    assert len(grid) == 12 and [c.index for c in grid] == list(range(12))
    assert grid[-1].param == "bits" and grid[-1].level == 4 and isinstance(grid[-1].level, int)
    assert grid[-1].recipe_params() == {"group_size": 32, "bits": 4}
    ids = [c.id for c in grid]
    assert len(set(ids)) == 12 and all(len(i) == 12 for i in ids)
    assert [c.id for c in cells(load_sweep_config(path))] == ids  # stable across loads
    # a cell keeps its id when the grid around it grows; diff settings change it
    path.write_text(path.read_text().replace("levels: [0.3, 0.6]", "levels: [0.6, 0.3, 0.9]"))
    assert set(ids) <= {c.id for c in cells(load_sweep_config(path))}
    path.write_text(path.read_text().replace("max_chars: 8000", "max_chars: 9000"))
    assert not set(ids) & {c.id for c in cells(load_sweep_config(path))}
    quick = cfg.quick()
    assert [(c.method, c.level, c.seed) for c in cells(quick)] == [
        ("magnitude", 0.3, 0), ("magnitude", 0.3, 0), ("gptq", 4, 0), ("gptq", 4, 0)]
    assert (quick.max_chars, quick.n_bootstrap, quick.calib_n_seqs) == (6000, 50, 16)


def test_method_calib_and_probe_options(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("models: [tiny-mixed]\nmethods:\n"
                    "  - {name: magnitude, levels: [0.5], calib: [code]}\n"
                    "  - {name: wanda, levels: [0.5]}\n"
                    "calib: [code, prose, mixed]\ncontrol: false\nceiling: false\n"
                    "device: cuda\n")
    cfg = load_sweep_config(path)
    grid = cells(cfg)
    # a data-free method runs once per level and seed; the others once per calibration domain
    assert [(c.method, c.calib) for c in grid] == [
        ("magnitude", "code"), ("wanda", "code"), ("wanda", "prose"), ("wanda", "mixed")]
    assert cfg.control is False and cfg.ceiling is False and cfg.device == "cuda"
    assert dict(grid[0].diff)["control"] is False
    # defaults stay out of the id: an explicit "control: true" is the same cell
    base = "models: [tiny-mixed]\nmethods: [{name: wanda, levels: [0.5]}]\n"
    path.write_text(base)
    plain = cells(load_sweep_config(path))[0].id
    path.write_text(base + "control: true\nceiling: true\ndevice: cpu\n")
    assert cells(load_sweep_config(path))[0].id == plain
    path.write_text(base.replace("[0.5]}", "[0.5], calib: [code, code]}"))
    with pytest.raises(LensbiasError, match=r"methods\[0\] \(wanda\).calib: has duplicates"):
        load_sweep_config(path)
    path.write_text(base.replace("[0.5]}", "[0.5], calib: code}"))
    with pytest.raises(LensbiasError, match=r"methods\[0\] \(wanda\).calib: must be a list"):
        load_sweep_config(path)
    path.write_text(base.replace("[0.5]}", "[0.5], targets: [ffn]}"))
    with pytest.raises(LensbiasError, match=r"\(wanda\).targets: use distinct groups from attn"):
        load_sweep_config(path)
    # the same method on other module groups is another grid entry, with its own ids
    path.write_text(base.replace("{name: wanda, levels: [0.5]}",
                                 "{name: wanda, levels: [0.5]}, "
                                 "{name: wanda, levels: [0.5], targets: [mlp, attn]}"))
    two = cells(load_sweep_config(path))
    assert two[0].id == plain and two[2].targets == ("attn", "mlp") and two[2].id != plain


# --- running ----------------------------------------------------------------------------

def test_sweep_writes_one_table(first, setup):
    out, rows = first
    _, _, cfg = setup
    grid = cells(cfg)
    assert [r["cell_id"] for r in rows][0] == grid[0].id
    assert {r["cell_id"] for r in rows} == {c.id for c in grid}
    assert {r["concept_domain"] for r in rows} == {"code", "prose"}
    assert {r["calib"] for r in rows} == {"code", "prose"}
    for r in rows:
        assert r["method"] == "magnitude" and r["level"] == 0.5 and r["param"] == "sparsity"
        assert r["hook"].startswith("blocks.") and isinstance(r["layer"], int)
        assert r["d_anisotropy"] == pytest.approx(r["anisotropy_b"] - r["anisotropy_a"])
        assert r["bpb_a_code"] > 0 and "survival_lo" in r and "_attempt" not in r
    assert len(rows) == 2 * 2 * 2  # cells × concepts × layers
    for c in grid:
        assert (out / "cells" / c.id / "summary.json").exists()


def test_results_table_in_hdf5(first, setup, tmp_path):
    from lensbias.sweep import read_table, write_table

    out, rows = first
    back = read_table(out / "results.h5")
    assert len(back) == len(rows) and back == rows  # the same rows, column by column
    assert isinstance(back[0]["params"], dict) and isinstance(back[0]["seed"], int)
    # missing numbers stay missing; mixed int/float levels come back equal
    odd = [{**rows[0], "survival": None, "level": 4}, {**rows[1], "level": 0.5}]
    write_table(odd, tmp_path / "t.h5")
    got = read_table(tmp_path / "t.h5")
    assert got[0]["survival"] is None and got[0]["level"] == 4 and got[1]["level"] == 0.5
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(LensbiasError, match="not a readable sweep table"):
        read_table(tmp_path / "bad.h5")
    assert not list(tmp_path.glob(".*.tmp"))


def test_rerun_skips_finished_cells(first, setup, monkeypatch):
    out, rows = first
    _, _, cfg = setup
    stamp = (out / "results.jsonl").stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("run_diff called for a finished cell")

    monkeypatch.setattr(sweep_cell, "run_diff", boom)
    run_sweep(cfg, out, jobs=1, progress=False)
    assert (out / "results.jsonl").stat().st_mtime_ns == stamp
    assert read_results(out, cfg) == rows


def test_crash_mid_cell_then_resume(first, setup, monkeypatch):
    root, _, cfg = setup
    out = root / "crash"
    real = sweep_cell.run_diff
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(*a, **k)

    monkeypatch.setattr(sweep_cell, "run_diff", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        run_sweep(cfg, out, jobs=1, progress=False)
    grid = cells(cfg)
    assert {r["cell_id"] for r in read_results(out, cfg)} == {grid[0].id}
    # a writer killed mid-row leaves half a line, and rows of a cell with no done line
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps({"cell_id": grid[1].id, "_attempt": "x", "survival": 0.1}) + "\n")
        f.write('{"cell_id": "' + grid[1].id + '", "surv')
    assert {r["cell_id"] for r in read_results(out, cfg)} == {grid[0].id}
    monkeypatch.setattr(sweep_cell, "run_diff", real)
    run_sweep(cfg, out, jobs=1, progress=False)
    assert strip(read_results(out, cfg)) == strip(first[1])


def test_pool_gives_the_same_rows(first, setup):
    root, _, cfg = setup
    out = root / "pool"
    run_sweep(cfg, out, jobs=2, progress=False)
    key = lambda r: (r["cell_id"], r["concept"], r["hook"])  # noqa: E731
    assert sorted(strip(read_results(out, cfg)), key=key) == sorted(strip(first[1]), key=key)
    assert strip(read_results(out, cfg)) == strip(first[1])  # grid order either way


def test_ray_executor_gives_the_same_rows(first, setup, tmp_path):
    """A local Ray head on loopback, the CLI pointed at it: the table equals the local run's."""
    pytest.importorskip("ray")
    import os
    import shutil
    import socket
    import subprocess
    import sys
    import tempfile

    from lensbias.cli import main

    _, raw, cfg = setup
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    temp = tempfile.mkdtemp(prefix="ray")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                    "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                    f"--temp-dir={temp}"], check=True, env=env, capture_output=True, timeout=120)
    try:
        path = tmp_path / "s.yaml"
        path.write_text(json.dumps(raw))
        out = tmp_path / "ray-out"
        code = main([
            "sweep", str(path), "--out", str(out), "--executor", "ray", "--address",
            f"127.0.0.1:{port}", "--cpus-per-cell", "1", "-q"])
        assert code == 0
        assert strip(read_results(out, cfg)) == strip(first[1])
        for c in cells(cfg):  # each task's summary and report came back; its caches did not
            assert (out / "cells" / c.id / "summary.json").exists()
            assert (out / "cells" / c.id / "report.html").exists()
            assert not (out / "cells" / c.id / "cache").exists()
        # a rerun finds every cell done and starts no task
        assert main(["sweep", str(path), "--out", str(out), "--executor", "ray",
                     "--address", f"127.0.0.1:{port}", "-q"]) == 0
        assert strip(read_results(out, cfg)) == strip(first[1])
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_errors_are_one_line(setup, tmp_path, capsys):
    pytest.importorskip("ray")
    from lensbias.cli import main

    _, raw, _ = setup
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps(raw))
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--address", "x:1"]) == 2
    assert "--address and --gpus-per-cell need --executor ray" in capsys.readouterr().err


def test_second_sweep_in_the_same_folder_is_refused(first, setup):
    import fcntl
    import os

    out, rows = first
    _, _, cfg = setup
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a running sweep holds it
        with pytest.raises(LensbiasError, match="another sweep is running in"):
            run_sweep(cfg, out, progress=False)
    finally:
        os.close(fd)
    assert read_results(out, cfg) == rows  # untouched


def test_unreachable_ray_cluster_is_one_line(setup, tmp_path, capsys):
    pytest.importorskip("ray")
    from lensbias.cli import main

    _, raw, _ = setup
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps(raw))
    code = main(["sweep", str(path), "--out", str(tmp_path / "o"), "--executor", "ray",
                 "--address", "127.0.0.1:1", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "could not connect to Ray at 127.0.0.1:1" in err, err
    assert err.count("\n") == 1
    assert not (tmp_path / "o" / "results.jsonl").exists()


@pytest.mark.parametrize("device, message", [
    ("cdua", "unknown torch device 'cdua'"),
    pytest.param("cuda", "sees no CUDA device", marks=pytest.mark.skipif(
        __import__("torch").cuda.is_available(), reason="this machine has CUDA")),
])
def test_bad_device_is_one_line(setup, tmp_path, capsys, device, message):
    from lensbias.cli import main

    _, raw, _ = setup
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps({**raw, "device": device}))
    out = tmp_path / "o"
    assert main(["sweep", str(path), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (out / "done").exists() and not list(out.glob("cells/*/summary.json"))


def test_cli_writes_analysis(first, setup, tmp_path, capsys):
    from lensbias.cli.sweep import sweep

    out, rows = first
    _, raw, _ = setup
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps(raw))  # JSON is YAML
    sweep.main([str(path), "--out", str(out)], standalone_mode=False)
    captured = capsys.readouterr()
    assert "magnitude" in captured.out and "interaction" in captured.out
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["n_cells"] == 2 and analysis["interaction"]["rows"]
    with pytest.raises(LensbiasError, match="unknown field"):
        path.write_text(json.dumps({**raw, "jobs": 2}))
        sweep.main([str(path), "--out", str(out), "-q"], standalone_mode=False)


# --- sweep report -----------------------------------------------------------------------

EVIL = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


def hostile_rows():
    """hand_rows with hostile text in every free-text field a results row carries."""
    rows = []
    for r in hand_rows():
        rows.append({**r, "model": EVIL, "concept": r["concept"] + EVIL, "cell_id": EVIL + r["cell_id"],
                     "acc_a": 0.8, "majority": 0.3, "bpb_a_code": 2.0, "bpb_a_prose": 2.5})
    return rows


def test_sweep_report_escapes_every_field():
    from lensbias.report.sweep import render_sweep_html

    rows = hostile_rows()
    html = render_sweep_html(rows, analyse(rows, n_boot=50), title=EVIL)
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<script>") == 1  # the report's own script only
    for section in ("headline", "interaction", "curves", "scatter", "models", "cells"):
        assert f"id='{section}'" in html
    assert "0.700" in html  # the hand-computed interaction


def test_sweep_report_cli(first, tmp_path, capsys):
    from lensbias.cli import main

    out, rows = first
    assert main(["sweep-report", str(out)]) == 0
    html = (out / "sweep-report.html").read_text()
    cell_ids = {r["cell_id"] for r in rows}
    assert all(f"cells/{cid}/report.html" in html for cid in cell_ids)
    assert main(["sweep-report", str(out / "results.jsonl"), "--out",
                 str(tmp_path / "r.html")]) == 0
    elsewhere = (tmp_path / "r.html").read_text()
    assert "href='cells/" not in elsewhere  # links are relative to the sweep folder
    assert all(cid in elsewhere for cid in cell_ids) and "id='interaction'" in elsewhere
    capsys.readouterr()
    for args, message in ((["sweep-report", str(tmp_path)], "is not a sweep folder"),
                          (["sweep-report", str(out), "--out", str(tmp_path / "no" / "r.html")],
                           "does not exist")):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "results.jsonl").write_text("")
    assert main(["sweep-report", str(empty)]) == 2
    assert "no finished cells" in capsys.readouterr().err
    assert not list(tmp_path.glob("**/.*.tmp"))


def test_model_view_separates_models():
    rows = []
    for model, gain_code, gain_prose in (("code-model", 0.5, 0.1), ("prose-model", 0.1, 0.4)):
        for seed in (0, 1):
            for dom, gain, concepts in (("code", gain_code, ("c1", "c2")),
                                        ("prose", gain_prose, ("p1", "p2"))):
                for c in concepts:
                    rows.append({"cell_id": f"{model}-{seed}", "model": model, "seed": seed,
                                 "concept": c, "concept_domain": dom, "hook": "h",
                                 "acc_a": 0.3 + gain, "majority": 0.3, "survival": 0.9,
                                 "bpb_a_code": 2.0 if model == "code-model" else 2.6,
                                 "bpb_a_prose": 2.5, "method": "m", "level": 0.5})
    view = {(r["model"], r["domain"]): r for r in analyse(rows, n_boot=50)["model_view"]["rows"]}
    assert view["code-model", "code"]["gain"] == pytest.approx(0.5)
    assert view["prose-model", "prose"]["gain"] == pytest.approx(0.4)
    assert view["code-model", "code"]["bpb_a"] == pytest.approx(2.0)
    assert view["prose-model", "code"]["bpb_a"] == pytest.approx(2.6)
    assert view["code-model", "code"]["gain_ci"] == pytest.approx([0.5, 0.5])
    assert view["code-model", "code"]["n_concepts"] == 2 and view["code-model", "code"]["n_seeds"] == 2


def test_model_view_readings_are_ratios_of_sums_over_contextual_concepts():
    """Two contextual code concepts (gain over the floor 0.3 and 0.1 in both seeds) and one
    token-identity one: each reading is Σ (x − floor) / Σ (acc_A − floor) over the two
    contextual ones, known by hand; the token-identity concept stays out."""
    rows = []
    for seed in (0, 1):
        for concept, gain, kind in (("c1", 0.3, "contextual"), ("c2", 0.1, "contextual"),
                                    ("c3", 0.0, "token identity")):
            acc_a, floor = 0.4 + gain, 0.4
            rows.append({"cell_id": f"m-{seed}", "model": "m", "seed": seed, "concept": concept,
                         "concept_domain": "code", "hook": "h", "method": "wanda",
                         "level": 0.5, "calib": "corpus:x", "calib_domain": "code",
                         "acc_a": acc_a, "majority": 0.2, "floor": floor, "kind": kind,
                         "baseline": floor if kind == "contextual" else 0.2,
                         "context_gain": gain + (0.001 if seed else -0.001) * (gain > 0),
                         # B keeps half of c1's gain, all of c2's; retrained all, aligned 3/4
                         "transfer": floor + (gain / 2 if concept == "c1" else gain),
                         "retrained": acc_a, "aligned_transfer": floor + 0.75 * gain,
                         "information": 1.0, "readout": 0.5, "aligned_readout": 0.75,
                         "survival": 0.5})
    view = analyse(rows, n_boot=200)["model_view"]["rows"]
    assert len(view) == 1 and view[0]["n_contextual"] == 2
    (reads,) = view[0]["readings"]
    assert reads["n_concepts"] == 2 and reads["n_seeds"] == 2 and reads["n_rows"] == 4
    assert reads["information"]["value"] == pytest.approx(1.0)
    assert reads["readout"]["value"] == pytest.approx((0.15 + 0.1) / 0.4)
    assert reads["aligned_readout"]["value"] == pytest.approx(0.75)
    lo, hi = reads["readout"]["ci"]  # resampling concepts: between c1 alone and c2 alone
    assert 0.5 - 1e-9 <= lo <= reads["readout"]["value"] <= hi <= 1.0 + 1e-9
    assert reads["information"]["ci"] == pytest.approx([1.0, 1.0])


# --- analysis ---------------------------------------------------------------------------

def hand_rows():
    """S(domain | calib): code|code .9/.7, code|prose .5/.1, prose|code .6/.6, prose|prose .8/.8
    for concepts c1/c2 and p1/p2, identical over seeds 0 and 1."""
    table = {("code", "code"): {"c1": 0.9, "c2": 0.7}, ("code", "prose"): {"c1": 0.5, "c2": 0.1},
             ("prose", "code"): {"p1": 0.6, "p2": 0.6},
             ("prose", "prose"): {"p1": 0.8, "p2": 0.8}}
    rows = []
    for (dom, calib), per in table.items():
        for seed in (0, 1):
            for concept, s in per.items():
                rows.append({"cell_id": f"{calib}-{seed}", "method": "wanda", "param": "sparsity",
                             "level": 0.5, "calib": calib, "seed": seed, "concept": concept,
                             "concept_domain": dom, "hook": "blocks.1.hook_resid_post",
                             "layer": 1, "survival": s, "d_anisotropy": 0.1})
    return rows


def test_interaction_matches_hand_computation():
    # (0.8 - 0.3) - (0.6 - 0.8) = 0.7
    result = interaction(hand_rows(), n_boot=500, seed=1)
    (row,) = result["rows"]
    assert row["interaction"] == pytest.approx(0.7)
    assert row["means"]["code|code"] == pytest.approx(0.8)
    lo, hi = row["ci"]
    assert lo <= 0.7 <= hi and lo < hi  # code concepts vary, so the interval is not a point
    assert row["n_seeds"] == 2 and row["n_concepts"] == {"code": 2, "prose": 2}
    assert row["stable"] and row["rng_spread"] < 0.01  # bounds settled across RNG seeds
    assert interaction(hand_rows(), n_boot=500, seed=1) == result  # seeded
    missing = [r for r in hand_rows() if r["calib"] == "code"]
    assert interaction(missing)["rows"][0]["interaction"] is None


def test_collapse_threshold_and_curves():
    assert collapse_threshold([0.1, 0.3, 0.5], [0.9, 0.7, 0.3]) == pytest.approx(0.4)
    assert collapse_threshold([0.5, 0.1, 0.3], [0.3, 0.9, 0.7]) == pytest.approx(0.4)
    assert collapse_threshold([0.1, 0.3], [0.9, 0.6]) is None
    assert collapse_threshold([0.1, 0.3], [0.4, 0.2]) == pytest.approx(0.1)
    # bits: fewer is harder, so the curve is read from 8 down
    assert collapse_threshold([8, 4, 3, 2], [1.0, 0.8, 0.6, 0.2],
                              descending=True) == pytest.approx(2.75)
    rows = [{"method": "gptq", "param": "bits", "level": lv, "calib": "code",
             "concept_domain": "code", "survival": s, "cell_id": str(lv)}
            for lv, s in [(8, 1.0), (4, 0.8), (3, 0.6), (3, 0.6), (2, 0.2), (2, None)]]
    (curve,) = phase_curves(rows)["curves"]
    assert [p["level"] for p in curve["points"]] == [2, 3, 4, 8]
    assert curve["points"][1]["n"] == 2 and curve["descending"]
    assert curve["collapse_level"] == pytest.approx(2.75)


def test_phase_curves_colour_a_corpus_by_its_calibration_domain():
    """A calibration corpus (corpus:NAME) is drawn in its domain's colour, as the page's
    legend says; before, every corpus fell back to one brown."""
    from lensbias.report.sweep import CALIB_COLORS, _curves

    rows = [{"method": "wanda", "param": "sparsity", "level": lv, "calib": calib,
             "calib_domain": dom, "concept_domain": "code", "survival": 0.5, "cell_id": "c"}
            for lv in (0.5, 0.7) for calib, dom in (("corpus:stdlib-asyncio", "code"),
                                                    ("corpus:brown", "prose"))]
    curves = phase_curves(rows)
    assert {c["calib"]: c["calib_domain"] for c in curves["curves"]} == {
        "corpus:stdlib-asyncio": "code", "corpus:brown": "prose"}
    html = _curves(curves)
    assert CALIB_COLORS["code"] in html and CALIB_COLORS["prose"] in html
    assert "#8c564b" not in html


def test_anisotropy_vs_loss_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 2]) == pytest.approx(-0.9486833)  # ties averaged
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1, 2], [1, 2]) is None
    rows = [{"cell_id": f"c{i}", "method": "wanda", "level": lv, "calib": "code", "seed": 0,
             "hook": h, "d_anisotropy": lv * k, "survival": 1 - lv}
            for i, lv in enumerate([0.2, 0.4, 0.6, 0.8]) for h, k in (("b0", 1), ("b1", 3))]
    result = anisotropy_vs_loss(rows)
    assert result["n_cells"] == 4 and result["rho"] == pytest.approx(1.0)
    assert result["points"][0]["d_anisotropy"] == pytest.approx(0.4)  # mean over layers
    assert analyse(hand_rows())["n_cells"] == 4


# --- the shipped study, quick version (what CI runs) -------------------------------------

def test_study_quick_runs_end_to_end(tmp_path):
    """sweeps/study-quick.yaml: the v2 study's whole path (named calibration corpora of both
    domains, three seeds, exported document replicates, the three intervals, Holm) on
    tiny-mixed, then the report. Issue 14 item 6: intervals finite and ordered."""
    from pathlib import Path

    from lensbias.cli import main

    study = Path(__file__).resolve().parents[1] / "sweeps" / "study-quick.yaml"
    out = tmp_path / "quick"
    assert main(["sweep", str(study), "--out", str(out), "-q", "--jobs", "2",
                 "--max-boot", "2000"]) == 0
    cfg = load_sweep_config(study)
    rows = read_results(out, cfg)
    assert {r["cell_id"] for r in rows} == {c.id for c in cells(cfg)} and len(cells(cfg)) == 12
    assert {r["calib_domain"] for r in rows} == {"code", "prose"}
    assert {r["concept_domain"] for r in rows} == {"code", "prose"}
    assert all(len(r["replicates"]["acc_a"]) == 50 for r in rows if r.get("replicates"))
    analysis = json.loads((out / "analysis.json").read_text())
    inv = [r for r in analysis["inversion"]["rows"] if r["kind"] == "contextual"]
    assert {r["reading"] for r in inv} == {"information", "readout", "aligned_readout"}
    for r in inv:
        assert r["n_seeds"] == 3 and r["n_corpora"] == {"code": 2, "prose": 2}
        assert min(r["n_concepts"].values()) > 0, r["n_concepts"]  # both domains enter
        lo, hi = r["seed_t"]["ci"]
        assert lo <= r["interaction"] <= hi
        for ci in (r["bootstrap"]["ci"], r["mixed"]["ci"]):
            assert all(math.isfinite(v) for v in ci) and ci[0] < ci[1]
        assert r["bootstrap"]["n_boot"] <= 2000 and r["bootstrap"]["rng_spread"] is not None
        assert r["mixed"]["p"] <= r["mixed"]["p_holm"] <= 1
    assert main(["sweep-report", str(out)]) == 0
    html = (out / "sweep-report.html").read_text()
    assert "id='inversion'" in html and "id='interaction'" in html


# --- SAE feature overlap across the cells of a sweep -----------------------------------------

def sae_summary(damaged: set[int], ranks: list[int], sha: str = "sae-x",
                hook: str = "blocks.1.hook_resid_post") -> dict:
    """A cell's summary.json with one SAE report (the fields ``damage_overlap`` reads):
    features 0..9, 'dead' when in ``damaged``, damage score (1 − r) ordered by ``ranks``;
    feature 10 is unstable and must never count."""
    feats = [{"index": i, "verdict": "dead" if i in damaged else "survived",
              "pearson_r": 1 - rank / 10, "stable": True} for i, rank in enumerate(ranks)]
    feats.append({"index": 10, "verdict": "dead", "pearson_r": 0.0, "stable": False})
    return {"saes": {hook: {"summary": {"sae_a_sha256": sha, "gate": {"passed": True}},
                            "features": feats}}}


def overlap_cells() -> tuple[list[dict], dict[str, dict | None]]:
    """Seed 0: A, B, C share SAE x; D, E share SAE y (their summaries name another SAE of
    A); M has no summary, N no SAE report; seed 1: one more cell (not shown)."""
    base = list(range(10))
    swapped = [1, 0, 3, 2, 5, 4, 7, 6, 9, 8]  # each rank one step off: Σd² = 10
    summaries = {"A": sae_summary({0, 1, 2, 3}, base),
                 "B": sae_summary({2, 3, 4}, swapped),
                 "C": sae_summary({0, 1, 2, 3}, [2 * r for r in base]),  # same ranking
                 "D": sae_summary({9}, base, sha="sae-y"),
                 "E": sae_summary({8, 9}, base[::-1], sha="sae-y"),
                 "M": None, "N": {"saes": {}},
                 "S1": sae_summary({0}, base)}
    spec = [("A", "gptq", 4, "code", 0), ("M", "gptq", 4, "prose", 0),
            ("B", EVIL, 0.5, "code", 0), ("N", "wanda", 0.7, "code", 0),
            ("C", "wanda", 0.5, EVIL, 0), ("D", "magnitude", 0.3, "code", 0),
            ("E", "magnitude", 0.6, "code", 0), ("S1", "gptq", 4, "code", 1)]
    rows = [{"cell_id": cid, "cell_index": i, "model": "m", "method": method,
             "param": "level", "level": level, "calib": calib, "seed": seed,
             "targets": "attn+mlp", "concept": "c1", "concept_domain": "code", "survival": 0.5}
            for i, (cid, method, level, calib, seed) in enumerate(spec)]
    return rows, summaries


def test_feature_overlap_matrices_of_known_sets():
    from lensbias.sweep.analysis import feature_overlap

    rows, summaries = overlap_cells()
    out = feature_overlap(rows, summaries)
    assert out["missing"] == ["M"] and out["no_sae"] == ["N"] and out["not_shown"] == 1
    assert out["n_cells"] == 8 and out["alone"] == []
    x, y = out["groups"]  # SAE x and SAE y: never one matrix
    assert (x["sae_a_sha256"], x["cells"]) == ("sae-x", ["A", "B", "C"])
    assert (y["sae_a_sha256"], y["cells"]) == ("sae-y", ["D", "E"])
    assert x["labels"] == ["gptq:4 code", f"{EVIL}:0.5 code", f"wanda:0.5 {EVIL}"]
    assert x["n_features"] == 10 and x["damaged"] == [4, 3, 4]  # unstable feature 10 left out
    jac, rho = np.asarray(x["jaccard"], dtype=float), np.asarray(x["spearman"], dtype=float)
    # A ∩ B = {2, 3}, A ∪ B = {0..4}; A = C
    np.testing.assert_allclose(jac, [[1, 2 / 5, 1], [2 / 5, 1, 2 / 5], [1, 2 / 5, 1]])
    r_ab = 1 - 6 * 10 / (10 * (10 ** 2 - 1))  # Spearman from Σd² of the swapped ranks
    np.testing.assert_allclose(rho, [[1, r_ab, 1], [r_ab, 1, r_ab], [1, r_ab, 1]])
    # D = {9}, E = {8, 9}; E's ranking is D's reversed
    np.testing.assert_allclose(np.asarray(y["jaccard"], dtype=float), [[1, 0.5], [0.5, 1]])
    assert y["spearman"][0][1] == pytest.approx(-1.0)
    # the rule: the first max_cells cells with a report, in grid order
    two = feature_overlap(rows, summaries, max_cells=2)
    assert [g["cells"] for g in two["groups"]] == [["A", "B"]] and two["not_shown"] == 5
    # a digest held by one shown cell only is listed, not compared
    rows_c = [r for r in rows if r["cell_id"] not in ("E",)]
    lone = feature_overlap(rows_c, summaries)
    assert [a["cell_id"] for a in lone["alone"]] == ["D"] and len(lone["groups"]) == 1
    # same model, another seed: the lowest seed with reports is the one shown
    only_s1 = feature_overlap([r for r in rows if r["seed"] == 1] + rows[:1],
                              {**summaries, "A": None})
    assert only_s1["missing"] == ["A"] and only_s1["alone"][0]["cell_id"] == "S1"


def test_sweep_report_overlap_panel_is_escaped():
    from lensbias.report.sweep import render_sweep_html
    from lensbias.sweep.analysis import feature_overlap

    rows, summaries = overlap_cells()
    html = render_sweep_html(rows, analyse(rows, n_boot=10),
                             overlap=feature_overlap(rows, summaries))
    panel = html[html.index("<section id='overlap'>"):]
    panel = panel[:panel.index("</section>")]
    assert "Which features do different compressions damage?" in panel
    assert "<script>alert" not in html and "<img src=x" not in html
    assert html.count("<script>") == 1
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img src=x" in panel
    assert "wanda:0.5 &lt;script&gt;" in panel and "gptq:4 code" in panel
    assert panel.count("<table class='overlap'") == 4  # Jaccard and ρ for SAE x and SAE y
    assert ">0.40<" in panel and ">0.94<" in panel and ">-1.00<" in panel
    assert "Skipped: 1 cell with no summary.json" in panel
    assert "1 cell whose summary has no SAE" in panel
    # without summaries (the committed study), the panel says so
    bare = render_sweep_html(rows, analyse(rows, n_boot=10))
    assert "Skipped: 8 cells with no summary.json" in bare
    assert "no overlap to show" in bare


def test_cells_of_one_seed_share_their_sae_and_the_report_compares_them(setup, tmp_path):
    """A real (tiny) sweep with SAEs: two compressions at one seed train the same SAE of A
    (same digest: training is seeded and deterministic), and sweep-report puts both in one
    matrix; a summary removed from beside the results is skipped and said so."""
    from lensbias.cli import main
    from lensbias.sweep.analysis import cell_summaries

    _, raw, _ = setup
    cfg = sweep_config_from_dict({**raw, "sae": True, "calib": ["code"],
                                  "methods": [{"name": "magnitude", "levels": [0.3, 0.7]}]})
    out = tmp_path / "s"
    run_sweep(cfg, out, jobs=1, progress=False)
    rows = read_results(out, cfg)
    ids = list(dict.fromkeys(r["cell_id"] for r in rows))
    read = cell_summaries(out)
    digests = {rep["summary"]["sae_a_sha256"] for cid in ids for rep in read(cid)["saes"].values()}
    assert len(ids) == 2 and len(digests) == 1
    assert main(["sweep-report", str(out)]) == 0
    html = (out / "sweep-report.html").read_text()
    panel = html[html.index("<section id='overlap'>"):]
    assert panel.count("<table class='overlap'") == 2 and "magnitude:0.7 code" in panel
    assert all(f"<code class='cid'>{cid}</code>" in panel for cid in ids)
    (out / "cells" / ids[1] / "summary.json").unlink()
    assert main(["sweep-report", str(out)]) == 0
    html = (out / "sweep-report.html").read_text()
    assert "Skipped: 1 cell with no summary.json" in html and "no overlap to show" in html


def test_sweep_report_names_the_model_on_the_interaction_chart_when_there_are_several():
    from lensbias.report.sweep import _inversion

    def row(model):
        return {"model": model, "hook": "h", "kind": "contextual", "reading": "readout",
                "method": "wanda", "level": 0.5, "interaction": 0.2,
                "bootstrap": {"read": [0.1, 0.3]}, "n_corpora": {}, "n_concepts": {}}

    two = _inversion({"rows": [row("tiny-code"), row("tiny-prose")]})
    assert "tiny-code:readout:wanda:0.5" in two and "tiny-prose:readout:wanda:0.5" in two
    one = _inversion({"rows": [row("tiny-code")]})
    assert "tiny-code:readout" not in one and "readout:wanda:0.5" in one


def test_sweep_report_names_settings_without_an_interaction_instead_of_listing_them():
    """A data-free method (one calibration) has no interaction: the study table leaves its
    rows out and names the setting once, escaped, under the table."""
    from lensbias.report.sweep import _interaction, _inversion

    def row(method, level, value):
        return {"model": "m", "hook": "h", "kind": "contextual", "reading": "readout",
                "method": method, "level": level, "interaction": value,
                "bootstrap": {"read": [0.1, 0.3]} if value is not None else None,
                "n_corpora": {}, "n_concepts": {}}

    html = _inversion({"rows": [row("wanda", 0.5, 0.2), row("rtn", 4, None),
                                row("magnitude@<attn>", 0.5, None)]})
    table = html[html.index("<table"):html.index("</table>")]
    assert "wanda" in table and "rtn" not in table and "magnitude" not in table
    assert "no interaction defined" in html and "rtn 4" in html
    assert "magnitude@&lt;attn&gt; 0.500" in html
    first = _interaction({"rows": [{"method": "magnitude", "param": "sparsity", "level": 0.9,
                                    "interaction": None}]})
    assert "no interaction defined" in first and "magnitude 0.900" in first
    assert "<td>magnitude</td>" not in first

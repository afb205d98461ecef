"""scripts/study_folder.py and scripts/study_tables.py, the study's tables from its rows."""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from lensbias.sweep import read_results

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# planted survival S per (method, level, calibration domain, concept domain)
PLANTED = {("wanda", 0.5, "code"): {"code": 0.8, "prose": 0.6},
           ("wanda", 0.5, "prose"): {"code": 0.5, "prose": 0.9},
           ("magnitude", 0.5, "code"): {"code": 0.3, "prose": 0.4},
           ("gptq", 4, "code"): {"code": 0.95, "prose": 0.9},
           ("gptq", 4, "prose"): {"code": 0.85, "prose": 0.97},
           ("rtn", 4, "code"): {"code": 0.7, "prose": 0.75}}


def planted_rows(seeds=(0, 1, 2)) -> list[dict]:
    """Rows with survival exactly as PLANTED (plus a per-seed shift, the same for every
    method, so the per-seed differences are exact); magnitude and rtn carry a code corpus
    as a label, as the committed data-free cells do."""
    rows = []
    for (method, level, calib), per in PLANTED.items():
        for seed in seeds:
            for dom, concepts in (("code", ("identifier_role", "name_seen_before")),
                                  ("prose", ("deprel", "subj_obj"))):
                for concept in concepts:
                    s = per[dom] + 0.01 * seed
                    base, acc_a = 0.5, 0.9
                    x = base + (acc_a - base) * s
                    rows.append(dict(
                        cell_id=f"{method}-{level}-{calib}-{seed}", cell_index=0,
                        model="m", hook="h", method=method, targets="attn+mlp",
                        param="bits" if method in ("gptq", "rtn") else "sparsity",
                        level=level, calib=f"corpus:{calib}-corpus", calib_domain=calib,
                        seed=seed, concept=concept, concept_domain=dom, kind="contextual",
                        underpowered=False, acc_a=acc_a, baseline=base, retrained=x,
                        transfer=x, aligned_transfer=x, information=s, readout=s,
                        aligned_readout=s))
    return rows


def test_data_free_table_pairs_each_method_with_its_data_free_counterpart(capsys):
    tables = _script("study_tables")
    tables.data_free_table(planted_rows())
    lines = {tuple(c.strip() for c in line.strip("|").split("|")[:4]): line
             for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    # bits levels compare GPTQ with RTN, sparsity levels Wanda with magnitude, never crossed
    assert ("4", "readout", "rtn", "none (data-free)") in lines
    assert ("0.5", "readout", "magnitude", "none (data-free)") in lines
    assert not any(k[0] == "4" and k[2] in ("magnitude", "wanda") for k in lines)
    assert not any(k[0] == "0.5" and k[2] in ("rtn", "gptq") for k in lines)
    cells = [c.strip() for c in lines[("4", "readout", "gptq", "prose")].strip("|").split("|")]
    assert float(cells[4]) == pytest.approx(0.85 + 0.01, abs=1e-3)   # pooled over seeds 0-2
    # S(code) − rtn = 0.85 − 0.70 per seed, exactly (the seed shift cancels): a zero-width t
    assert cells[6].startswith("+0.150 [+0.150, +0.150]")
    assert cells[7].startswith("+0.220 [+0.220, +0.220]")   # 0.97 − 0.75
    cells = [c.strip() for c in lines[("0.5", "information", "wanda", "code")].strip("|")
             .split("|")]
    assert cells[6].startswith("+0.500") and cells[7].startswith("+0.200")
    assert cells[8] == "3"


def test_data_free_methods_are_those_that_read_no_data():
    tables = _script("study_tables")
    free = {m for m in ("magnitude", "magnitude-heads", "rtn", "wanda", "sparsegpt", "gptq")
            if tables._data_free({"method": m})}
    assert free == {"magnitude", "magnitude-heads", "rtn"}


def _gz(path: Path, rows: list[dict]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def test_study_folder_reads_back_as_a_sweep(tmp_path, capsys):
    folder = _script("study_folder")
    rows = planted_rows()
    calibrated = [r for r in rows if r["method"] in ("wanda", "gptq")]
    free = [r for r in rows if r["method"] in ("magnitude", "rtn")]
    a, b = _gz(tmp_path / "a.jsonl.gz", calibrated), _gz(tmp_path / "b.jsonl.gz", free)
    n = folder.lay_out(tmp_path / "both", [a, b])
    assert n == len({r["cell_id"] for r in rows})
    back = read_results(tmp_path / "both")
    key = lambda r: (r["cell_id"], r["concept"])  # noqa: E731
    assert sorted(back, key=key) == sorted(rows, key=key)
    for out, files, message in ((tmp_path / "both", [a], "exists"),
                                (tmp_path / "twice", [a, a], "is in both"),
                                (tmp_path / "gone", [a, tmp_path / "no.gz"], "cannot read")):
        with pytest.raises(SystemExit) as stop:
            folder.lay_out(out, files)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1   # one line
    assert not (tmp_path / "twice").exists() and not (tmp_path / "gone").exists()


@pytest.mark.parametrize("args", [["out", "a.gz", "--max-boot"],
                                  ["out", "a.gz", "--max-boot", "x"],
                                  ["out", "a.gz", "--max-boot", "10"], ["out"]])
def test_study_folder_refuses_bad_arguments_in_one_line(args, capsys):
    folder = _script("study_folder")
    with pytest.raises(SystemExit) as stop:
        folder.parse(args)
    assert stop.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_study_folder_writes_the_sweep_analysis(tmp_path):
    """--max-boot: analysis.json as `lensbias sweep` writes it, of exactly the laid-out cells
    (so `lensbias sweep-report` reuses its interaction instead of recomputing it)."""
    folder = _script("study_folder")
    rows = planted_rows()
    folder.lay_out(tmp_path / "f", [_gz(tmp_path / "a.jsonl.gz", rows)])
    assert folder.write_analysis(tmp_path / "f", max_boot=400) >= 0
    saved = json.loads((tmp_path / "f" / "analysis.json").read_text())
    assert saved["cell_ids"] == sorted({r["cell_id"] for r in rows})
    wanda = [r for r in saved["inversion"]["rows"]
             if r["method"] == "wanda" and r["reading"] == "readout"][0]
    # planted: [0.8 - 0.5] - [0.6 - 0.9] = +0.6, every seed alike
    assert wanda["interaction"] == pytest.approx(0.6, abs=1e-9)
    free = [r for r in saved["inversion"]["rows"] if r["method"] in ("magnitude", "rtn")]
    assert free and all(r["interaction"] is None for r in free)   # one calibration: none

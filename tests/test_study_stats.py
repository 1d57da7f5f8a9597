"""Tests of the multi-seed study report (varnet_ds/analysis/study/: contrasts, load, markdown, report).

Study folders are faked in tmp_path in the layout of ``python -m varnet_ds.study``: ``study.yaml`` and per arm x
seed a run folder with config.yaml, metrics.jsonl (start and end events), the four per-volume CSVs and
selected.json. Per-volume SSIM values come from a small formula, so the expected numbers are known.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, Sequence, Tuple

import numpy as np
import pytest
import scipy.stats
import yaml

from varnet_ds.analysis.compare.report import main as compare_main
from varnet_ds.analysis.runs import CompareError
from varnet_ds.analysis.study.load import load_study
from varnet_ds.analysis.study.markdown import README_END, README_START
from varnet_ds.analysis.study.report import build_study_report, main, update_readme
from varnet_ds.run_folder import output_files, write_finished

REPO = Path(__file__).resolve().parents[1]

BRAIN_VOLS = [("file_brain_AXT1_0.h5", "AXT1"), ("file_brain_AXT1_1.h5", "AXT1"), ("file_brain_AXT2_2.h5", "AXT2"),
              ("file_brain_AXT2_3.h5", "AXT2"), ("file_brain_AXT2_4.h5", "AXT2")]
KNEE_VOLS = [("file_knee_0.h5", "CORPD_FBK"), ("file_knee_1.h5", "CORPD_FBK"), ("file_knee_2.h5", "CORPD_FBK")]
COLUMNS = ["fname", "acquisition", "acceleration", "num_slices", "ssim", "psnr", "nmse"]
ValueFn = Callable[[str, int, str, str, int, int], float]  # arm, seed, checkpoint, split, volume index, acc


def default_ssim(arm: str, seed: int, ckpt: str, split: str, vol: int, acc: int) -> float:
    """Seed and volume effects plus an arm effect that varies with seed and volume (not constant)."""
    value = 0.6 + 0.02 * vol + (0.01 if acc == 4 else -0.01) + 0.004 * seed - (0.003 if ckpt == "final" else 0.0)
    if split == "val_knee":
        value += 0.1
    if arm == "mraugment":
        value += 0.006 + 0.002 * ((vol * 7 + seed * 3 + acc) % 5) - 0.004 * (vol == 2)
    return value


def _metrics(ssim: float) -> Dict[str, float]:
    return {"ssim": ssim, "psnr": 20.0 + 10.0 * ssim, "nmse": 0.3 - 0.2 * ssim}


def _config(arm: str, seed: int, folder: Path) -> dict:
    return {"run": {"name": f"{arm}-s{seed}", "seed": seed, "arm": arm, "out_dir": str(folder), "resume": None},
            "log": {"wandb": {"mode": "disabled"}, "every_steps": 5 + seed},
            "aug": {"enabled": arm != "baseline", "p_max": 0.55},
            "data": {"train_path": "/data/knee", "recon_size": [320, 320]}, "train": {"epochs": 4, "lr": 1e-3}}


def _write_table(path: Path, rows: Sequence[Sequence]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(rows)


def write_study(root: Path, seeds: Sequence[int] = (1, 2, 3), arms: Sequence[str] = ("baseline", "mraugment"),
                value: ValueFn = default_ssim, brain: Sequence[Tuple[str, str]] = tuple(BRAIN_VOLS),
                knee: Sequence[Tuple[str, str]] = tuple(KNEE_VOLS), accs: Sequence[int] = (4, 8)) -> Path:
    """A finished study folder ``root`` with one run per arm x seed."""
    root.mkdir(parents=True, exist_ok=True)
    spec = {"study": root.name, "config": "varnet_ds/conf/demo.yaml", "ds_config": "ds_configs/zero2.json",
            "seeds": list(seeds), "reference": arms[0],
            "arms": {a: [f"aug.enabled={str(a != 'baseline').lower()}"] for a in arms},
            "overrides": ["train.epochs=4"], "device": "test box (2 CPU cores)"}
    (root / "study.yaml").write_text(yaml.safe_dump(spec))
    for arm in arms:
        for seed in seeds:
            folder = root / f"{arm}-s{seed}"
            folder.mkdir()
            (folder / "config.yaml").write_text(yaml.safe_dump(_config(arm, seed, folder)))
            rows = [{"step": 0, "epoch": 0, "split": "event", "event": "start", "device": "cpu"}]
            rows += [{"step": s, "epoch": (s - 1) // 2, "split": "train", "loss": 0.5 - 0.01 * s} for s in (1, 2, 3)]
            rows += [{"step": 4, "epoch": 1, "split": "val_brain", "ssim": 0.6, "psnr": 26.0, "nmse": 0.2},
                     {"step": 4, "epoch": 1, "split": "val_knee", "ssim": 0.7, "psnr": 27.0, "nmse": 0.1},
                     {"step": 4, "epoch": 1, "split": "event", "event": "end"}]
            (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            for split, vols in (("val_brain", brain), ("val_knee", knee)):
                for ckpt, suffix in (("final", ""), ("selected", "_selected")):
                    table = []
                    for acc in accs:
                        for i, (fname, acq) in enumerate(vols):
                            m = _metrics(value(arm, seed, ckpt, split, i, acc))
                            table.append([fname, acq, acc, 3, m["ssim"], m["psnr"], m["nmse"]])
                    _write_table(folder / f"{split}_per_volume{suffix}.csv", table)
            (folder / "selected.json").write_text(json.dumps({"step": 4, "epoch": seed, "criterion": "val_knee/ssim",
                                                              "value": 0.7}))
            write_finished(folder, step=4, epoch=1, epochs=4, max_steps=None, files=output_files(folder))
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The default study's report (2000 resamples to keep the test fast) and a README block from it."""
    tmp = tmp_path_factory.mktemp("study")
    study = write_study(tmp / "knee2brain")
    readme = tmp / "README.md"
    readme.write_text(f"# Title\n\nintro text\n{README_START}\nold block\n{README_END}\ntail text\n")
    json_path = build_study_report(study, n_resamples=2000)
    assert json_path == study / "report" / "study.json"
    update_readme(readme, json_path, tmp / "docs")
    return study, json_path, readme


def _strict(text: str):
    def bad(name: str):
        raise ValueError(f"non-strict JSON constant {name}")
    return json.loads(text, parse_constant=bad)


def test_study_json_and_recompute_from_per_volume_csv(built):
    study, json_path, _ = built
    summary = _strict(json_path.read_text())
    assert summary["study"] == "knee2brain" and summary["primary"] == "selected"
    assert summary["reference"] == "baseline" and summary["device"] == "test box (2 CPU cores)"
    assert list(summary["arms"]) == ["baseline", "mraugment"]
    assert summary["arms"]["mraugment"]["runs"] == ["mraugment-s1", "mraugment-s2", "mraugment-s3"]
    assert summary["arms"]["baseline"]["selected_epoch"] == [1, 2, 3]
    with open(json_path.parent / "per_volume.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 * 2 * 2 * (len(BRAIN_VOLS) + len(KNEE_VOLS))  # runs x checkpoints x accs x volumes
    # per-seed means per arm from the CSV
    for arm in ("baseline", "mraugment"):
        for seed_i, seed in enumerate((1, 2, 3)):
            for ckpt in ("selected", "final"):
                vals = [float(r["psnr"]) for r in rows if (r["arm"], r["seed"], r["checkpoint"], r["split"])
                        == (arm, str(seed), ckpt, "val_knee")]
                assert summary["arms"][arm]["knee_psnr"][ckpt][seed_i] == pytest.approx(np.mean(vals), abs=1e-12)
    method = summary["methods"]["contrast"]
    for token in ("scipy.stats.bootstrap", "method='percentile'", "n_resamples=2000", "default_rng(0)",
                  "paired=False", "vectorized=False", "scipy.stats.wilcoxon", "same seed"):
        assert token in method
    n_resamples = int(re.search(r"n_resamples=(\d+)", method).group(1))
    rng_seed = int(re.search(r"default_rng\((\d+)\)", method).group(1))
    for group, keep in (("all", lambda r: True), ("acquisition=AXT2", lambda r: r["acquisition"] == "AXT2"),
                        ("acceleration=8", lambda r: r["acceleration"] == "8")):
        rec = [c for c in summary["contrasts"] if (c["arm"], c["split"], c["metric"], c["checkpoint"], c["group"])
               == ("mraugment", "val_brain", "ssim", "selected", group)]
        assert len(rec) == 1 and rec[0]["method"] == method
        rec = rec[0]
        table: Dict[Tuple[str, int, str, int], float] = {}
        for r in rows:
            if r["split"] == "val_brain" and r["checkpoint"] == "selected" and keep(r):
                table[(r["arm"], int(r["seed"]), r["fname"], int(r["acceleration"]))] = float(r["ssim"])
        fnames = sorted({k[2] for k in table})
        accs = sorted({k[3] for k in table})
        d = np.array([[np.mean([table[("mraugment", s, f, a)] - table[("baseline", s, f, a)] for a in accs])
                       for f in fnames] for s in (1, 2, 3)])
        res = scipy.stats.bootstrap((np.arange(3), np.arange(len(fnames))),
                                    lambda si, vi, d=d: d[np.ix_(si, vi)].mean(), paired=False, vectorized=False,
                                    method="percentile", n_resamples=n_resamples, rng=np.random.default_rng(rng_seed))
        assert rec["mean"] == pytest.approx(d.mean(), abs=1e-12)
        assert rec["ci_low"] == pytest.approx(res.confidence_interval.low, abs=1e-12)
        assert rec["ci_high"] == pytest.approx(res.confidence_interval.high, abs=1e-12)
        assert rec["ci_low"] < rec["mean"] < rec["ci_high"]
        assert rec["p_value"] == pytest.approx(scipy.stats.wilcoxon(d.mean(axis=0)).pvalue, abs=1e-12)
        assert (rec["n_seeds"], rec["n_volumes"]) == (3, len(fnames))
        ref_means = [np.mean([v for k, v in table.items() if k[0] == "baseline" and k[1] == s]) for s in (1, 2, 3)]
        assert rec["noise_floor_sd"] == pytest.approx(np.std(ref_means, ddof=1), abs=1e-12)
        assert rec["wins"] == int((d.mean(axis=0) > 0).sum()) and rec["losses"] == int((d.mean(axis=0) < 0).sum())
    groups = {c["group"] for c in summary["contrasts"] if c["split"] == "val_brain"}
    assert groups == {"all", "acquisition=AXT1", "acquisition=AXT2", "acceleration=4", "acceleration=8"}
    assert {c["group"] for c in summary["contrasts"] if c["split"] == "val_knee"} == {"all", "acceleration=4",
                                                                                      "acceleration=8"}
    assert len({(c["checkpoint"], c["split"], c["metric"]) for c in summary["contrasts"]}) == 12


def test_study_md_and_figure(built):
    _, json_path, _ = built
    out = json_path.parent
    md = (out / "study.md").read_text()
    summary = _strict(json_path.read_text())
    rec = [c for c in summary["contrasts"] if (c["split"], c["metric"], c["checkpoint"], c["group"])
           == ("val_brain", "ssim", "selected", "all")][0]
    assert f"**{rec['mean']:+.4f}** (95 % interval [{rec['ci_low']:+.4f}, {rec['ci_high']:+.4f}]" in md
    assert "acquisition=AXT2" in md and "acceleration=4" in md
    base = summary["arms"]["baseline"]["brain_ssim"]["selected"]
    assert f"{np.mean(base):.4f} ± {np.std(base, ddof=1):.4f}" in md
    import matplotlib.image as mpimg
    img = mpimg.imread(out / "study_seeds.png")
    assert img.shape[1] > img.shape[0] and float(img[..., :3].std()) > 0.05
    assert not list(out.glob("*.tmp*")) and not list(out.glob(".*tmp*"))


def test_readme_block(built, tmp_path):
    study, json_path, readme = built
    text = readme.read_text()
    head, rest = text.split(README_START + "\n")
    block, tail = rest.split(README_END + "\n")
    assert head == "# Title\n\nintro text\n" and tail == "tail text\n" and "old block" not in block
    summary = _strict(json_path.read_text())
    brain = [c for c in summary["contrasts"] if (c["arm"], c["split"], c["metric"], c["checkpoint"], c["group"])
             == ("mraugment", "val_brain", "ssim", "selected", "all")][0]
    knee = [c for c in summary["contrasts"] if (c["arm"], c["split"], c["metric"], c["checkpoint"], c["group"])
            == ("mraugment", "val_knee", "ssim", "selected", "all")][0]
    for rec, name in ((brain, "brain SSIM"), (knee, "knee val SSIM")):
        line = [ln for ln in block.splitlines() if ln.startswith(f"- {name}, mraugment − baseline")]
        assert len(line) == 1, name
        assert (f"**{rec['mean']:+.4f}** (95 % interval [{rec['ci_low']:+.4f}, {rec['ci_high']:+.4f}], Wilcoxon "
                f"p = {rec['p_value']:.3g}, 3 seeds, {rec['n_volumes']} volumes)") in line[0]
        assert f"noise floor) {rec['noise_floor_sd']:.4f}" in line[0]
        excl = rec["ci_low"] > 0 or rec["ci_high"] < 0
        assert ("the interval excludes zero" if excl else "the interval includes zero") in line[0]
    table = [ln for ln in block.splitlines() if ln.startswith("| mraugment |")]
    mra = summary["arms"]["mraugment"]
    cells = [c.strip() for c in table[0].strip("|").split("|")]
    assert cells[:2] == ["mraugment", "3"]
    for cell, values in ((cells[2], mra["knee_ssim"]["selected"]), (cells[5], mra["brain_ssim"]["final"])):
        assert cell == f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"
    assert summary["device"] in block and summary["generated"] in block
    assert "](docs/study_seeds.png)" in block and (readme.parent / "docs" / "study_seeds.png").is_file()
    # a README elsewhere links the report's own figure by a relative path
    other = tmp_path / "sub" / "NOTES.md"
    other.parent.mkdir()
    other.write_text(f"{README_START}\n{README_END}\n")
    update_readme(other, json_path)
    link = os.path.relpath(json_path.parent / "study_seeds.png", other.parent).replace(os.sep, "/")
    assert f"]({link})" in other.read_text()


def test_readme_without_markers_is_refused_and_untouched(built, tmp_path, capsys):
    study, json_path, _ = built
    readme = tmp_path / "README.md"
    original = f"# x\n{README_START}\nno end marker\n"
    readme.write_text(original)
    with pytest.raises(CompareError, match=f"{readme}.*study-results:end"):
        update_readme(readme, json_path, tmp_path / "docs")
    assert readme.read_text() == original and not (tmp_path / "docs").exists()
    out = tmp_path / "out"
    assert main([str(study), "--out", str(out), "--readme", str(readme)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{os.path.basename(sys.argv[0])}: error: ") and str(readme) in err and err.count("\n") == 1
    assert readme.read_text() == original and not out.exists()  # nothing written


# ---------------------------------------------------------------------------------------------- refusals


def test_finished_means_the_marker(tmp_path):
    """Every output present but no FINISHED (killed while finishing): unfinished; a marker whose files are gone:
    refused, naming the file."""
    study = write_study(tmp_path / "s", seeds=(1, 2))
    (study / "mraugment-s2" / "FINISHED").unlink()
    with pytest.raises(CompareError, match=r"mraugment-s2 \(unfinished: no FINISHED marker\); rerun the study"):
        load_study(study)
    write_finished(study / "mraugment-s2", step=4, epoch=1, epochs=4, max_steps=None, files=["config.yaml"])
    (study / "mraugment-s2" / "config.yaml").unlink()  # altered after it finished: the marker no longer holds
    with pytest.raises(CompareError, match=r"mraugment-s2/FINISHED vouches for config.yaml, which is missing"):
        load_study(study)


def test_missing_run_is_named(tmp_path, capsys):
    study = write_study(tmp_path / "s", seeds=(1, 2))
    (study / "mraugment-s2" / "val_brain_per_volume_selected.csv").unlink()
    write_finished(study / "mraugment-s2", step=4, epoch=1, epochs=4, max_steps=None, files=[])
    with pytest.raises(CompareError, match=r"mraugment-s2 \(missing val_brain_per_volume_selected.csv\)"):
        load_study(study)
    for f in (study / "baseline-s1").iterdir():
        f.unlink()
    (study / "baseline-s1").rmdir()
    assert main([str(study)]) == 2
    err = capsys.readouterr().err
    assert "baseline-s1 (no folder)" in err and "mraugment-s2" in err and not (study / "report").exists()


def test_config_difference_outside_arm_keys_is_named(tmp_path):
    study = write_study(tmp_path / "s", seeds=(1, 2))
    load_study(study)  # aug.enabled (arm key), run.*, log.* differ already: accepted
    path = study / "mraugment-s2" / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["train"]["lr"] = 3e-4
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(CompareError, match=r"train\.lr \(0\.001 in baseline-s1, .*0\.0003 in mraugment-s2\)") as err:
        load_study(study)
    assert "aug.enabled (" not in str(err.value) and "log." not in str(err.value).split(":", 2)[-1].split("(")[0]
    cfg["train"]["lr"] = 1e-3
    cfg["aug"]["p_max"] = 0.3  # aug.* but not an arm override key
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(CompareError, match=r"aug\.p_max"):
        load_study(study)


def test_no_study_yaml_or_no_runs(tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    assert main([str(plain)]) == 2
    assert f"{plain} is not a study folder: no study.yaml" in capsys.readouterr().err
    empty = write_study(tmp_path / "empty", seeds=(1,), arms=("baseline", "mraugment"))
    for run in ("baseline-s1", "mraugment-s1"):
        for f in (empty / run).iterdir():
            f.unlink()
        (empty / run).rmdir()
    with pytest.raises(CompareError, match=f"{empty}: the study has no finished runs"):
        load_study(empty)
    proc = subprocess.run([sys.executable, str(REPO / "analysis" / "study.py"), str(plain)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and proc.stderr.startswith("study.py: error:") and str(plain) in proc.stderr


# ---------------------------------------------------------------------------------------------- compare.py


def test_compare_accepts_a_study_folder(tmp_path, capsys):
    """Alone, a study folder gets the study report (tests/test_study_page.py); beside a loose run folder it stands
    for its runs in the run comparison, with the study outputs written too."""
    study = write_study(tmp_path / "mini", seeds=(1, 2), brain=BRAIN_VOLS[:1], knee=KNEE_VOLS[:1], accs=(4,))
    out = tmp_path / "out"
    assert compare_main([str(study), "--out", str(out)]) == 0
    text = (out / "study.json").read_text()
    summary = _strict(text)  # one volume: p is undefined -> null, not NaN
    assert summary["study"] == "mini" and summary["arms"]["mraugment"]["seeds"] == [1, 2]
    assert len(summary["contrasts"]) == 12 and all(c["p_value"] is None for c in summary["contrasts"])
    for name in ("per_volume.csv", "study_seeds.png", "study.md", "report.md", "report.html"):
        assert (out / name).is_file(), name
    assert "no interval (fewer than 2 seeds or volumes)" in (out / "study.md").read_text()
    assert "There is no interval: it needs at least 2 seeds and 2 volumes." in (out / "report.md").read_text()
    assert not (out / "transfer_table.csv").exists()
    loose = tmp_path / "loose"
    shutil.copytree(study / "baseline-s1", loose)
    mixed = tmp_path / "mixed"
    assert compare_main([str(loose), str(study), "--out", str(mixed)]) == 0
    with open(mixed / "transfer_table.csv", newline="") as f:
        labels = list(dict.fromkeys(r["label"] for r in csv.DictReader(f)))
    assert labels == ["baseline-s1", "baseline-s1#2", "baseline-s2", "mraugment-s1", "mraugment-s2"]
    assert (mixed / "study.json").is_file() and "Differences" in (mixed / "report.md").read_text()


def test_cli_end_to_end_with_readme(tmp_path, capsys, monkeypatch):
    study = write_study(tmp_path / "cli", seeds=(1, 2), brain=BRAIN_VOLS[:3], knee=KNEE_VOLS[:2], accs=(4,))
    monkeypatch.chdir(tmp_path)
    Path("README.md").write_text(f"top\n{README_START}\n{README_END}\nbottom\n")
    assert main([str(study), "--readme", "README.md", "--figure-dir", "docs"]) == 0
    assert "study.json" in capsys.readouterr().out
    summary = _strict((study / "report" / "study.json").read_text())
    assert summary["methods"]["contrast"].count("n_resamples=10000") == 1  # the CLI default
    text = Path("README.md").read_text()
    assert text.startswith(f"top\n{README_START}\nStudy `cli`") and text.endswith(f"{README_END}\nbottom\n")
    assert "](docs/study_seeds.png)" in text and Path("docs/study_seeds.png").is_file()
    assert main([str(study), "--figure-dir", "docs"]) == 2  # --figure-dir without --readme

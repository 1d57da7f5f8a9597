"""The study report (varnet_ds/analysis/study/page.py via varnet-ds report): report.md/html of a study folder lead
with the study's contrast from study.json, show the study's figures and tables, never compare runs one against
another, and render in headless Chromium. Study folders are faked (tests/study_page_data.py), nothing is trained."""

from __future__ import annotations

import base64
import csv
import json
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from browser import screenshot
from study_page_data import SELECTED_EPOCH, write_rich_study
from test_study_stats import BRAIN_VOLS, KNEE_VOLS, write_study

from varnet_ds.analysis.compare.report import main as compare_main
from varnet_ds.analysis.report_doc import Document, render_markdown
from varnet_ds.analysis.runs import CompareError
from varnet_ds.analysis.study.contrast_text import headline, lead_sentences
from varnet_ds.analysis.study.load import load_study
from varnet_ds.analysis.study.page import build_study_page, recon_settings, volume_figure
from varnet_ds.analysis.study.plots import across_seeds
from varnet_ds.analysis.study.sections import mapping_blocks

REPO = Path(__file__).resolve().parents[1]

FIGURES = ("study_volumes.png", "study_val_curves.png", "study_train_loss.png", "study_recon.png", "study_seeds.png")
NOTE = "Demo data: phantoms and simulated coils, not evidence about real scans."


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """(study folder, report folder, study.json mapping) of the demo-like study (1000 resamples: fast)."""
    study = write_rich_study(tmp_path_factory.mktemp("runs") / "demo")
    md = build_study_page(study, study / "report", NOTE, n_resamples=1000)
    assert md == study / "report" / "report.md"
    return study, md.parent, json.loads((md.parent / "study.json").read_text())


def _primary(summary, metric="ssim", split="val_brain", group="all"):
    [rec] = [c for c in summary["contrasts"] if (c["arm"], c["split"], c["metric"], c["checkpoint"], c["group"])
             == ("mraugment", split, metric, "selected", group)]
    return rec


def _signed(value: float, digits: int = 4) -> str:
    return f"{value:+.{digits}f}".replace("-", "−")


def test_report_leads_with_the_contrast_from_study_json(page):
    _, out, summary = page
    md = (out / "report.md").read_text()
    rec = _primary(summary)
    first = md.split("\n\n")[1]  # the paragraph right under the title
    assert md.startswith("# Study demo: mraugment vs baseline\n\n")
    assert first.startswith(f"mraugment changed brain SSIM by **{_signed(rec['mean'])}** relative to baseline "
                            f"(selected checkpoints, mean over 3 seeds × {rec['n_volumes']} brain volumes).")
    assert f"The 95 % CI runs from {_signed(rec['ci_low'])} to {_signed(rec['ci_high'])}" in first
    verdict = "excludes zero" if rec["ci_low"] > 0 or rec["ci_high"] < 0 else "includes zero"
    assert f"it {verdict}" in first and f"p = {rec['p_value']:.2g}." in first
    assert f"better on {rec['wins']} and worse on {rec['losses']} of {rec['n_volumes']} volumes" in first
    assert f"{rec['noise_floor_sd']:.4f}; the change is {abs(rec['mean']) / rec['noise_floor_sd']:.1f}× that" in first
    psnr = _primary(summary, "psnr")
    assert f"brain PSNR: {_signed(psnr['mean'], 2)} dB (95 % CI {_signed(psnr['ci_low'], 2)} to" in md.split("##")[0]
    assert NOTE in md.split("\n## ")[0]
    html = (out / "report.html").read_text()
    body = html.split("</nav>", 1)[1]
    assert body.lstrip().startswith('<p class="lead">mraugment changed brain SSIM by <strong>')


def test_no_run_against_run_comparison(page):
    _, out, _ = page
    for text in ((out / "report.md").read_text(), (out / "report.html").read_text()):
        assert "baseline-s1 −" not in text and "− baseline-s1" not in text and "baseline-s2 − " not in text
        for word in ("Differences", "Warnings", "run.seed", "run.arm", "configs differ", "Transfer table"):
            assert word not in text, word
    assert not (out / "transfer_diff.csv").exists() and not (out / "paired_comparison.csv").exists()


def test_figures_exist_are_linked_and_embedded(page):
    _, out, _ = page
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert sorted(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)) == sorted(FIGURES)
    images = sorted(base64.b64decode(i) for i in re.findall(r'<img src="data:image/png;base64,([^"]+)"', html))
    assert images == sorted((out / name).read_bytes() for name in FIGURES)
    for name in FIGURES:
        img = mpimg.imread(out / name)[..., :3]
        assert float(img.std()) > 0.05, f"{name} looks blank"
        assert f"`{name}`" in md.split("\n## Files\n")[1]
    order = [md.index(f"\n## {t}\n") for t in ("Per brain volume", "By acquisition and acceleration", "Curves",
                                                "Reconstructions", "Per arm", "Model selection", "All contrasts",
                                                "Method", "Provenance", "Files")]
    assert order == sorted(order)
    assert "\n## Notes\n" not in md  # nothing was missing


def _table(md: str, caption_start: str):
    block = md.split(caption_start, 1)[1].split("\n\n", 2)[1]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()]
    return [dict(zip(rows[0], r)) for r in rows[2:]]


def test_breakdown_cells_and_margins(page):
    study, out, summary = page
    md = (out / "report.md").read_text()
    rows = {r["acquisition"]: r for r in _table(md, "**brain SSIM, mraugment − baseline**")}
    assert list(rows) == ["AXFLAIR", "AXT1", "AXT1POST", "AXT2", "all acquisitions"]
    with open(out / "per_volume.csv", newline="") as f:  # an independent recompute of one cell
        table = {(r["arm"], int(r["seed"]), r["fname"]): float(r["ssim"]) for r in csv.DictReader(f)
                 if (r["split"], r["checkpoint"], r["acquisition"], r["acceleration"]) == ("val_brain", "selected",
                                                                                           "AXT1", "8")}
    fnames = sorted({k[2] for k in table})
    delta = np.array([[table[("mraugment", s, f)] - table[("baseline", s, f)] for f in fnames] for s in (1, 2, 3)])
    wins, losses = int((delta.mean(axis=0) > 0).sum()), int((delta.mean(axis=0) < 0).sum())
    assert rows["AXT1"]["×8"] == f"{_signed(delta.mean())} ({wins}/{losses} of {len(fnames)})"
    for cell, group in ((rows["AXT2"]["all accelerations"], "acquisition=AXT2"),
                        (rows["all acquisitions"]["×4"], "acceleration=4"),
                        (rows["all acquisitions"]["all accelerations"], "all")):
        rec = _primary(summary, group=group)
        assert cell.startswith(f"{_signed(rec['mean'])} [{_signed(rec['ci_low'])}, {_signed(rec['ci_high'])}], p")


def test_selection_recon_and_provenance(page):
    study, out, summary = page
    md = (out / "report.md").read_text()
    sel = {r["run"]: r for r in _table(md, "last epoch.")}
    assert [int(sel[f"baseline-s{s}"]["selected epoch"]) for s in (1, 2, 3)] == [SELECTED_EPOCH[s] for s in (1, 2, 3)]
    assert sel["baseline-s2"]["selected = last"] == "yes" and sel["mraugment-s3"]["selected = last"] == "no"
    assert sel["mraugment-s1"]["knee val evaluations (epochs)"] == "2, 4, 6, 8"
    assert "before the last in 4 of 6 runs" in md
    recon = md.split("](study_recon.png)", 1)[1].split("\n## ", 1)[0]
    assert "first volume by file name, middle slice" in recon
    assert "baseline-s1: weights `model_fp32.pt` (final, step 48), equispaced mask ×4" in recon
    prov = md.split("\n## Provenance\n", 1)[1]
    commit = summary["provenance"]["environment"]["git.commit"]
    assert f"| environment.git.commit | {commit} |" in prov and "| start.device | cpu (Test CPU) (all 6) |" in prov
    assert "| ranks_threads.threads_per_rank | 1 (all 6) |" in prov and "| seeds | 1, 2, 3 |" in prov
    assert "| train_path | /data/knee | 10 | 1000 | " + "1" * 64 + " |" in prov


def test_provenance_mapping_is_rendered_generically():
    """Whatever study.json's provenance holds (here keys the report does not know) is shown."""
    prov = {"manifest": {"file_a.h5": {"sha256": "ab", "bytes": 3}, "file_b.h5": {"sha256": "cd", "bytes": 3}},
            "lock": {"file": "requirements.lock", "hash": None}, "seeds": [1, 2], "note": "x"}
    doc = Document("t")
    doc.add(*mapping_blocks("Provenance (study.json)", prov))
    md = render_markdown(doc)
    assert "| manifest.bytes | 3 (all 2) |" in md and "| file_a.h5 | ab |" in md and "| file_b.h5 | cd |" in md
    assert "| lock.file | requirements.lock |" in md and "| lock.hash | null |" in md and "| seeds | 1, 2 |" in md
    assert "| note | x |" in md


def test_mean_sd_over_seeds():
    x, mean, sd, n = across_seeds([{1.0: 0.5, 2.0: 0.7}, {1.0: 0.7, 2.0: 0.9}, {1.0: 0.6}])
    assert x.tolist() == [1.0, 2.0] and n.tolist() == [3, 2]
    assert mean == pytest.approx([0.6, 0.8]) and sd == pytest.approx([0.1, np.std([0.7, 0.9], ddof=1)])


def test_stale_study_json_is_refused(page):
    study_dir, _, summary = page
    stale = json.loads(json.dumps(summary))
    _primary(stale)["mean"] += 0.001
    with pytest.raises(CompareError, match="study.json's brain ssim mean for mraugment .* differs"):
        volume_figure(stale, load_study(study_dir), "mraugment", study_dir / "x.png")


def test_compare_routes_a_study_folder(tmp_path, capsys):
    """compare.py on a study folder writes the study report (no run comparison, stale files removed); --labels is
    refused; without recon/ the logged-image fallback is noted."""
    study = write_study(tmp_path / "mini", seeds=(1, 2), brain=BRAIN_VOLS[:3], knee=KNEE_VOLS[:2], accs=(4,))
    out = tmp_path / "out"
    out.mkdir()
    (out / "transfer_diff.csv").write_text("stale")
    assert compare_main([str(study), "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"report: {out / 'report.md'}")
    md = (out / "report.md").read_text()
    assert md.split("\n\n")[1].startswith("mraugment changed brain SSIM by **")
    assert not (out / "transfer_diff.csv").exists() and (out / "study.json").is_file()
    assert "no seed has recon/*.h5 for every arm" in md.split("\n## Notes\n")[1]
    assert compare_main([str(study), "--out", str(out), "--labels", "a"]) == 2
    assert "--labels names run folders" in capsys.readouterr().err


def test_study_report_renders_in_headless_chromium(page, tmp_path):
    """The page renders; the lead box (green rule #2c7a2c) sits at the top, above the first figure."""
    _, out, _ = page
    img = screenshot(out / "report.html", tmp_path, height=1400)
    assert img.shape[:2] == (1400, 1280) and float(img.std()) > 0.05
    assert (img.max(axis=-1) < 0.35).mean() > 0.002, "no text rendered"
    rule = np.abs(img - np.array([0x2C, 0x7A, 0x2C]) / 255.0).max(axis=-1) < 0.06
    rows = np.nonzero(rule.sum(axis=1) >= 3)[0]
    assert rows.size > 40, "lead box not rendered"
    assert rows.min() < 300, f"lead box starts at y={rows.min()}, not at the top"


def test_contrast_in_words_edge_cases():
    """Lower NMSE is better; one seed gives no interval (said once, not as a fake interval); plurals."""
    rec = dict(arm="a", reference="r", split="val_brain", metric="nmse", checkpoint="selected", group="all",
               mean=-0.002, ci_low=-0.003, ci_high=-0.001, p_value=0.0004, n_seeds=3, n_volumes=12,
               noise_floor_sd=0.001, wins=10, losses=2)
    lead = " ".join(lead_sentences(rec))
    assert "it excludes zero, so in this study a made brain NMSE better than r." in lead and "p < 0.001" in lead
    assert "the change is 2.0× that" in lead
    one = {**rec, "n_seeds": 1, "ci_low": -0.002, "ci_high": -0.002, "p_value": None, "noise_floor_sd": None}
    assert headline(one) == ("a − r, brain NMSE: −0.00200 (no interval, which needs 2 seeds and 2 volumes; p n/a; "
                             "1 seed × 12 volumes).")
    assert "Noise floor: not defined (fewer than 2 seeds)." in lead_sentences(one)


def test_recon_settings_name_the_weights(tmp_path):
    """The caption says which weights made the slice: `evaluate --weights selected` writes model_selected.pt."""
    (tmp_path / "recon").mkdir()
    (tmp_path / "recon" / "metrics.json").write_text(json.dumps({"settings": {
        "checkpoint": "/r/model_selected.pt", "checkpoint_step": 12, "mask_type": "equispaced", "acceleration": 8}}))
    assert recon_settings(tmp_path) == "weights `model_selected.pt` (selected, step 12), equispaced mask ×8"
    assert recon_settings(tmp_path / "nope") == "weights and mask not recorded (no recon/metrics.json)"

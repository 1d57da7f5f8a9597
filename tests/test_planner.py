"""Memory-budget planner: policy choice (pure), DeepSpeed margin, data envelope, CPU refusal, profiling logic."""

import math
from pathlib import Path

import pytest
import torch

from varnet_ds.data.fastmri_file import DataError
from varnet_ds.profiling import planner
from varnet_ds.profiling.planner import (
    POLICIES,
    BudgetError,
    PlannerError,
    Policy,
    PolicyProfile,
    choose_policy,
    deepspeed_extra_bytes,
    largest_shape,
    plan,
    profile_policies,
)
from varnet_ds.sim.synth import write_dataset
from varnet_ds.system import GIB

DS = Path(__file__).resolve().parent.parent / "ds_configs"
TINY = dict(num_cascades=1, chans=4, pools=2, sens_chans=2, sens_pools=2)


def prof(ck, prec, peak, step, extra=0.0):
    return PolicyProfile(Policy(ck, prec), peak, step, extra)


# Shaped like issue 8's H100 numbers (knee): fp32 plain is fastest but large; checkpointing + bf16 smallest.
PROFILES = [
    prof("none", "fp32", 10.85, 0.462),
    prof("none", "bf16", 5.27, 0.264),
    prof("cascades", "fp32", 4.10, 0.560),
    prof("cascades", "bf16", 2.46, 0.376),
    prof("all", "fp32", 3.20, 0.600),
    prof("all", "bf16", 1.70, 0.410),
]


def test_policies_are_every_combination_and_chunked_sensitivity_checkpoints():
    assert len(set(POLICIES)) == 14
    assert {(p.checkpointing, p.precision) for p in POLICIES if not p.sens_chunk} == {
        (c, p) for c in ("none", "cascades", "all", "selective", "selective_all") for p in ("fp32", "bf16")
    }
    assert {(p.checkpointing, p.precision, p.sens_chunk) for p in POLICIES if p.sens_chunk} == {
        (c, p, 4) for c in ("all", "selective_all") for p in ("fp32", "bf16")
    }
    assert Policy("all", "bf16", 4).overrides() == ["model.checkpointing=all", "train.precision=bf16",
                                                    "model.sens_chunk=4"]
    with pytest.raises(ValueError, match="model.sens_chunk = -1"):
        Policy("all", "bf16", -1)
    with pytest.raises(ValueError, match="model.checkpointing = 'some'"):
        Policy("some", "fp32")
    with pytest.raises(ValueError, match="train.precision = 'fp16'"):
        Policy("none", "fp16")


def test_choose_fastest_that_fits():
    big = choose_policy(PROFILES, budget_gib=80.0)
    assert big.policy == Policy("none", "bf16")  # fastest overall
    mid = choose_policy(PROFILES, budget_gib=3.0)  # 2.46 x 1.1 = 2.71 fits; 3.2 x 1.1 does not
    assert mid.policy == Policy("cascades", "bf16")
    assert mid.profile is PROFILES[3]
    assert "faster model.checkpointing=none train.precision=bf16" in mid.reason
    small = choose_policy(PROFILES, budget_gib=2.0)  # only all/bf16: 1.70 x 1.1 = 1.87
    assert small.policy == Policy("all", "bf16")
    assert "1.87 GiB <= budget 2 GiB" in small.reason


def test_margin_is_respected():
    profiles = [prof("none", "bf16", 1.0, 0.1), prof("all", "bf16", 0.5, 0.3)]
    # 1.0 x 1.10 = 1.10 > 1.08: the fast policy is excluded with the default margin, included with 5 %.
    assert choose_policy(profiles, 1.08).policy == Policy("all", "bf16")
    assert choose_policy(profiles, 1.08, margin=0.05).policy == Policy("none", "bf16")
    assert choose_policy(profiles, 1.10 + 1e-9).policy == Policy("none", "bf16")


def test_ties_go_to_the_smaller_peak():
    profiles = [prof("none", "fp32", 1.5, 0.2), prof("cascades", "fp32", 1.2, 0.2)]
    assert choose_policy(profiles, 10.0).policy == Policy("cascades", "fp32")


def test_budget_error_says_what_would_fit():
    with pytest.raises(BudgetError) as info:
        choose_policy(PROFILES, budget_gib=1.5)
    msg = str(info.value)
    assert "train.memory_budget_gib = 1.5" in msg
    assert f"needs >= {1.70 * 1.1:.2f} GiB" in msg  # 1.87
    assert "model.checkpointing=all train.precision=bf16 at 1.70 GiB" in msg
    assert "reduce coils / crop" in msg


def test_budget_error_when_everything_ran_out_of_memory():
    inf = float("inf")
    with pytest.raises(BudgetError, match="every policy ran out of device memory"):
        choose_policy([prof("none", "fp32", inf, inf), prof("all", "bf16", inf, inf)], 4.0)


def test_choose_policy_rejects_bad_arguments():
    with pytest.raises(ValueError, match="no profiles"):
        choose_policy([], 2.0)
    with pytest.raises(ValueError, match="memory_budget_gib = 0"):
        choose_policy(PROFILES, 0)
    with pytest.raises(ValueError, match="margin = -0.1"):
        choose_policy(PROFILES, 2.0, margin=-0.1)


def test_deepspeed_extra_bytes_from_the_shipped_configs():
    n = 29_936_966
    zero2 = deepspeed_extra_bytes(DS / "zero2.json", n)
    assert zero2 == 20_000_000 * 4 * 2 + n * 4  # buckets + fp32 master copy at world size 1
    assert deepspeed_extra_bytes(DS / "zero2.json", n, world_size=8) == 20_000_000 * 8 + n * 4 // 8
    assert deepspeed_extra_bytes(DS / "zero0.json", n) == 20_000_000 * 8  # no master copy at stage 0
    assert deepspeed_extra_bytes(DS / "zero2_offload.json", n) == 20_000_000 * 8  # master on the CPU
    assert deepspeed_extra_bytes({"zero_optimization": {"stage": 2}}, 10) == 500_000_000 * 8 + 40
    assert deepspeed_extra_bytes(None, n) == 0
    with pytest.raises(ValueError, match="nope.json"):
        deepspeed_extra_bytes("nope.json", n)


def test_largest_shape_on_the_fixture(synth_dirs):
    assert largest_shape(synth_dirs["train"]) == (4, 64, 48)
    assert largest_shape(str(synth_dirs["brain"])) == (4, 64, 40)
    assert largest_shape([synth_dirs["brain"], synth_dirs["train"], None]) == (4, 64, 48)


def test_largest_shape_is_the_envelope(synth_dirs, tmp_path):
    write_dataset("knee", tmp_path / "many_coils", volumes=1, slices=1, coils=6, shape=(32, 24), recon_size=(16, 16))
    assert largest_shape([synth_dirs["train"], tmp_path / "many_coils"]) == (6, 64, 48)


def test_largest_shape_errors(tmp_path):
    with pytest.raises(ValueError, match="no data folder"):
        largest_shape([])
    with pytest.raises(DataError, match="missing_folder"):
        largest_shape(tmp_path / "missing_folder")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_profile_and_plan_refuse_cpu(synth_dirs):
    with pytest.raises(PlannerError, match="profiles CUDA memory.*model.checkpointing / train.precision by hand"):
        profile_policies(TINY, (2, 32, 24), "cpu")
    with pytest.raises(PlannerError, match="profiles CUDA memory"):
        plan(TINY, synth_dirs["train"], 2.0, torch.device("cpu"))


def test_run_policy_trains_on_cpu():
    batch = planner.make_batch(2, 32, 24, "cpu")
    step_s, loss = planner.run_policy(TINY, Policy("cascades", "bf16"), batch, torch.device("cpu"), steps=1)
    assert step_s > 0 and math.isfinite(loss)


@pytest.fixture
def fake_cuda(monkeypatch):
    """Run the profile loop on CPU with CUDA's memory counters faked: every policy peaks 0.5 GiB above its start;
    fp32 policies run out of memory."""
    state = {"alloc": 3 * GIB, "max": 0}
    monkeypatch.setattr(planner, "require_cuda", lambda device: torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: state["alloc"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: state["max"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: state.update(max=state["alloc"]))
    real_run = planner.run_policy

    def fake_run(model_kw, policy, batch, device, steps):
        if policy.precision == "fp32":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")
        out = real_run(model_kw, policy, batch, device, steps)
        state["max"] = state["alloc"] + GIB // 2
        return out

    monkeypatch.setattr(planner, "run_policy", fake_run)


def test_profile_policies_bookkeeping(fake_cuda):
    lines = []
    profiles = profile_policies(TINY, (2, 32, 24), "cuda", steps=1,
                                policies=[Policy("none", "fp32"), Policy("all", "bf16")],
                                ds_config={"zero_optimization": {"stage": 0, "reduce_bucket_size": GIB // 8}},
                                log=lines.append)
    assert [p.policy for p in profiles] == [Policy("none", "fp32"), Policy("all", "bf16")]
    assert profiles[0].peak_gib == math.inf and profiles[0].step_s == math.inf
    assert profiles[1].ds_extra_gib == pytest.approx(1.0)  # GiB/8 elements x 4 B x 2
    assert profiles[1].peak_gib == pytest.approx(1.5)  # 0.5 measured above the start + 1.0 DeepSpeed
    assert 0 < profiles[1].step_s < math.inf
    assert len(lines) == 2 and "model.checkpointing=all train.precision=bf16: peak 1.50 GiB" in lines[1]
    assert choose_policy(profiles, 2.0).policy == Policy("all", "bf16")


def test_plan_logs_the_choice_and_names_the_shape(fake_cuda, synth_dirs):
    lines = []
    policies = [Policy("none", "fp32"), Policy("cascades", "bf16")]
    choice = plan(TINY, [synth_dirs["train"]], 1.0, "cuda", steps=1, policies=policies, log=lines.append)
    assert choice.policy == Policy("cascades", "bf16") and choice.profile.peak_gib == pytest.approx(0.5)
    assert "largest volume 4 coils x 64x48" in lines[0]
    assert lines[-1].startswith("memory planner: chose model.checkpointing=cascades train.precision=bf16")
    assert "measured peak 0.50 GiB" in lines[-1]
    with pytest.raises(BudgetError, match=r"needs >= 0.55 GiB.*profiled 4 coils x 64x48, batch 1"):
        plan(TINY, synth_dirs["train"], 0.5, "cuda", steps=1, policies=policies, log=lines.append)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_plan_on_cuda(synth_dirs):
    choice = plan(TINY, synth_dirs["train"], 40.0, "cuda", ds_config=DS / "zero2.json", steps=1)
    assert choice.profile.peak_gib * 1.1 <= 40.0 and choice.profile.step_s > 0

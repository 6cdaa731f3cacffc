"""evaluate_candidate: a candidate trains, scores and reproduces; every kind of failure comes back as a Result."""

import json
import math
from dataclasses import asdict

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from blockqnn import evaluate
from blockqnn.candidate import Job, Result, candidate_seed
from blockqnn.codes import Block
from blockqnn.data import DataError, load_source
from blockqnn.errors import UserError
from blockqnn.evaluate import evaluate_candidate, try_recipe
from blockqnn.fit import Classifier
from tests.blocks import RESIDUAL


@pytest.fixture
def smoke(compose):
    """The search config of a seconds-long candidate: synthetic data, tiny template, one short epoch."""
    return lambda *overrides: compose("dataset=synthetic", "template=tiny", "trainer=smoke", *overrides)


def unchecked(cfg, override):
    """``cfg`` with a value the config schemas refuse, as a caller of the API could still pass it."""
    key, value = override.split("=", 1)
    OmegaConf.update(cfg, key, yaml.safe_load(value))
    return cfg


def test_candidate_trains_above_chance_and_is_scored(smoke):
    cfg = smoke()
    result = evaluate_candidate(RESIDUAL, cfg)
    assert result.status == "ok" and result.error is None
    assert result.accuracy > 0.6  # 4 classes: chance is 0.25
    assert result.epochs == 1 and result.params > 0 and result.flops > 0 and result.wall_time > 0
    block = Block.parse(RESIDUAL)
    assert result.density == block.density()
    mu, rho, unit = cfg.reward.mu, cfg.reward.rho, cfg.reward.flops_unit
    expected = result.accuracy - mu * math.log(result.flops / unit) - rho * math.log(result.density)
    assert result.reward == pytest.approx(expected)


def test_result_is_plain_data(smoke):
    row = asdict(evaluate_candidate(RESIDUAL, smoke("reward=accuracy")))
    assert json.loads(json.dumps(row)) == row
    assert row["reward"] == row["accuracy"]


def test_candidates_are_reproducible_and_leave_the_caller_rng_alone(smoke):
    cfg = smoke()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first, second = evaluate_candidate(RESIDUAL, cfg), evaluate_candidate(RESIDUAL, cfg)
    assert torch.equal(torch.get_rng_state(), before)
    assert first.status == second.status == "ok"
    assert (first.accuracy, first.reward, first.flops) == (second.accuracy, second.reward, second.flops)


def test_candidate_seed_depends_on_run_seed_and_architecture():
    assert candidate_seed(0, "abc") == candidate_seed(0, "abc")
    assert len({candidate_seed(0, "abc"), candidate_seed(1, "abc"), candidate_seed(0, "abd")}) == 3


def test_more_flops_cost_reward_at_equal_accuracy(smoke):
    """The wider template's network has more FLOPs; the paper reward charges for them."""
    small, wide = (evaluate_candidate(RESIDUAL, smoke(f"template.F={f}", "trainer.limit_train_batches=2"))
                   for f in (4, 16))
    small_cfg_mu = smoke().reward.mu
    assert wide.flops > 4 * small.flops and wide.params > small.params
    assert (wide.accuracy - wide.reward) - (small.accuracy - small.reward) == pytest.approx(
        small_cfg_mu * math.log(wide.flops / small.flops))


# ---- failures ------------------------------------------------------------------------------------------------------
def test_nan_loss_fails_the_candidate_early(smoke, monkeypatch):
    calls = []

    def nan_forward(self, x):
        calls.append(1)
        return self.net(x) * float("nan")

    monkeypatch.setattr(Classifier, "forward", nan_forward)
    result = evaluate_candidate(RESIDUAL, smoke("trainer.nan_check_every=4"))
    assert result.status == "failed" and result.accuracy is None and result.reward is None
    assert "NonFiniteLossError" in result.error and "non-finite training loss" in result.error
    assert len(calls) == 4 and result.epochs == 0  # stopped at the first check, not after the epoch
    assert result.flops > 0 and result.density == Block.parse(RESIDUAL).density()  # measured before training


@pytest.mark.parametrize("error", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    RuntimeError("CUDA error: out of memory"),
])
def test_out_of_memory_fails_the_candidate(smoke, monkeypatch, error):
    def oom(self, x):
        raise error

    monkeypatch.setattr(Classifier, "forward", oom)
    result = evaluate_candidate(RESIDUAL, smoke())
    assert result.status == "failed" and "out of memory" in result.error and result.wall_time > 0


def test_malformed_block_fails_the_candidate(smoke):
    result = evaluate_candidate("(1,9,0,0,0) (2,7,0,0,0)", smoke())
    assert result.status == "failed" and result.error.startswith("NSCError: layer 1")
    assert "unknown type 9" in result.error


def test_block_the_template_cannot_build_fails_the_candidate(smoke):
    """Eight stages of 2x2 pooling do not fit a 16x16 image: the network cannot be built for it."""
    result = evaluate_candidate(RESIDUAL, smoke("template.stages=8"))
    assert result.status == "failed" and result.params is None and result.error
    assert result.density == Block.parse(RESIDUAL).density()


def test_any_exception_fails_the_candidate(smoke, monkeypatch):
    def boom(*args, **kwargs):
        raise ValueError("boom at step 3")

    monkeypatch.setattr(evaluate, "fit", boom)
    result = evaluate_candidate(RESIDUAL, smoke())
    assert result == Result(status="failed", flops=result.flops, params=result.params, density=result.density,
                            wall_time=result.wall_time, error="ValueError: boom at step 3", curve=[])


def test_missing_dataset_is_raised_not_recorded(compose):
    cfg = compose("dataset=imagefolder", "dataset.source.root=/nonexistent/tree", "template=tiny", "trainer=smoke")
    with pytest.raises(DataError, match="/nonexistent/tree/train"):
        evaluate_candidate(RESIDUAL, cfg)
    with pytest.raises(DataError):
        try_recipe("", cfg)


def test_trying_the_recipe_loads_the_data_once_and_leaves_results_unchanged(smoke, monkeypatch):
    from blockqnn.data import modules

    cfg = smoke()
    alone = evaluate_candidate(RESIDUAL, cfg)
    loads = []
    monkeypatch.setattr(modules, "load_source", lambda source: loads.append(source) or load_source(source))
    rng = torch.random.get_rng_state()
    evaluator = evaluate.build_evaluator(cfg, trial=True)  # data, template, recipe all usable on one batch...
    assert torch.equal(torch.random.get_rng_state(), rng)  # ...the caller's random state untouched...
    assert len(loads) == 1  # ...and the data loaded once, for every later candidate
    block_hash = evaluator.space.canonical_hash(RESIDUAL)
    after = evaluator(Job(RESIDUAL, block_hash, candidate_seed(cfg.seed, block_hash)))
    assert len(loads) == 1
    assert (after.status, after.accuracy, after.reward) == (alone.status, alone.accuracy, alone.reward)


@pytest.mark.parametrize(
    ("override", "error", "message"),
    [
        ("template.stages=8", DataError, "does not fit 16x16 images"),
        ("trainer.precision=bogus", UserError, "cannot train even the smallest block: .*Precision 'bogus'"),
        ("trainer.limit_val_batches=0", UserError, "no validation accuracy"),
    ],
)
def test_trying_the_recipe_refuses_what_would_fail_every_candidate(smoke, override, error, message):
    with pytest.raises(error, match=message):
        try_recipe("", unchecked(smoke(), override))


def test_trying_the_recipe_accepts_any_validation_schedule(smoke):
    """One batch of training must not trip a recipe that validates every n steps or on a fraction of batches."""
    assert try_recipe("", smoke("+trainer.extra.val_check_interval=10", "trainer.limit_val_batches=0.5")).status == "ok"


# ---- table spaces ------------------------------------------------------------------------------------------------
def test_table_space_is_looked_up_not_trained(compose, nb201_table, monkeypatch):
    monkeypatch.setattr(evaluate, "fit", lambda *a, **k: pytest.fail("a table space must not train"))
    cfg = compose("space=nasbench201", f"space.table={nb201_table}")
    space = evaluate.build_evaluator(cfg).space
    arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|avg_pool_3x3~0|none~1|nor_conv_1x1~2|"
    result = evaluate_candidate(arch, cfg)
    assert result.status == "ok" and result.accuracy == result.reward == space.lookup(arch)
    assert 0 < result.accuracy < 1 and result.epochs == 0
    missing = evaluate_candidate("|bogus~0|", cfg)
    assert missing.status == "failed" and "not a NAS-Bench-201 architecture" in missing.error


def test_a_recipe_that_validates_nothing_fails_with_a_clear_reason(smoke):
    result = evaluate_candidate(RESIDUAL, unchecked(smoke(), "trainer.limit_val_batches=0"))
    assert result.status == "failed" and "no validation accuracy" in result.error

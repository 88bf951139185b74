"""The ``mvcom`` plugin through the real engine on a small face folder: its configs compose, the meta
step learns a centred, bounded table that is logged and written to the run directory, the table and
its optimizer are checkpointed (resume reproduces the uninterrupted run), the per-group metrics come
out, the CosFace arm learns nothing, and unsupported strategies are refused."""

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import algorithms.mvcom  # noqa: F401 - registers the plugin where its entry point is not installed
from framework.compose import compose
from framework.config import ConfigError
from framework.hooks import Hook
from framework.run import check_capabilities, train
from tests.helpers.mvcom_workers import face_folder


def toy_overrides(folder: Path, data_root: Path, run_dir: Path, steps: int = 8) -> list[str]:
    return ["experiment=mvcom_faces", f"data.src=[{folder}]", "data.domains=[toy]", "data.image_size=16",
            "data.min_shards=2", "data.batch_size=16", "data.eval_batch_size=64", "data.aux.meta.batch_size=8",
            "data.synthetic_p_train=0.2", "model.widths=[4,8]", f"trainer.max_steps={steps}", "trainer.log_every=2",
            "optim.warmup_steps=0", "algorithm.meta_warmup=0.25", "algorithm.table_every=2",
            "algorithm.embedding_dim=16", f"paths.data_root={data_root}", f"paths.run_dir={run_dir}",
            "logger.progress=off", "logger.tensorboard=false"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return face_folder(tmp_path_factory.mktemp("faces") / "toy")


class Record(Hook):
    def __init__(self):
        self.losses, self.phi = [], []

    def after_step(self, trainer, step, losses):
        self.losses.append(losses["cls"])
        self.phi.append(trainer.algorithm.table.phi.detach().clone())


@pytest.mark.parametrize("arm,meta_every", [("mvcom", 1), ("mvcom_cosface", 0)])
def test_benchmark_arms_compose_from_one_experiment_file(arm, meta_every):
    cfg = compose(["experiment=mvcom_faces", f"algorithm={arm}"])
    assert cfg.algorithm.name == "mvcom" and cfg.algorithm.meta_every == meta_every
    assert list(cfg.algorithm.factors) == ["blur", "occlusion"] and list(cfg.data.synthetic) == ["blur", "occlusion"]
    assert cfg.data.aux.meta.split == "meta"


def test_trains_logs_and_checkpoints_a_centred_bounded_table(folder, data_root, tmp_path):
    run = tmp_path / "run"
    rec = Record()
    summary = train(compose(toy_overrides(folder, data_root, run)), hooks=[rec])
    assert summary["steps"] == 8
    assert torch.equal(rec.phi[1], torch.zeros_like(rec.phi[1]))  # warm-up: steps 0, 1 leave φ alone
    assert rec.phi[-1].abs().max() > 0
    doc = json.loads((run / "margin_table.json").read_text())
    assert doc["step"] == 8 and set(doc["factors"]) == {"blur", "occlusion"}
    for levels in doc["factors"].values():
        assert abs(sum(e["phi"] * e["freq"] for e in levels.values())) < 1e-6
        assert all(abs(e["phi"]) <= 0.15 + 1e-7 for e in levels.values())
    assert "| sigma2 |" in (run / "margin_table.md").read_text()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "train/mvcom/phi/blur/sigma1" in r]
    assert len(logged) == 4 and any("train/mvcom/meta_loss" in r for r in rows)
    final = summary["final_metrics"]
    for key in ("acc", "acc_blur_2", "acc_occlusion_1", "worst_minority"):
        assert 0.0 <= final[f"test/identity/groups/{key}"] <= 1.0, key
    for key in ("gap_blur", "gap_occlusion", "mean_gap"):
        assert -1.0 <= final[f"test/identity/groups/{key}"] <= 1.0, key
    assert 0.0 <= final["test/identity/verify/auc"] <= 1.0
    state = torch.load(run / "checkpoints" / "step-00000008.pt", weights_only=True)
    assert torch.equal(state["algorithm"]["owned"]["phi"], rec.phi[-1])
    assert state["optimizers"]["margin"]["state"]  # Adam moments of φ


def test_resume_inside_the_meta_part_matches_the_uninterrupted_run(folder, data_root, tmp_path):
    full = Record()
    train(compose(toy_overrides(folder, data_root, tmp_path / "full", steps=6)), hooks=[full])

    class StopAt(Hook):
        def after_checkpoint(self, trainer, path):
            if trainer.ctx.global_step == 4:
                raise KeyboardInterrupt

    first, second = Record(), Record()
    with pytest.raises(KeyboardInterrupt):
        train(compose(toy_overrides(folder, data_root, tmp_path / "split", steps=6) + ["trainer.ckpt_every=4"]),
              hooks=[first, StopAt()])
    summary = train(compose(toy_overrides(folder, data_root, tmp_path / "split", steps=6) + ["resume=auto"]),
                    hooks=[second])
    assert summary["resumed_from"] == 4
    assert first.losses + second.losses == full.losses
    assert torch.equal(second.phi[-1], full.phi[-1]) and full.phi[-1].abs().max() > 0


def test_cosface_arm_keeps_a_zero_table(folder, data_root, tmp_path):
    rec = Record()
    train(compose(toy_overrides(folder, data_root, tmp_path / "run", steps=4) + ["algorithm=mvcom_cosface"]),
          hooks=[rec])
    assert all(torch.equal(p, torch.zeros_like(p)) for p in rec.phi)


def test_a_factor_the_data_lacks_is_refused_naming_it(folder, data_root, tmp_path):
    cfg = compose(toy_overrides(folder, data_root, tmp_path / "run", steps=2) + ["algorithm.factors=[pose]"])
    with pytest.raises(ValueError, match=r"algorithm.factors: \['pose'\].*data.synthetic"):
        train(cfg)


def test_deepspeed_is_refused_naming_both_sides():
    cfg = OmegaConf.create({"algorithm": {"name": "mvcom"}, "strategy": {"name": "deepspeed"},
                            "trainer": {"precision": "fp32", "accumulate_grad_batches": 1}})
    with pytest.raises(ConfigError, match=r"'mvcom'.*'deepspeed'"):
        check_capabilities(cfg)

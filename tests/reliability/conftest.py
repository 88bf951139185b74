"""The suite's results file starts empty for each session that runs reliability tests."""

from __future__ import annotations

import pytest

from tests.helpers.reliability import results_path


@pytest.fixture(scope="session", autouse=True)
def fresh_results_file():
    path = results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    yield path


@pytest.fixture(scope="session")
def ddp_reference(data_root, tmp_path_factory) -> dict:
    """An uninterrupted 2-process DDP run of ``reference_overrides``: its final weights and the
    sha256 of every batch each rank drew, step by step."""
    from framework.checkpoint import load_file
    from tests.helpers import reliability as R

    root = tmp_path_factory.mktemp("ddp_reference")
    codes, out = R.run_ranks(2, [*reference_overrides(), f"paths.run_dir={root / 'run'}"], data_root,
                             root / "faults", {"MEDLEY_FAULT_BATCHES": "1"})
    assert codes == [0, 0], out
    return {"model": load_file(root / "run" / "checkpoints" / "step-00000008.pt")["model"],
            "batches": [R.read_batches(root / "faults", r) for r in range(2)]}


def reference_overrides() -> list[str]:
    from tests.helpers import reliability as R

    return [*R.TINY, "strategy=ddp", "trainer.max_steps=8", "trainer.ckpt_every=2", "trainer.keep_last=0",
            f"trainer.callbacks=[\"{R.FAULTS}\"]"]

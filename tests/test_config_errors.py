"""A typo, a wrong type, a missing value or an unknown plugin fails fast, naming the full key."""

import time

import pytest

from tests.conftest import run_cli

CASES = [
    (["trainer.max_stepz=3"], "trainer.max_stepz"),
    (["trainer.max_steps=abc"], "trainer.max_steps"),
    (["algorithm=no_such_method"], "equal_weight"),  # lists the allowed choices
    (["algorithm.not_a_key=1"], "algorithm.not_a_key"),
    (["data.batch_size=many"], "data.batch_size"),
    (["trainer.precision=fp8"], "trainer.precision"),
    (["strategy=nope"], "single"),
    (["name=???"], "name"),
]


@pytest.mark.parametrize("overrides,expected", CASES, ids=[c[0][0] for c in CASES])
def test_bad_config_exits_nonzero_naming_the_key_within_5s(overrides, expected, tmp_path):
    t0 = time.time()
    out = run_cli("-m", "launchers.train", *overrides, f"paths.run_root={tmp_path}")
    elapsed = time.time() - t0
    assert out.returncode != 0
    assert expected in out.stderr + out.stdout
    assert elapsed < 5.0, f"took {elapsed:.1f}s"
    assert not (tmp_path / "default").exists()


def test_validation_happens_before_torch_is_imported():
    code = (
        "import sys\n"
        "from hydra import compose, initialize_config_dir\n"
        "from framework.config import CONFIG_DIR, register_schema, validate\n"
        "from framework.registry import load_plugins\n"
        "load_plugins(); register_schema()\n"
        "with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base='1.3'):\n"
        "    cfg = validate(compose('train', overrides=['trainer.max_steps=5']))\n"
        "print(cfg.trainer.max_steps, 'torch' in sys.modules)\n"
    )
    out = run_cli("-c", code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5", "False"]


def test_every_shipped_config_composes(compose):
    """Each group file composes; a file named after a plugin selects that plugin (other files are
    presets of a registered plugin, e.g. a baseline variant)."""
    from framework.config import CONFIG_DIR
    from framework.registry import ALGORITHMS, DATASETS, STRATEGIES

    registries = {"algorithm": ALGORITHMS, "data": DATASETS, "strategy": STRATEGIES}
    for group in ("algorithm", "data", "strategy", "experiment"):
        for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
            cfg = compose(f"{group}={path.stem}")
            if group in registries and path.stem in registries[group].names():
                assert cfg[group].name == path.stem, f"{path}: name must equal the file name"

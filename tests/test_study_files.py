"""Every committed study grid loads and every study in it has a valid search space: a grid file that a new [space]
entry, a renamed parameter or a new key broke fails here, not hours into a background run."""

from pathlib import Path

import pytest

from hpo.config import load_grid
from hpo.space.algorithms import study_effective_space

ROOT = Path(__file__).resolve().parents[1]
GRIDS = sorted((ROOT / "studies").glob("*.toml"))


@pytest.mark.parametrize("path", GRIDS, ids=[p.name for p in GRIDS])
def test_every_committed_grid_loads_with_a_valid_space_for_each_study(path):
    configs = load_grid(path)
    assert configs
    for config in configs:
        space = study_effective_space(config)
        assert space.distributions, config.name


def test_the_grids_of_this_round_ask_what_their_comments_say():
    by_name = {c.name: c for c in load_grid(ROOT / "studies" / "fashion-mnist-cnn.toml")}
    assert len(by_name) == 8 and all(c.trials == 50 and c.epochs == 10 and c.test_seeds >= 5 for c in by_name.values())
    cnn = study_effective_space(by_name["fashion-mnist-cnn-fa"]).distributions
    assert 6 in cnn["conv_channels"].values and 84 in cnn["head_width"].values  # LeNet's values
    (sd,) = load_grid(ROOT / "studies" / "fashion-mnist-sd.toml")
    depth = study_effective_space(sd).distributions["sd_depth"]
    assert (depth.low, depth.high) == (1, 2)  # three hidden layers left out (the file says why)
    (half,) = {c.pruner for c in load_grid(ROOT / "studies" / "fashion-mnist-halving-half.toml")}
    assert half == "halving-half"

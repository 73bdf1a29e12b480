"""Training stages: SCHEDULE validation, --epochs cutting a schedule, --layers selections."""
import logging
import re

import pytest

import lesions
from isic.modes.train import schedule_for
from mrcnn.engine import layer_sets
from mrcnn.config import ConfigError


@pytest.mark.parametrize("schedule, fragment", [
    ([], "non-empty list"),
    ("heads", "non-empty list"),
    ([["heads"]], "stage 1 is not [layers, end epoch, learning rate]"),
    ([["heads", 2, "fast"]], "stage 1: the learning rate must be a number > 0"),
    ([["heads", 2, 0.0]], "stage 1: the learning rate must be a number > 0"),
    ([["heads", 2.5, 0.01]], "stage 1: the end epoch must be an integer above 0"),
    ([["heads", 5, 0.01], ["all", 5, 0.001]], "stage 2: the end epoch must be an integer above 5"),
    ([["res(", 5, 0.01]], "stage 1: layers 'res(' is not a valid regular expression"),
    ([[3, 5, 0.01]], "stage 1: layers 3: expected one of heads, 3+, 4+, 5+, all"),
])
def test_malformed_schedule_names_the_stage(schedule, fragment):
    with pytest.raises(ConfigError) as err:
        lesions.make_config("segmentation", overrides=[("SCHEDULE", schedule)])
    assert str(err.value).startswith("Config.SCHEDULE=") and fragment in str(err.value)


def test_valid_schedules_pass():
    for schedule in ([["heads", 1, 0.01]], [["heads", 2, 0.01], ["4+", 3, 1e-3], [r"res5.*|mrcnn_.*", 9, 1e-4]]):
        assert lesions.make_config("segmentation", overrides=[("SCHEDULE", schedule)]).SCHEDULE == schedule


@pytest.fixture
def two_stages():
    return lesions.make_config("segmentation", overrides=[("SCHEDULE", [["heads", 10, 0.001], ["all", 30, 0.0001]])])


def test_epochs_inside_the_first_stage_keeps_that_stage(two_stages, caplog):
    """Issue 13 item 8: --epochs 5 trains the heads to epoch 5 (it used to drop them and train
    all layers at the second stage's rate), and says that the later stage is skipped."""
    with caplog.at_level(logging.INFO, logger="isic.modes.train"):
        assert schedule_for(two_stages, epochs=5) == [("heads", 5, 0.001)]
    assert "skips the later stage(s): all to epoch 30" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="isic.modes.train"):
        assert schedule_for(two_stages, epochs=10) == [("heads", 10, 0.001)]
    assert "skips the later stage(s)" in caplog.text


def test_epochs_past_the_first_stage(two_stages):
    assert schedule_for(two_stages) == [("heads", 10, 0.001), ("all", 30, 0.0001)]
    assert schedule_for(two_stages, epochs=20) == [("heads", 10, 0.001), ("all", 20, 0.0001)]
    assert schedule_for(two_stages, epochs=40) == [("heads", 10, 0.001), ("all", 40, 0.0001)]
    assert schedule_for(two_stages, epochs=5, layers="all") == [("all", 5, 0.0001)]


def test_layer_selection_compiles_or_fails_in_one_line():
    assert layer_sets.layer_regex("heads") == layer_sets.LAYER_REGEX["heads"]
    assert layer_sets.layer_regex("res5.*") == "res5.*"
    with pytest.raises(layer_sets.LayerSelectionError) as err:
        layer_sets.layer_regex("res(")
    assert "heads, 3+, 4+, 5+, all" in str(err.value) and "\n" not in str(err.value)
    # The named sets select what Matterport's do, ResNet-18 ('r18_' prefix) included.
    assert re.fullmatch(layer_sets.LAYER_REGEX["4+"], "r18_res4a_branch2a")
    assert not re.fullmatch(layer_sets.LAYER_REGEX["4+"], "res3a_branch2a")

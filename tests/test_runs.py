"""ditlab.runs.resolve_checkpoint: a --checkpoint that names nothing lists what the run holds."""
import pytest

from ditlab.runs import resolve_checkpoint


def test_an_unknown_checkpoint_lists_the_steps_and_the_posthoc_averages(tmp_path):
    for name in ("step_00000002", "step_00000004", "posthoc_sr0.070"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds step_00000002, step_00000004, posthoc_sr0.070"):
        resolve_checkpoint(tmp_path, "step_00000003")
    assert resolve_checkpoint(tmp_path, "posthoc_sr0.070") == tmp_path / "checkpoints" / "posthoc_sr0.070"

"""The pass / fail verdict of `ditlab icl eval` (issue 6's targets)."""
import numpy as np

from ditlab.tasks.icl.bayes import noiseless_error_curve
from ditlab.tasks.icl.eval import verdict


def _errors(model):
    return {"model": {"mean": list(model)}}


def test_noisy_verdict_is_the_ratio_to_bayes_on_the_same_prompts():
    bayes = np.array([1.0, 0.8, 0.5])
    ok = verdict(True, _errors(bayes * 1.04), bayes, None, d=5)
    bad = verdict(True, _errors(bayes * [1.0, 1.0, 1.06]), bayes, None, d=5)
    assert ok["pass"] and abs(ok["worst_error_ratio"] - 1.04) < 1e-12
    assert not bad["pass"] and abs(bad["worst_error_ratio"] - 1.06) < 1e-12


def test_noiseless_verdict_pairs_the_model_with_bayes_on_the_same_prompts():
    """A finite prompt set moves the Bayes error itself off (1 - k/d)+; a model that matches Bayes on
    those prompts passes although its raw deviation from the curve exceeds 0.05 (and the raw number is
    still reported), while a model 0.06 worse than Bayes fails."""
    d = 5
    curve = noiseless_error_curve(d, 8)
    bayes = curve + np.array([-0.075, 0.037, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # sampling noise of the prompts
    matched = verdict(False, _errors(bayes + 0.02), bayes, None, d)
    assert matched["pass"]
    assert abs(matched["worst_raw_deviation_from_1_minus_k_over_d"] - 0.057) < 1e-12  # at k = 1
    worse = verdict(False, _errors(bayes + np.r_[0, 0, 0, 0, 0, 0.06, 0, 0]), bayes, None, d)
    assert not worse["pass"] and abs(worse["worst_error_deviation"] - 0.06) < 1e-12

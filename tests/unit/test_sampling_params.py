"""SamplingParams normalisation: one rule for edge and cloud (greedy below 1e-5, float32, a top_p floor)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.rpc import convert as cv
from common.rpc import pb
from common.types import GREEDY_BELOW, TOP_P_FLOOR, SamplingParams, float32

temperatures = st.floats(0.0, 100.0)  # float64, as JSON gives them
top_ps = st.floats(0.0, 1.0, exclude_min=True)


@given(st.floats(), st.floats())
def test_normalising_twice_changes_nothing(temperature: float, top_p: float) -> None:
    once = SamplingParams(temperature=temperature, top_p=top_p)
    twice = SamplingParams(temperature=once.temperature, top_p=once.top_p)
    assert repr(twice) == repr(once)  # repr: NaN and -0.0 compare as themselves


@given(temperatures, top_ps)
def test_valid_values_stay_valid_and_cross_the_wire_unchanged(temperature: float, top_p: float) -> None:
    edge = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=4)
    edge.validate()
    cloud = cv.sampling_from_pb(cv.sampling_to_pb(edge))
    assert cloud == edge  # so both sides compute with the same numbers and agree on greedy
    assert abs(edge.temperature - temperature) <= max(1e-7 * temperature, GREEDY_BELOW)


@given(st.floats(0.0, 2 * GREEDY_BELOW, width=32))
def test_the_cloud_normalises_raw_wire_values_too(temperature: float) -> None:
    """An edge that does not normalise (an older one) still gets greedy below the threshold."""
    msg = pb.SamplingParams(temperature=temperature, top_p=1.0, max_new_tokens=1)
    assert cv.sampling_from_pb(msg).greedy == (temperature < GREEDY_BELOW)


@pytest.mark.parametrize(
    ("temperature", "greedy"),
    [
        (0.0, True),
        (-0.0, True),
        (5e-324, True),
        (1e-45, True),  # the reported request
        (1e-38, True),
        (9.99e-6, True),
        (1e-5, False),  # vLLM: below 1e-5 is greedy, 1e-5 itself is not
        (1.5e-5, False),
        (0.7, False),
    ],
)
def test_greedy_below_1e_minus_5(temperature: float, greedy: bool) -> None:
    params = SamplingParams(temperature=temperature)
    assert params.greedy is greedy
    assert params.temperature == (0.0 if greedy else float32(temperature))
    assert str(params.temperature) != "-0.0"


@pytest.mark.parametrize("top_p", [5e-324, 1e-300, 1e-45, 1e-9])
def test_tiny_top_p_is_raised_to_a_float32_floor(top_p: float) -> None:
    params = SamplingParams(top_p=top_p)
    assert params.top_p == TOP_P_FLOOR > 0.0
    params.validate()
    assert cv.sampling_from_pb(cv.sampling_to_pb(params)).top_p == TOP_P_FLOOR  # not 0 = "disabled"


@pytest.mark.parametrize(
    ("temperature", "top_p"),
    [
        (float("nan"), 1.0),
        (float("inf"), 1.0),
        (-1e-45, 1.0),
        (100.00001, 1.0),
        (1e300, 1.0),
        (1.0, 0.0),
        (1.0, -0.0),
        (1.0, float("nan")),
        (1.0, 1.0000001),
    ],
)
def test_out_of_range_values_are_still_rejected(temperature: float, top_p: float) -> None:
    with pytest.raises(ValueError):
        SamplingParams(temperature=temperature, top_p=top_p).validate()

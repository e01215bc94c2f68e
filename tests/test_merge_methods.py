"""Each merge method against results computed by hand on small tensors."""

import pytest
import torch

from modpool import ModpoolError
from modpool.edit.merge import get_method


def T(*values):
    return {"w": torch.tensor(values, dtype=torch.float32)}


def test_ties_hand_computed():
    # density 1: nothing trimmed. Coordinates:
    # 0: +3, +1, -1 -> elected +, mean of agreeing (3, 1) = 2
    # 1: +2, -2, 0  -> sum 0: tie in sign, elected 0 -> 0
    # 2: 0, 0, 0    -> no module touches it -> 0
    # 3: -1, -3, +1 -> elected -, mean(-1, -3) = -2
    # 4: +5, 0, 0   -> +, only one value -> 5
    a, b, c = T(3, 2, 0, -1, 5), T(1, -2, 0, -3, 0), T(-1, 0, 0, 1, 0)
    out = get_method("ties", density=1.0).merge([a, b, c], [1, 1, 1])["w"]
    assert torch.equal(out, torch.tensor([2.0, 0.0, 0.0, -2.0, 5.0]))


def test_ties_trims_per_tensor_then_elects():
    # density 0.5 keeps the 2 largest of 4 entries of each tau
    a = T(4, -3, 1, 0.5)  # keeps 4, -3
    b = T(-1, 2, 6, 0.1)  # keeps 2, 6
    out = get_method("ties", density=0.5).merge([a, b], [1, 1])["w"]
    # coord 0: 4 (b's -1 trimmed); coord 1: -3 vs 2 -> sum -1 -> elected -, value -3
    # coord 2: 6; coord 3: all trimmed -> 0
    assert torch.equal(out, torch.tensor([4.0, -3.0, 6.0, 0.0]))


def test_ties_variants():
    a, b, c = T(1, 1), T(1, -1), T(-5, -1)
    # sign by mass: coord 0 sum -3 -> '-': -5. by count: two '+' -> mean(1, 1) = 1
    assert torch.equal(
        get_method("ties", density=1.0).merge([a, b, c], [1] * 3)["w"][0], torch.tensor(-5.0)
    )
    count = get_method("ties", density=1.0, sign="count").merge([a, b, c], [1] * 3)["w"]
    assert count[0] == 1.0
    # agg=sum: disjoint sum instead of mean (coord 1: '-' elected, -1 + -1 = -2)
    summed = get_method("ties", density=1.0, agg="sum").merge([a, b, c], [1] * 3)["w"]
    assert summed[1] == -2.0
    # global trimming looks at all tensors of a tau together
    x = {"p": torch.tensor([10.0, 9.0]), "q": torch.tensor([1.0, 2.0])}
    tensor_trim = get_method("ties", density=0.5).merge([x], [1])
    global_trim = get_method("ties", density=0.5, trim="global").merge([x], [1])
    assert torch.equal(tensor_trim["q"], torch.tensor([0.0, 2.0]))
    assert torch.equal(global_trim["q"], torch.tensor([0.0, 0.0]))
    assert torch.equal(global_trim["p"], torch.tensor([10.0, 9.0]))


def test_ties_density_one_same_signs_is_plain_mean_scaled():
    g = torch.Generator().manual_seed(0)
    deltas = [{"w": torch.rand(50, generator=g) + 0.1} for _ in range(3)]
    out = get_method("ties", density=1.0).merge(deltas, [0.4] * 3)["w"]
    torch.testing.assert_close(out, 0.4 * sum(d["w"] for d in deltas) / 3)


def test_magnitude_trims_then_sums():
    a, b = T(4, -3, 1, 0.5), T(-1, 2, 6, 0.1)
    out = get_method("magnitude", density=0.5).merge([a, b], [1.0, 0.5])["w"]
    assert torch.equal(out, torch.tensor([4.0, -3.0 + 1.0, 3.0, 0.0]))


def test_dare_drops_rescales_and_is_seeded():
    g = torch.Generator().manual_seed(1)
    deltas = [{"w": torch.randn(10_000, generator=g)} for _ in range(2)]
    one = get_method("dare", seed=3, drop=0.75).merge(deltas, [1, 1])["w"]
    again = get_method("dare", seed=3, drop=0.75).merge(deltas, [1, 1])["w"]
    other = get_method("dare", seed=4, drop=0.75).merge(deltas, [1, 1])["w"]
    assert torch.equal(one, again) and not torch.equal(one, other)
    single = get_method("dare", seed=3, drop=0.75).merge(deltas[:1], [1])["w"]
    kept = single != 0
    assert 0.72 < 1 - kept.float().mean() < 0.78  # about p of the entries dropped
    torch.testing.assert_close(single[kept], deltas[0]["w"][kept] * 4)  # survivors / (1 - p)
    # drop 0 is plain sum; dare can feed ties
    plain = get_method("dare", drop=0.0).merge(deltas, [0.5, 0.5])["w"]
    torch.testing.assert_close(plain, 0.5 * deltas[0]["w"] + 0.5 * deltas[1]["w"])
    via_ties = get_method("dare", drop=0.0, merge="ties", density=1.0).merge(deltas, [1, 1])["w"]
    assert torch.equal(via_ties, get_method("ties", density=1.0).merge(deltas, [1, 1])["w"])


@pytest.mark.parametrize(
    "method,params,message",
    [
        ("ties", {"density": 0.0}, "density"),
        ("ties", {"sign": "vote"}, "sign must be one of"),
        ("dare", {"drop": 1.0}, "drop"),
        ("sum", {"density": 0.5}, "takes no parameter density"),
    ],
)
def test_bad_parameters(method, params, message):
    with pytest.raises(ModpoolError, match=message):
        get_method(method, **params)

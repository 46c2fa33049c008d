"""networks/low_rank.py against kohya's own rank rules and the linear algebra it must satisfy.

KOHYA_RANKS holds what sd-scripts' networks/resize_lora.py (commit 48d368fa, 2026-02-16) returns: its
MIN_SV, index_sv_ratio/index_sv_fro/index_sv_cumulative and rank_resize, run unchanged on the singular
values below (float32) with scale 1, printing new_rank, fro_retained, sum_retained and max_ratio rounded
to 6 places. Cases where kohya's rank_resize fails (a fixed rank above the number of singular values) are
left out; there we keep every singular value.
"""

import math

import pytest
import torch

from loracraft.networks.low_rank import DYNAMIC_METHODS, choose_rank, factorize, factorize_product, quantile

SINGULAR_VALUES = {
    "S1": [10.0, 6.0, 3.0, 2.0, 1.0, 0.5, 0.25, 0.1],
    "S2": (5 * 0.8 ** torch.arange(12, dtype=torch.float32)).tolist(),
    "S3": [4.0, 4.0, 0.0, 0.0],
}
# (values, max_rank, method, param) -> (rank, fro_retained, sum_retained, max_ratio), from kohya's code.
KOHYA_RANKS = [
    ("S1", 3, "sv_ratio", 1.5, 2, 0.951169, 0.700219, 1.666667),
    ("S1", 3, "sv_ratio", 10.0, 3, 0.982137, 0.83151, 3.333333),
    ("S1", 8, "sv_ratio", 2.0, 3, 0.982137, 0.83151, 3.333333),
    ("S1", 8, "sv_ratio", 4.0, 4, 0.995591, 0.919037, 5.0),
    ("S1", 8, "sv_ratio", 10.0, 5, 0.998927, 0.962801, 10.0),
    ("S1", 16, "sv_ratio", 1000.0, 8, 1.0, 1.0, 100.0),
    ("S1", 8, "sv_fro", 0.5, 2, 0.951169, 0.700219, 1.666667),
    ("S1", 8, "sv_fro", 0.9, 3, 0.982137, 0.83151, 3.333333),
    ("S1", 8, "sv_fro", 0.99, 5, 0.998927, 0.962801, 10.0),
    ("S1", 16, "sv_fro", 1.0, 8, 1.0, 1.0, 100.0),
    ("S1", 3, "sv_cumulative", 0.9, 3, 0.982137, 0.83151, 3.333333),
    ("S1", 8, "sv_cumulative", 0.3, 2, 0.951169, 0.700219, 1.666667),
    ("S1", 8, "sv_cumulative", 0.5, 3, 0.982137, 0.83151, 3.333333),
    ("S1", 8, "sv_cumulative", 0.9, 5, 0.998927, 0.962801, 10.0),
    ("S1", 8, "sv_cumulative", 0.99, 8, 1.0, 1.0, 100.0),
    ("S1", 3, None, None, 3, 0.982137, 0.83151, 3.333333),
    ("S2", 8, "sv_ratio", 1.5, 3, 0.861021, 0.52401, 1.5625),
    ("S2", 8, "sv_ratio", 2.0, 5, 0.947028, 0.721931, 2.441406),
    ("S2", 16, "sv_ratio", 4.0, 8, 0.988162, 0.893638, 4.768371),
    ("S2", 16, "sv_ratio", 10.0, 12, 1.0, 1.0, 11.64153),
    ("S2", 3, "sv_fro", 0.5, 2, 0.770196, 0.386564, 1.25),
    ("S2", 16, "sv_fro", 0.9, 5, 0.947028, 0.721931, 2.441406),
    ("S2", 16, "sv_fro", 0.99, 10, 0.996574, 0.958493, 7.45058),
    ("S2", 8, "sv_fro", 1.0, 8, 0.988162, 0.893638, 4.768371),
    ("S2", 8, "sv_cumulative", 0.5, 4, 0.914427, 0.633966, 1.953125),
    ("S2", 16, "sv_cumulative", 0.9, 10, 0.996574, 0.958493, 7.45058),
    ("S2", 16, "sv_cumulative", 0.99, 12, 1.0, 1.0, 11.64153),
    ("S2", 8, None, None, 8, 0.988162, 0.893638, 4.768371),
    ("S3", 8, "sv_ratio", 1.5, 3, 1.0, 1.0, math.inf),
    ("S3", 8, "sv_fro", 0.5, 2, 1.0, 1.0, 1.0),
    ("S3", 8, "sv_cumulative", 0.5, 2, 1.0, 1.0, 1.0),
    ("S3", 8, "sv_cumulative", 0.9, 3, 1.0, 1.0, math.inf),
    ("S3", 3, None, None, 3, 1.0, 1.0, math.inf),
]


def _matrix_with(singular_values: list[float], out: int, inner: int, seed: int = 0) -> torch.Tensor:
    """An (out, inner) matrix whose singular values are exactly `singular_values` (random orthonormal
    bases on either side)."""
    generator = torch.Generator().manual_seed(seed)
    k = len(singular_values)
    u, _ = torch.linalg.qr(torch.randn(out, k, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(inner, k, generator=generator, dtype=torch.float64))
    return (u * torch.tensor(singular_values, dtype=torch.float64)) @ v.T


@pytest.mark.parametrize(
    ("values", "max_rank", "method", "param", "rank", "fro", "total", "ratio"), KOHYA_RANKS
)
def test_rank_and_figures_are_kohyas(values, max_rank, method, param, rank, fro, total, ratio):
    values = SINGULAR_VALUES[values]
    assert (
        choose_rank(torch.tensor(values), max_rank, method, param) == rank
    )  # a delta with exactly these singular values, no more
    factored = factorize(_matrix_with(values, len(values), 24).float(), max_rank, method, param)
    assert factored.rank == rank
    assert factored.fro_retained == pytest.approx(fro, abs=2e-6)
    assert factored.sum_retained == pytest.approx(total, abs=2e-6)
    if math.isinf(ratio):  # the kept zero singular values come out of the SVD as tiny, not 0
        assert factored.max_ratio > 1e5
    else:
        assert factored.max_ratio == pytest.approx(ratio, rel=1e-4)


def test_a_zero_delta_gets_rank_one_whatever_the_method():
    for method, param in ((None, None), *((m, 0.9) for m in DYNAMIC_METHODS)):
        factored = factorize(torch.zeros(6, 5), 4, method, param)
        assert factored.rank == 1
        assert (factored.up @ factored.down).abs().max() == 0
        assert (factored.fro_retained, factored.sum_retained) == (1.0, 1.0)


def test_the_rank_never_exceeds_the_delta_own_size():
    # kohya's rank_resize asks for 16 here; a (3, 5) delta has 3 singular values.
    delta = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    assert factorize(delta, 16).rank == 3
    assert factorize(delta, 16, "sv_fro", 1.0).rank == 3
    conv = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    assert factorize(conv, 8).rank == 2


def test_a_dynamic_method_needs_its_parameter():
    with pytest.raises(ValueError, match="sv_fro needs a parameter"):
        choose_rank(torch.tensor([2.0, 1.0]), 4, "sv_fro", None)
    with pytest.raises(ValueError, match="unknown dynamic method"):
        choose_rank(torch.tensor([2.0, 1.0]), 4, "sv_max", 0.5)


@pytest.mark.parametrize("shape", [(24, 40), (16, 8, 3, 3), (12, 6, 1, 1)])
def test_factors_reproduce_a_delta_of_lower_rank_exactly(shape):
    generator = torch.Generator().manual_seed(3)
    true_rank = 3
    up = torch.randn(shape[0], true_rank, generator=generator)
    down = torch.randn(true_rank, math.prod(shape[1:]), generator=generator)
    delta = (up @ down).reshape(shape)
    factored = factorize(delta, true_rank)
    assert factored.up.shape == (shape[0], true_rank, *([1] * (len(shape) - 2)))
    assert factored.down.shape == (true_rank, *shape[1:])
    rebuilt = (factored.up.flatten(1) @ factored.down.flatten(1)).reshape(shape)
    torch.testing.assert_close(rebuilt, delta, atol=1e-4, rtol=1e-4)
    assert factored.fro_retained == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("shape", [(30, 20), (16, 4, 3, 3)])
@pytest.mark.parametrize("rank", [1, 4, 9])
def test_truncation_error_is_the_reported_energy_and_keeps_the_top_singular_values(shape, rank):
    delta = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    factored = factorize(delta, rank)
    matrix = delta.reshape(shape[0], -1).double()
    kept = factored.up.flatten(1).double() @ factored.down.flatten(1).double()
    error = float((matrix - kept).pow(2).sum())
    assert error == pytest.approx((1 - factored.fro_retained**2) * float(matrix.pow(2).sum()), rel=1e-4)
    full = torch.linalg.svdvals(matrix)
    torch.testing.assert_close(torch.linalg.svdvals(kept)[:rank], full[:rank], atol=1e-4, rtol=1e-4)
    # Eckart-Young: no rank-k matrix is closer, so the error is the discarded singular values' energy.
    assert error == pytest.approx(float(full[rank:].pow(2).sum()), rel=1e-4)


def test_clamp_is_kohyas_signed_quantile_of_both_factors():
    delta = _matrix_with([9.0, 5.0, 2.0, 1.0, 0.5], 32, 48, seed=5).float()
    factored = factorize(delta, 4, clamp_quantile=0.9)
    # kohya's lines: U_k S_k and Vh_k, clipped at torch.quantile of their entries, signed.
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    up, down = u[:, :4] * s[:4], vh[:4]
    high = torch.quantile(torch.cat([up.flatten(), down.flatten()]), 0.9)
    torch.testing.assert_close(factored.up, up.clamp(-high, high))
    torch.testing.assert_close(factored.down, down.clamp(-high, high))
    assert (factored.up.abs() < up.abs()).any()
    # The figure reported is what the clamped factors reproduce, below the truncation's.
    error = float((delta.double() - factored.up.double() @ factored.down.double()).pow(2).sum())
    assert error == pytest.approx(
        (1 - factored.fro_retained**2) * float(delta.double().pow(2).sum()), rel=1e-6
    )
    assert factored.fro_retained < factorize(delta, 4).fro_retained


@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.99, 1.0])
def test_quantile_is_torch_quantile(q):
    values = torch.randn(1001, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(quantile(values, q), torch.quantile(values, q))


@pytest.mark.parametrize(
    ("up_shape", "down_shape"),
    [((40, 8), (8, 30)), ((16, 8, 1, 1), (8, 4, 3, 3)), ((5, 8), (8, 6)), ((12, 6, 1, 1), (6, 9, 1, 1))],
)
@pytest.mark.parametrize(
    ("max_rank", "method", "param"), [(3, None, None), (16, None, None), (16, "sv_fro", 0.9)]
)
def test_factorize_product_is_factorize_of_the_product(up_shape, down_shape, max_rank, method, param):
    generator = torch.Generator().manual_seed(7)
    up, down = torch.randn(up_shape, generator=generator), torch.randn(down_shape, generator=generator)
    product = (up.flatten(1) @ down.flatten(1)).reshape(up_shape[0], *down_shape[1:])
    via_qr = factorize_product(up, down, max_rank, method, param)
    direct = factorize(product, max_rank, method, param)
    # the product has at most r = 8 (or 6) non-zero singular values: the full SVD's others are noise
    assert via_qr.rank == min(direct.rank, down_shape[0])
    assert via_qr.up.shape == (up_shape[0], via_qr.rank, *up_shape[2:])
    assert via_qr.down.shape == (via_qr.rank, *down_shape[1:])
    kept = via_qr.up.flatten(1).double() @ via_qr.down.flatten(1).double()
    full = torch.linalg.svdvals(product.flatten(1).double())
    torch.testing.assert_close(
        torch.linalg.svdvals(kept)[: via_qr.rank], full[: via_qr.rank], rtol=1e-4, atol=1e-4
    )
    error = float((product.flatten(1).double() - kept).pow(2).sum())
    assert error == pytest.approx(float(full[via_qr.rank :].pow(2).sum()), rel=1e-3, abs=1e-6)
    assert via_qr.fro_retained == pytest.approx(direct.fro_retained, abs=1e-5)

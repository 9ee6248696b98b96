"""The host score's properties (router.scoring) and the task table (router.tasks): pure, no processes."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.scoring import SPECIALTY_BOOST, HostFacts, score
from router.tasks import DEFAULT_MODELS, GENERAL, BadTask, TaskTable

facts = st.builds(
    HostFacts,
    alive=st.just(True),
    health=st.floats(0.01, 1.0),
    receipts_settled=st.integers(0, 10**9),
    slash_count=st.integers(0, 20),
    registered_days=st.floats(0, 3650),
    stake=st.integers(10**18, 10**27),
    min_stake=st.just(10**18),
    price_per_1k=st.integers(0, 10**20),
    cheapest_price_per_1k=st.integers(0, 10**15),
    latency_s=st.none() | st.floats(0, 120),
    load=st.integers(0, 1000),
    specialty=st.booleans(),
)


@given(facts)
def test_score_slashedNodeRanksBelowAnEqualCleanOne(f: HostFacts) -> None:
    slashed = dataclasses.replace(f, slash_count=f.slash_count + 1)
    assert 0 < score(slashed) < score(f)


@given(facts, st.floats(0.001, 1000))
def test_score_higherPriceRanksLower(f: HostFacts, more: float) -> None:
    pricier = dataclasses.replace(f, price_per_1k=int(f.price_per_1k * (1 + more)) + 1)
    assert score(pricier) < score(f)


@given(facts, st.floats(0, 1))
def test_score_deadNodeIsZeroWhateverElseItHas(f: HostFacts, health: float) -> None:
    assert score(dataclasses.replace(f, alive=False, health=health)) == 0
    assert score(dataclasses.replace(f, health=0.0)) == 0


@given(facts)
def test_score_specialtyMatchBoostsByExactlyTheSeedsFactor(f: HostFacts) -> None:
    plain, special = (score(dataclasses.replace(f, specialty=s)) for s in (False, True))
    assert special == pytest.approx(plain * SPECIALTY_BOOST)


@given(facts, st.integers(1, 100))
def test_score_moreLoadOrSlowerOrLessHealthyRanksLower(f: HostFacts, more: int) -> None:
    assert score(dataclasses.replace(f, load=f.load + more)) < score(f)
    slower = (f.latency_s or 1.0) + more
    assert score(dataclasses.replace(f, latency_s=slower)) < score(f)
    assert score(dataclasses.replace(f, health=f.health / 2)) < score(f)


@given(facts)
def test_score_settledWorkAndStakeAndAgeNeverLower(f: HostFacts) -> None:
    assert score(dataclasses.replace(f, receipts_settled=f.receipts_settled * 10 + 9)) > score(f)
    assert score(dataclasses.replace(f, stake=f.stake * 2)) >= score(f)
    assert score(dataclasses.replace(f, registered_days=f.registered_days + 1)) >= score(f)


def test_score_stakeCannotBuyMoreThanItsCap() -> None:
    base = HostFacts(True, 1.0, 100, 0, 30, 10**18, 10**18, 10**15, 10**15, 0.1, 0, False)
    whale = dataclasses.replace(base, stake=10**30)
    assert score(whale) == pytest.approx(2 * score(base))
    slashed_whale = dataclasses.replace(whale, slash_count=1)
    assert score(slashed_whale) < score(base)  # one slash outweighs any stake


def test_taskTable_routesTheSeedsTasksAndGeneralPrefersNothing() -> None:
    table = TaskTable()
    assert table.preferred("fix") == DEFAULT_MODELS["fix"] == "codellama-7b"
    assert table.preferred(table.check(None)) is None and table.check("") == GENERAL
    assert table.check(" Refactor ") == "refactor"
    assert {"debug", "analyze", "fix", "clean", "fix_helper", "refactor", GENERAL} <= set(table.tasks())
    assert table.check("Python") == "python" and table.preferred("python") is None  # general work
    assert table.matches("python", ["python"])  # that still prefers specialists tagged like it
    with pytest.raises(BadTask, match="printable name"):
        table.check("x" * 65)


def test_taskTable_matchesSpecialtiesAndTakesOverrides() -> None:
    table = TaskTable()
    assert table.matches("debug", ["python", "Debugging"]) and not table.matches("debug", ["python"])
    assert table.matches("refactor", ["refactor"]) and not table.matches(GENERAL, ["general"])
    custom = table.with_overrides({"Fix": "gemma"})
    assert custom.preferred("fix") == "gemma" and custom.preferred("debug") == table.preferred("debug")

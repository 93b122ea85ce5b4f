"""The library's environment variables: each accepts only its documented values (ENVs.md), never a silent default
for a typo."""

from __future__ import annotations

import pytest

from sfmamba.utils._config import SCAN_BC_SUM_ENV, kernel_backend, scan_bc_sum, value_checks_enabled


@pytest.mark.parametrize("value, enabled", [("0", False), ("1", True), ("", True)])
def test_value_checks_switch(monkeypatch, value, enabled):
    monkeypatch.setenv("SFMAMBA_VALUE_CHECKS", value)
    assert value_checks_enabled() is enabled


@pytest.mark.parametrize("value", ["false", "off", "no"])
def test_value_checks_refuse_other_values(monkeypatch, value):
    monkeypatch.setenv("SFMAMBA_VALUE_CHECKS", value)
    with pytest.raises(ValueError, match=rf"SFMAMBA_VALUE_CHECKS must be one of \('0', '1'\), got '{value}'"):
        value_checks_enabled()


def test_kernel_backend_refuses_a_typo(monkeypatch):
    monkeypatch.setenv("SFMAMBA_KERNEL", "trition")
    with pytest.raises(ValueError, match="SFMAMBA_KERNEL must be one of"):
        kernel_backend()


@pytest.mark.parametrize(
    "value, choice", [(None, "auto"), ("auto", "auto"), ("partials", "partials"), ("atomic", "atomic")]
)
def test_scan_bc_sum_choice(monkeypatch, value, choice):
    if value is None:
        monkeypatch.delenv(SCAN_BC_SUM_ENV, raising=False)
    else:
        monkeypatch.setenv(SCAN_BC_SUM_ENV, value)
    assert scan_bc_sum() == choice


def test_scan_bc_sum_refuses_a_typo(monkeypatch):
    monkeypatch.setenv(SCAN_BC_SUM_ENV, "atomics")
    choices = r"\('auto', 'partials', 'atomic'\)"
    with pytest.raises(ValueError, match=rf"SFMAMBA_SCAN_BC_SUM must be one of {choices}, got 'atomics'"):
        scan_bc_sum()

"""Test-only stand-in for mamba_ssm (see ../README.md)."""

"""Helpers of the generated hostile suite (tests/test_hostile.py): the base pipeline, mutations, the cases and the
contract every run of an entry script must keep."""

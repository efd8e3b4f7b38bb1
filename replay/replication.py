"""Moved to replay.replica.link (the journal's replica link); this name stays for old imports.

Patch `replay.replica.link`, not this module: the journal calls that one."""

from .replica.link import (CLAIM_TIMEOUT, CLOSE_RESERVE, CLOSE_RESERVE_FRACTION, CLOSE_TIMEOUT,  # noqa: F401
                           await_claim, final_round_timeout, open_replica, rank_url, restore_if_empty,
                           start_shipping)

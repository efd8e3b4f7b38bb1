"""Suite-wide: one torch thread per process (below), and the order pytest-xdist hands tests out in.

The suite runs in parallel (`pytest -n 4`, README "On a fresh machine"). xdist's `load`
scheduler hands tests to the workers in collection order, and each worker runs its share
in that order; so a minute-long test collected last ends the run a minute after
everything else. Here each worker (the order must be the same on every worker) moves the
long tests to the front, longest first, and leaves the rest in their usual order: the
long tests overlap each other and the short ones fill the gaps after them
(longest-processing-time-first scheduling).

By default `load` would hand each worker a first block of ~90 consecutive tests (all the
long ones to the first worker); `pytest_configure` below makes it deal them out one at a
time instead (`--maxschedchunk 1`, unless given), so each worker keeps about two tests
queued and the long ones spread over every worker.

The seconds are one measured run on a loaded 2-core machine under `-n 4` (only the
order matters; a test missing here just keeps its place). Without xdist nothing is
reordered.
"""

from __future__ import annotations

import os

# One torch intra-op thread per process, inherited by every child a test starts (recipes,
# demos, supervised jobs, ranks). The suite runs 4 workers on 2 cores; torch's default of
# one OpenMP thread per core makes every process spin-wait for cores the others hold: the
# quickstart recipe took 10.6 CPU-seconds with 2 threads against 3.7 with 1 at load 4.
# A test about threads sets them itself (torch.set_num_threads wins over this).
os.environ.setdefault("OMP_NUM_THREADS", "1")

# "path::function" (every parametrization) or "path::function[param]": seconds.
LONG_TESTS = {
    "tests/test_demo_ranks.py::test_demo_ranks_survives_kills_bit_identically": 81,
    "tests/test_demo.py::test_demo_survives_kills_bit_identically[train-extra0]": 67,
    "tests/replay/test_sigkill.py::test_sigkilled_training_resumes_bit_identical": 64,
    "tests/distributed/test_kills.py::test_survivors_of_a_dead_peer_end_with_an_exception_and_the_restart_is_bit_identical": 60,
    "tests/test_readme.py::test_torchrun_recipe_runs_with_its_command": 54,
    "tests/crash/test_preemption.py::test_sigterm_or_sigusr1_at_random_moments_exits_as_documented_and_the_next_open_replays_nothing": 54,
    "tests/crash/test_short_file.py::test_random_bit_flips_are_reported_never_raw_or_a_signal": 53,
    "tests/replay/test_testing_kit.py::test_kit_catches_a_handler_that_reads_global_rng": 53,
    "tests/crash/test_races.py::test_rollback_beside_snapshot_follow_up_never_hangs_or_fails_a_snapshot": 49,
    "tests/distributed/test_ddp_baseline.py::test_a_rebuilt_ddp_is_bit_exact_only_with_fixed_buckets": 47,
    "tests/crash/test_syncpoints.py::test_journal_killed_at_every_sync_point": 46,
    "tests/test_readme.py::test_recipe_runs": 44,
    "tests/distributed/test_kills.py::test_random_sigkills_of_random_ranks_end_bit_identical": 35,
    "tests/distributed/test_failpoints.py::test_a_kill_at_each_protocol_step_recovers_to_a_consistent_cut": 35,
    "tests/crash/test_truncate_record.py::test_killed_truncate_keeps_both_or_neither": 33,
    "tests/distributed/test_fsdp.py::test_fsdp2_sharded_state_survives_random_sigkills_bit_identical": 27,
    "tests/crash/test_damage.py::test_io_errors_poison_the_journal_and_lose_nothing_acknowledged": 27,
    "tests/distributed/test_damage_and_size.py::test_another_world_size_is_refused_on_every_rank_naming_both_and_changes_nothing": 27,
    "tests/replay/test_testing_kit.py::test_project_ops_recover_bit_exactly": 26,
    "tests/distributed/test_damage_and_size.py::test_one_ranks_damaged_newest_snapshot_moves_every_rank_to_the_older_common_one": 26,
    "tests/test_demo.py::test_demo_survives_kills_bit_identically": 25,
    "tests/replay/test_stateful.py::test_journal_recovers_the_reference_fold": 24,
    "tests/snapshots/test_crash.py::test_sigkill_at_every_io_call_of_a_save_and_prune": 24,
    "tests/crash/test_sigkill.py::test_journal_sigkilled_at_random_moments": 23,
    "tests/crash/test_archive.py::test_writer_killed_at_every_sync_point_of_compaction_loses_nothing": 23,
    "tests/crash/test_dataloader.py::test_sigkilled_dataloader_training_resumes_bit_identical": 22,
    "tests/distributed/test_failpoints.py::test_ddp_default_buckets_with_3_ranks_are_caught_by_the_digest_on_replay": 21,
    "tests/crash/test_replica_node_loss.py::test_node_loss_restores_every_replicated_entry": 20,
    "tests/cli/test_live.py::test_tail_follow_prints_every_entry_a_live_writer_appends": 20,
    "tests/crash/test_damage.py::test_damaged_newest_snapshot_falls_back_to_the_previous_and_replays": 18,
    "tests/crash/test_syncpoints.py::test_bare_log_killed_at_every_sync_point": 18,
    "tests/distributed/test_damage_and_size.py::test_a_rank_killed_in_the_first_open_before_its_log_exists_does_not_block_the_restart": 18,
    "tests/snapshots/test_crash.py::test_sigkill_at_random_moments_never_leaves_a_bad_manifest": 17,
    "tests/cli/test_errors.py::test_archived_history_reads_as_the_log": 16,
    "tests/distributed/test_ddp_baseline.py::test_uninterrupted_ddp_runs_are_bit_identical": 16,
    "tests/crash/test_short_file.py::test_cut_short_data_file_is_damage_never_a_signal": 14,
    "tests/cli/test_state.py::test_diff_lists_exactly_the_changed_tensors_with_the_size_of_the_change": 14,
    "tests/crash/test_store_races.py::test_reader_never_sees_no_snapshot_while_a_writer_saves_and_prunes": 13,
    "tests/crash/test_audit.py::test_verify_beside_a_writer_that_snapshots_prunes_and_compacts_reports_no_damage": 13,
    "tests/crash/test_power_loss.py::test_crash_images_keep_every_durable_entry": 13,
    "tests/cli/test_verify.py::test_log_and_show_report_a_damaged_entry_in_place": 11,
    "tests/crash/test_sigkill.py::test_bare_log_sigkilled_at_random_moments": 9,
    "tests/cli/test_verify.py::test_verify_names_the_damaged_entry_and_chunk_and_exits_1": 9,
    "tests/cli/test_listing.py::test_snapshots_lists_sizes_and_ratios": 9,
    "tests/eventlog/test_stateful.py::TestLogMachine": 8,
    "tests/cli/test_multirank_group.py::test_real_two_rank_journal_verifies_and_shows_its_common_snapshot": 8,
}


def _seconds(nodeid: str) -> float:
    if nodeid in LONG_TESTS:
        return LONG_TESTS[nodeid]
    parts = nodeid.split("[", 1)[0].split("::")
    return LONG_TESTS.get("::".join(parts[:2]), 0)


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    items.sort(key=lambda item: -_seconds(item.nodeid))  # stable: the rest keep their order


def pytest_configure(config):
    if getattr(config.option, "maxschedchunk", "absent") is None:  # xdist installed, option not given
        config.option.maxschedchunk = 1

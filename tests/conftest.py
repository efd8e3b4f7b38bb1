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

The seconds are one measured run (2026-12-07, load 4-8) on a 2-core machine under `-n 4` (only the
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
    "tests/replay/test_sigkill.py::test_sigkilled_training_resumes_bit_identical": 137,
    "tests/crash/test_preemption.py::test_sigterm_or_sigusr1_at_random_moments_exits_as_documented_and_the_next_open_replays_nothing": 111,
    "tests/test_demo.py::test_demo_survives_kills_bit_identically[train-extra0]": 105,
    "tests/crash/test_races.py::test_rollback_beside_snapshot_follow_up_never_hangs_or_fails_a_snapshot": 59,
    "tests/test_demo_ranks.py::test_demo_ranks_survives_kills_bit_identically": 59,
    "tests/crash/test_short_file.py::test_random_bit_flips_are_reported_never_raw_or_a_signal": 54,
    "tests/test_readme.py::test_torchrun_recipe_runs_with_its_command": 48,
    "tests/test_readme.py::test_recipe_runs[fork]": 45,
    "tests/supervisor/test_run_ranks.py::test_a_hung_rank_is_dumped_and_the_group_restarted": 44,
    "tests/crash/test_dataloader.py::test_sigkilled_dataloader_training_resumes_bit_identical": 43,
    "tests/distributed/test_kills.py::test_survivors_of_a_dead_peer_end_with_an_exception_and_the_restart_is_bit_identical": 37,
    "tests/supervisor/test_run_ranks.py::test_a_killed_rank_restarts_the_group_and_it_ends_bit_identical": 36,
    "tests/test_demo.py::test_demo_survives_kills_bit_identically[inference-extra1]": 36,
    "tests/test_demo.py::test_with_sync_durability_every_printed_step_is_durable": 34,
    "tests/test_readme.py::test_recipe_runs[dataloader]": 30,
    "tests/replay/test_testing_kit.py::test_project_ops_recover_bit_exactly::runTest": 30,
    "tests/crash/test_archive.py::test_writer_killed_at_every_sync_point_of_compaction_loses_nothing[pwrite64-2]": 29,
    "tests/crash/test_power_loss.py::test_crash_images_keep_every_durable_entry[os]": 29,
    "tests/crash/test_damage.py::test_io_errors_poison_the_journal_and_lose_nothing_acknowledged": 28,
    "tests/crash/test_one_sync_commit.py::test_acknowledging_a_commit_at_its_return_loses_entries": 28,
    "tests/test_readme.py::test_recipe_runs[quickstart]": 28,
    "tests/test_readme.py::test_recipe_runs[fine-tune]": 28,
    "tests/distributed/test_ddp_baseline.py::test_a_rebuilt_ddp_is_bit_exact_only_with_fixed_buckets[3]": 26,
    "tests/test_readme.py::test_recipe_runs[recorded-loss]": 25,
    "tests/test_readme.py::test_recipe_runs[accumulate]": 23,
    "tests/distributed/test_ddp_baseline.py::test_a_rebuilt_ddp_is_bit_exact_only_with_fixed_buckets[2]": 22,
    "tests/supervisor/test_run.py::test_sigterm_to_the_supervisor_stops_the_job_cleanly_and_is_never_restarted": 22,
    "tests/crash/test_replica_node_loss.py::test_node_loss_restores_every_replicated_entry[sync]": 22,
    "tests/crash/test_sigkill.py::test_journal_sigkilled_at_random_moments[sync]": 22,
    "tests/replay/test_testing_kit.py::test_kit_catches_a_handler_that_reads_global_rng": 21,
    "tests/supervisor/test_run.py::test_no_progress_stops_with_75": 21,
    "tests/crash/test_syncpoints.py::test_bare_log_killed_at_every_sync_point[pwrite64]": 20,
    "tests/distributed/test_fsdp.py::test_fsdp2_sharded_state_survives_random_sigkills_bit_identical": 20,
    "tests/supervisor/test_replica_metrics.py::test_replay_run_reports_replica_lag_and_a_lost_machine_restores_under_it": 20,
    "tests/test_readme.py::test_recipe_runs[preemption]": 20,
    "tests/replay/test_stateful.py::test_journal_recovers_the_reference_fold::runTest": 19,
    "tests/crash/test_sigkill.py::test_journal_sigkilled_at_random_moments[group]": 19,
    "tests/crash/test_archive.py::test_a_reader_in_another_process_never_sees_a_gap_while_the_writer_compacts": 19,
    "tests/crash/test_archive.py::test_writer_killed_at_every_sync_point_of_compaction_loses_nothing[fdatasync-1]": 18,
    "tests/crash/test_replica_node_loss.py::test_node_loss_restores_every_replicated_entry[group]": 18,
    "tests/distributed/test_kills.py::test_random_sigkills_of_random_ranks_end_bit_identical[3-9-80]": 18,
    "tests/crash/test_archive.py::test_writer_killed_at_every_sync_point_of_compaction_loses_nothing[fsync-1]": 18,
    "tests/supervisor/test_run.py::test_a_hang_is_dumped_killed_and_restarted": 17,
    "tests/crash/test_power_loss.py::test_crash_images_keep_every_durable_entry[sync]": 17,
    "tests/test_readme.py::test_recipe_runs[replica]": 17,
    "tests/crash/test_power_loss.py::test_crash_images_keep_every_durable_entry[group]": 16,
    "tests/test_readme.py::test_recipe_runs[inference]": 16,
    "tests/distributed/test_kills.py::test_random_sigkills_of_random_ranks_end_bit_identical[2-12-80]": 16,
    "tests/distributed/test_failpoints.py::test_a_kill_at_each_protocol_step_recovers_to_a_consistent_cut[snapshot.after_manifest_rename]": 15,
    "tests/crash/test_preemption_workers.py::test_sigterm_to_the_whole_process_group_never_interrupts_a_handler_and_resumes_bit_identical": 15,
    "tests/supervisor/test_report.py::test_a_supervised_run_with_killed_attempts_is_drawn": 14,
    "tests/test_readme.py::test_the_dataloader_recipe_is_importable_by_the_cli": 14,
    "tests/crash/test_short_file.py::test_cut_short_data_file_is_damage_never_a_signal": 14,
    "tests/supervisor/test_run.py::test_sigkilled_job_is_restarted_and_ends_bit_identical": 14,
    "tests/crash/test_audit.py::test_verify_beside_a_writer_that_snapshots_prunes_and_compacts_reports_no_damage": 13,
    "tests/eventlog/test_merging.py::test_frequent_compactions_keep_a_bounded_number_of_files_and_the_same_history": 12,
    "tests/supervisor/test_run.py::test_a_cuda_oom_is_its_own_class_and_the_next_attempt_is_told": 12,
    "tests/cli/test_live.py::test_tail_follow_prints_every_entry_a_live_writer_appends": 12,
    "tests/supervisor/test_run.py::test_a_handler_failing_at_the_same_entry_stops_with_65_after_one_confirmation": 11,
    "tests/snapshots/test_crash.py::test_sigkill_at_every_io_call_of_a_save_and_prune[loose]": 11,
    "tests/crash/test_archive.py::test_writer_killed_at_every_sync_point_of_compaction_loses_nothing[rename-1]": 10,
    "tests/replica/test_preemption_grace.py::test_preemption_exits_within_its_grace_when_the_replica_is_unreachable[black-hole]": 10,
    "tests/crash/test_syncpoints.py::test_journal_killed_at_every_sync_point[fdatasync-1]": 10,
    "tests/cli/test_multirank_group.py::test_real_two_rank_journal_verifies_and_shows_its_common_snapshot": 9,
    "tests/crash/test_fork.py::test_kill_at_every_io_call_of_a_fork": 9,
    "tests/replay/test_readonly_journal.py::test_a_journal_the_user_can_only_read_is_read_by_every_reader[the": 9,
    "tests/eventlog/test_crash.py::test_sigkill_never_loses_an_acknowledged_entry[group]": 9,
    "tests/crash/test_store_races.py::test_reader_never_sees_no_snapshot_while_a_writer_saves_and_prunes": 9,
    "tests/replay/test_readonly_journal.py::test_a_journal_the_user_can_only_read_is_read_by_every_reader[no": 9,
    "tests/eventlog/test_crash.py::test_sigkill_never_loses_an_acknowledged_entry[sync]": 8,
    "tests/replica/test_merging.py::test_shipping_every_entry_keeps_a_bounded_number_of_objects[s3]": 8,
    "tests/crash/test_sigkill.py::test_bare_log_sigkilled_at_random_moments[group]": 8,
    "tests/crash/test_sigkill.py::test_bare_log_sigkilled_at_random_moments[sync]": 8,
    "tests/crash/test_damage.py::test_damaged_newest_snapshot_falls_back_to_the_previous_and_replays": 8,
    "tests/replay/test_fork.py::test_forking_beside_a_live_writer": 8,
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

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

The seconds are one measured clean-clone run (2026-12-07, quiet) on a 2-core machine under `-n 4` (only the
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
    "tests/test_demo.py::test_demo_survives_kills_bit_identically[train-extra0]": 54,
    "tests/test_demo.py::test_with_sync_durability_every_printed_step_is_durable": 44,
    "tests/crash/test_dataloader.py::test_sigkilled_dataloader_training_resumes_bit_identical": 40,
    "tests/replay/test_sigkill.py::test_sigkilled_training_resumes_bit_identical": 38,
    "tests/supervisor/test_run_ranks.py::test_a_hung_rank_is_dumped_and_the_group_restarted": 37,
    "tests/test_demo_ranks.py::test_demo_ranks_survives_kills_bit_identically": 32,
    "tests/distributed/test_kills.py::test_random_sigkills_of_random_ranks_end_bit_identical[2-12-80]": 31,
    "tests/distributed/test_damage_and_size.py::test_another_world_size_is_refused_on_every_rank_naming_both_and_changes_nothing": 25,
    "tests/test_demo.py::test_demo_survives_kills_bit_identically[inference-extra1]": 24,
    "tests/crash/test_power_loss.py::test_crash_images_keep_every_durable_entry[sync]": 23,
    "tests/distributed/test_failpoints.py::test_a_kill_at_each_protocol_step_recovers_to_a_consistent_cut[snapshot.after_manifest_rename]": 22,
    "tests/crash/test_short_file.py::test_random_bit_flips_are_reported_never_raw_or_a_signal": 22,
    "tests/test_readme.py::test_torchrun_recipe_runs_with_its_command": 21,
    "tests/distributed/test_ddp_baseline.py::test_a_rebuilt_ddp_is_bit_exact_only_with_fixed_buckets[3]": 21,
    "tests/test_readme.py::test_recipe_runs[dataloader]": 19,
    "tests/crash/test_races.py::test_rollback_beside_snapshot_follow_up_never_hangs_or_fails_a_snapshot": 19,
    "tests/supervisor/test_run_ranks.py::test_a_killed_rank_restarts_the_group_and_it_ends_bit_identical": 19,
    "tests/crash/test_power_loss.py::test_crash_images_keep_every_durable_entry[group]": 19,
    "tests/crash/test_preemption.py::test_sigterm_or_sigusr1_at_random_moments_exits_as_documented_and_the_next_open_replays_nothing": 18,
    "tests/crash/test_sigkill.py::test_journal_sigkilled_at_random_moments[sync]": 18,
    "tests/crash/test_archive.py::test_a_reader_in_another_process_never_sees_a_gap_while_the_writer_compacts": 17,
    "tests/crash/test_sigkill.py::test_journal_sigkilled_at_random_moments[group]": 17,
    "tests/crash/test_preemption_workers.py::test_sigterm_to_the_whole_process_group_never_interrupts_a_handler_and_resumes_bit_identical": 17,
    "tests/test_readme.py::test_recipe_runs[fork]": 17,
    "tests/test_readme.py::test_the_dataloader_recipe_is_importable_by_the_cli": 16,
    "tests/crash/test_replica_node_loss.py::test_node_loss_restores_every_replicated_entry[sync]": 16,
    "tests/crash/test_power_loss.py::test_crash_images_keep_every_durable_entry[os]": 15,
    "tests/crash/test_short_file.py::test_cut_short_data_file_is_damage_never_a_signal": 15,
    "tests/crash/test_audit.py::test_verify_beside_a_writer_that_snapshots_prunes_and_compacts_reports_no_damage": 15,
    "tests/distributed/test_ddp_baseline.py::test_uninterrupted_ddp_runs_are_bit_identical[2]": 15,
    "tests/replay/test_testing_kit.py::test_kit_catches_a_handler_that_reads_global_rng": 15,
    "tests/crash/test_one_sync_commit.py::test_acknowledging_a_commit_at_its_return_loses_entries": 15,
    "tests/replica/test_preemption_grace.py::test_preemption_exits_within_its_grace_when_the_replica_is_unreachable[black-hole]": 14,
    "tests/distributed/test_failpoints.py::test_a_kill_at_each_protocol_step_recovers_to_a_consistent_cut[snapshot.before_manifest_rename]": 14,
    "tests/distributed/test_kills.py::test_survivors_of_a_dead_peer_end_with_an_exception_and_the_restart_is_bit_identical": 14,
    "tests/replay/test_fork.py::test_forking_beside_a_live_writer": 13,
    "tests/crash/test_damage.py::test_io_errors_poison_the_journal_and_lose_nothing_acknowledged": 12,
    "tests/supervisor/test_run.py::test_a_hang_is_dumped_killed_and_restarted": 12,
    "tests/crash/test_replica_node_loss.py::test_node_loss_restores_every_replicated_entry[group]": 12,
    "tests/cli/test_live.py::test_tail_follow_prints_every_entry_a_live_writer_appends": 11,
    "tests/supervisor/test_report.py::test_a_supervised_run_with_killed_attempts_is_drawn": 11,
    "tests/supervisor/test_run.py::test_sigterm_to_the_supervisor_stops_the_job_cleanly_and_is_never_restarted": 11,
    "tests/distributed/test_fsdp.py::test_fsdp2_sharded_state_survives_random_sigkills_bit_identical": 11,
    "tests/replay/test_testing_kit.py::test_project_ops_recover_bit_exactly::runTest": 11,
    "tests/supervisor/test_replica_metrics.py::test_replay_run_reports_replica_lag_and_a_lost_machine_restores_under_it": 10,
    "tests/supervisor/test_run.py::test_no_progress_stops_with_75": 10,
    "tests/supervisor/test_run.py::test_sigkilled_job_is_restarted_and_ends_bit_identical": 10,
    "tests/distributed/test_rolled_back_rank.py::test_a_rank_whose_log_is_missing_is_refused_with_its_reason_on_every_rank": 10,
    "tests/eventlog/test_stateful.py::TestLogMachine::runTest": 10,
    "tests/distributed/test_kills.py::test_random_sigkills_of_random_ranks_end_bit_identical[3-9-80]": 9,
    "tests/crash/test_fork.py::test_kill_at_every_io_call_of_a_fork": 9,
    "tests/distributed/test_ddp_baseline.py::test_a_rebuilt_ddp_is_bit_exact_only_with_fixed_buckets[2]": 9,
    "tests/crash/test_store_races.py::test_reader_never_sees_no_snapshot_while_a_writer_saves_and_prunes": 9,
    "tests/replica/test_merging.py::test_shipping_every_entry_keeps_a_bounded_number_of_objects[s3]": 9,
    "tests/replay/test_readonly_journal.py::test_a_journal_the_user_can_only_read_is_read_by_every_reader[no": 9,
    "tests/cli/test_multirank_group.py::test_real_two_rank_journal_verifies_and_shows_its_common_snapshot": 8,
    "tests/crash/test_sigkill.py::test_bare_log_sigkilled_at_random_moments[sync]": 8,
    "tests/replay/test_stateful.py::test_journal_recovers_the_reference_fold::runTest": 8,
    "tests/crash/test_sigkill.py::test_bare_log_sigkilled_at_random_moments[group]": 7,
    "tests/supervisor/test_run.py::test_a_cuda_oom_is_its_own_class_and_the_next_attempt_is_told": 7,
    "tests/replay/test_readonly_journal.py::test_a_journal_the_user_can_only_read_is_read_by_every_reader[the": 7,
    "tests/supervisor/test_run.py::test_a_handler_failing_at_the_same_entry_stops_with_65_after_one_confirmation": 7,
    "tests/golden/test_golden.py::test_the_group_opens_at_world_size_2": 6,
    "tests/replica/test_claim.py::test_a_newcomer_beside_a_shipping_process_is_refused_or_holds_the_replica_never_opens_fenced": 6,
    "tests/distributed/test_ddp_baseline.py::test_dead_peer_surfaces_as_gloo_exception_in_every_survivor": 6,
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

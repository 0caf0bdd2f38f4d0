"""The epoch ledger: training time summed over every session of a run directory."""

from experiments.ledger import FILE, EpochLedger


def test_totals_sum_every_session_per_optimizer_and_skip_a_torn_last_line(tmp_path):
    first = EpochLedger(tmp_path, fresh=True)
    first.recorder("main/adam/chunk0")(1, 2.0)
    first.recorder("main/sgd/chunk0")(1, 0.5)
    second = EpochLedger(tmp_path, fresh=False)  # a resumed session appends
    second.recorder("main/adam/final_chunk0")(2, 1.5)
    with (tmp_path / FILE).open("a") as f:
        f.write('{"chunk": "main/adam/fin')  # killed mid-write
    assert second.totals() == {"": 4.0, "main/adam": 3.5, "main/sgd": 0.5}


def test_a_fresh_run_starts_a_new_ledger(tmp_path):
    EpochLedger(tmp_path, fresh=True).recorder("main/adam/chunk0")(1, 9.0)
    assert EpochLedger(tmp_path, fresh=True).totals() == {"": 0.0}


def test_a_session_after_a_torn_line_keeps_its_own_epochs(tmp_path):
    EpochLedger(tmp_path, fresh=True).recorder("main/adam/chunk0")(1, 2.0)
    with (tmp_path / FILE).open("a") as f:
        f.write('{"chunk": "main/adam/ch')  # killed mid-write
    resumed = EpochLedger(tmp_path, fresh=False)
    resumed.recorder("main/adam/chunk0")(2, 3.0)
    assert resumed.totals() == {"": 5.0, "main/adam": 5.0}

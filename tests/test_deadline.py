import threading
import time

import pytest

from crashup_lib import deadline


def test_expiry_interrupts_a_blocking_wait_and_names_itself():
    start = time.monotonic()
    with pytest.raises(deadline.DeadlineExceeded) as err:
        with deadline.deadline(0.3, "status"):
            threading.Event().wait(10)
    assert 0.3 <= time.monotonic() - start < 0.6
    assert str(err.value) == "status timed out after 0.3s"


def test_inner_deadline_expires_first_and_outer_still_holds():
    with pytest.raises(deadline.DeadlineExceeded) as outer:
        with deadline.deadline(0.6, "off"):
            with pytest.raises(deadline.DeadlineExceeded) as inner:
                with deadline.deadline(0.2, "login"):
                    time.sleep(5)
            assert inner.value.what == "login"
            assert 0.3 < deadline.remaining() <= 0.4
            time.sleep(5)
    assert outer.value.what == "off"
    assert deadline.remaining() is None


def test_outer_deadline_wins_over_a_longer_inner_one():
    with pytest.raises(deadline.DeadlineExceeded) as err:
        with deadline.deadline(0.2, "action"):
            with deadline.deadline(5, "request"):
                time.sleep(5)
    assert err.value.what == "action"


def test_nothing_left_armed_after_exit():
    with deadline.deadline(0.2, "quick"):
        pass
    time.sleep(0.3)                      # would raise if the timer were still armed
    assert deadline.remaining(7.0) == 7.0


def test_broad_except_exception_cannot_swallow_it():
    with pytest.raises(deadline.DeadlineExceeded):
        with deadline.deadline(0.1, "x"):
            try:
                time.sleep(5)
            except Exception:
                pass


def test_no_op_outside_the_main_thread():
    seen = []
    t = threading.Thread(target=lambda: seen.append(deadline.deadline(0.1, "t").__enter__() is None))
    t.start()
    t.join()
    assert seen == [True]

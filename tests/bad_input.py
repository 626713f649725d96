"""The two checks of the bad-input tables: an error that names the fix, or a documented value.

``tests/test_bad_input_loss.py`` and ``tests/test_bad_input_linear.py`` list their cases as
rows; these functions judge a row.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.tolerances import assert_close


def assert_raises_with_words(call, exception: type[Exception], words: list[str]) -> None:
    """``call()`` raises exactly ``exception``, its message holding every one of ``words``."""
    with pytest.raises(exception) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert info.type is exception, f"{info.type.__name__} is a subclass, not {exception.__name__}"


def assert_documented(call, check: str, *, context: str) -> None:
    """``call()`` returns the documented value, as ``check`` says.

    ``check``: "equal" (a pair within the float32 loss rule), "nan" (all NaN), "inf" (all
    +inf) or "finite" (a finite scalar).
    """
    out = call()
    if check == "equal":
        got, want = out
        assert_close(got, want, dtype="float32", quantity="loss", context=context)
    elif check == "nan":
        assert np.isnan(np.asarray(out)).all(), out
    elif check == "inf":
        assert np.isposinf(np.asarray(out)).all(), out
    else:
        assert check == "finite", f"unknown check {check!r}"
        assert np.ndim(out) == 0 and np.isfinite(out), out

from __future__ import annotations

import pytest

from kinema.storage.keys import output_key, upload_key


def test_keys_keep_the_values_existing_files_were_stored_under() -> None:
    assert output_key("tsk_abc") == "tsk_abc.mp4"
    assert upload_key("file_abc") == "uploads/file_abc"


def test_output_keys_with_an_attempt_never_collide() -> None:
    keys = {output_key("tsk_abc"), output_key("tsk_abc", 1), output_key("tsk_abc", 2)}
    assert len(keys) == 3
    assert output_key("tsk_abc", 2) == "tsk_abc/attempt-2.mp4"
    with pytest.raises(ValueError):
        output_key("tsk_abc", 0)

"""``cryopick weights``: numeric and checksum options are checked where they are parsed."""

from __future__ import annotations

import pytest

from cryopick.cli.main import main


@pytest.mark.parametrize("option, value", [("--retries", "-1"), ("--retries", "two"), ("--sha256", "abc"),
                                           ("--sha256", "g" * 64)])
def test_download_options_are_validated(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as info:
        main(["weights", "download", "sam2.1-hiera-tiny", "--cache", str(tmp_path), option, value])
    err = capsys.readouterr().err
    assert info.value.code == 2 and option in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []

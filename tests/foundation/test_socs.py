"""SoC naming in one place: the property fallback and the chip names conf/ uses."""

from pipeline.socs import chip_of, soc_of


def test_soc_model_wins_then_board_platform():
    assert soc_of({"ro.soc.model": "SM8650", "ro.board.platform": "pineapple"}) == "SM8650"
    assert soc_of({"ro.soc.model": None, "ro.board.platform": "kalama"}) == "kalama"
    assert soc_of({}) is None and soc_of(None) is None


def test_chip_names():
    assert chip_of({"ro.soc.model": "SM8650"}) == "8gen3"
    assert chip_of({"ro.board.platform": "kalama"}) == "8gen2"
    assert chip_of({"ro.soc.model": "virtual-host-cpu"}) == "virtual-host-cpu"
    assert chip_of({}) is None

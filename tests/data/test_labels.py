from fedfm.data.labels import label_id

NAMES = ("neg", "pos")


def test_a_label_is_read_from_its_name_its_id_or_its_id_as_text():
    assert [label_id(v, NAMES) for v in ("pos", "neg", 0, 1, "1", "0")] == [1, 0, 0, 1, 1, 0]


def test_anything_else_names_no_label():
    for value in ("x", "", "2", "-1", 2, -1, 1.0, True, None, ["pos"]):
        assert label_id(value, NAMES) is None, value

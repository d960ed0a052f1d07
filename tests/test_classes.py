"""The class table: validation, ids, colours, palette, CSV and JSON round trips, merging."""

from __future__ import annotations

import itertools

import pytest

from hhn.errors import UserError
from napari_wfss.classes import (
    IGNORE_COLOR,
    MAX_CLASS_ID,
    ClassInfo,
    ClassTable,
    ClassTableError,
    default_color,
    normalize_class_name,
)


def _table(*names):
    t = ClassTable()
    for n in names:
        t.add(n)
    return t


def test_add_assigns_lowest_free_ids_and_distinct_vivid_colours():
    t = _table(*[f"class {i}" for i in range(12)])
    assert t.ids == list(range(1, 13))
    colours = [c.color for c in t]
    assert len(set(colours)) == 12
    for a, b in itertools.combinations(colours, 2):
        assert sum((x - y) ** 2 for x, y in zip(a, b)) ** 0.5 > 40  # clearly different colours
    for c in colours:
        assert max(c) - min(c) > 60  # saturated: never black or grey (background / ignore)
    t.remove("class 3")
    assert t.add("new").id == 4  # freed id is reused
    assert t.add("explicit", class_id=200).id == 200
    assert t.by_id(200).color == default_color(200)


def test_names_are_unique_case_insensitive_and_normalised():
    t = _table("Cow")
    with pytest.raises(ClassTableError, match="already exists"):
        t.add("  cOW ")
    info = t.add("  traffic \t light ")
    assert info.name == "traffic light"
    assert t.find("TRAFFIC  LIGHT") == info and "traffic light" in t and "bus" not in t
    assert t.get("cow").name == "Cow"  # the user's spelling is kept


@pytest.mark.parametrize("bad", ["", "   ", "a,b", "tab\x07bell", "#hash", "pine (tree)", "car [vehicle]",
                                 "Background", "IGNORE", "x" * 65])
def test_invalid_names_are_user_errors(bad):
    with pytest.raises(ClassTableError) as info:
        normalize_class_name(bad)
    assert isinstance(info.value, UserError)


@pytest.mark.parametrize("bad_id", [0, 255, -1, 300, 2.0, True, "3"])
def test_invalid_ids(bad_id):
    with pytest.raises(ClassTableError, match="id"):
        ClassTable().add("x", class_id=bad_id)


def test_duplicate_id_and_unknown_lookups():
    t = _table("a")
    with pytest.raises(ClassTableError, match="already used by 'a'"):
        t.add("b", class_id=1)
    with pytest.raises(ClassTableError, match="unknown class 'zebra' .*known classes: a"):
        t.get("zebra")
    with pytest.raises(ClassTableError, match="no class has id 9"):
        t.by_id(9)


def test_table_full():
    t = ClassTable()
    for i in range(MAX_CLASS_ID):
        t.add(f"c{i}")
    with pytest.raises(ClassTableError, match="full"):
        t.add("one too many")


def test_rename_keeps_id_and_colour_and_refuses_clashes():
    t = _table("cat", "dog")
    before = t.get("cat")
    after = t.rename("CAT", "kitten")
    assert (after.id, after.color, after.name) == (before.id, before.color, "kitten")
    assert t.names == ["kitten", "dog"]  # order kept
    assert t.rename("kitten", "Kitten").name == "Kitten"  # case change of itself is fine
    with pytest.raises(ClassTableError, match="already exists"):
        t.rename("kitten", "DOG")


def test_colours_parse_and_validate():
    t = _table("a")
    assert t.set_color("a", "#0A0b0C").color == (10, 11, 12)
    assert t.set_color("a", "ff0080").hex_color == "#ff0080"
    assert t.set_color("a", (1, 2, 3)).color == (1, 2, 3)
    for bad in ["#12345", "red", (1, 2), (0, 0, 256)]:
        with pytest.raises(ClassTableError, match="colour"):
            t.set_color("a", bad)


def test_palette_bytes():
    t = ClassTable()
    t.add("a", color="#102030")
    t.add("b", class_id=254, color=(250, 1, 2))
    pal = t.palette()
    assert len(pal) == 768
    assert pal[0:3] == bytes((0, 0, 0))
    assert pal[3:6] == bytes((16, 32, 48))
    assert pal[3 * 254 : 3 * 255] == bytes((250, 1, 2))
    assert pal[3 * 255 :] == bytes(IGNORE_COLOR)
    assert pal[6:9] == bytes(3)  # unused ids are black
    assert t.colors()[254] == (250, 1, 2)


def test_csv_round_trip(tmp_path):
    t = ClassTable()
    t.add("sheep", class_id=5, color="#aabbcc")
    t.add("traffic light")
    t.add("Straße")
    t.write_csv(tmp_path / "c.csv")
    text = (tmp_path / "c.csv").read_text(encoding="utf-8")
    assert text.splitlines()[0] == "id,name,color"
    assert "5,sheep,#aabbcc" in text.splitlines()
    back = ClassTable.read_csv(tmp_path / "c.csv")
    assert back == t
    assert [c.name for c in back] == ["sheep", "traffic light", "Straße"]


def test_csv_import_optional_columns_comments_bom_and_auto_ids(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("\ufeffName,ID\n# a comment\n\nzebra,\nhorse,1\ncow,\n", encoding="utf-8")
    t = ClassTable.read_csv(p)
    assert [(c.name, c.id) for c in t] == [("zebra", 2), ("horse", 1), ("cow", 3)]  # 1 is claimed by horse
    assert t.get("zebra").color == default_color(2)


def test_csv_errors_are_reported_together_with_line_numbers(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("id,name,color\n1,cow,#ff0000\n2,Cow,\nx,sheep,\n3,goat,blue\n4,background,\n")
    with pytest.raises(ClassTableError) as info:
        ClassTable.read_csv(p)
    msg = str(info.value)
    assert "bad.csv" in msg
    for line in (3, 4, 5, 6):
        assert f"line {line}:" in msg
    assert "line 2:" not in msg
    (tmp_path / "nohead.csv").write_text("cow\n")
    with pytest.raises(ClassTableError, match="header"):
        ClassTable.read_csv(tmp_path / "nohead.csv")
    with pytest.raises(ClassTableError, match="cannot read"):
        ClassTable.read_csv(tmp_path / "missing.csv")


def test_json_round_trip_and_records():
    t = _table("a", "b c")
    t.set_color("a", "#010203")
    assert t.to_records()[0] == {"id": 1, "name": "a", "color": "#010203"}
    assert ClassTable.from_json(t.to_json()) == t
    assert ClassTable.from_records([{"name": "x"}]).get("x") == ClassInfo(1, "x", default_color(1))
    for bad in ["{", '{"name": "x"}', '[{"id": 1}]']:
        with pytest.raises(ClassTableError):
            ClassTable.from_json(bad)


def test_merge_adds_new_updates_colours_and_refuses_id_conflicts():
    mine = _table("cow", "sheep")
    theirs = ClassTable()
    theirs.add("COW", class_id=1, color="#000001")
    theirs.add("goat", class_id=7)
    added = mine.merge(theirs)
    assert [c.name for c in added] == ["goat"] and mine.get("goat").id == 7
    assert mine.get("cow").color == (0, 0, 1)
    clash = ClassTable([ClassInfo(2, "cow", (1, 1, 1))])
    before = mine.copy()
    with pytest.raises(ClassTableError, match="ids of existing classes cannot change"):
        mine.merge(clash)
    taken = ClassTable([ClassInfo(2, "horse", (1, 1, 1))])
    with pytest.raises(ClassTableError, match="already 'sheep'"):
        mine.merge(taken)
    assert mine == before  # nothing changed on a conflict


@pytest.mark.parametrize("name", ["-", "none", "None", " NONE "])
def test_the_negative_tag_names_are_not_class_names(name):
    with pytest.raises(ClassTableError, match="marks an image holding none of the classes"):
        ClassTable().add(name)

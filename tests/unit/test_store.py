"""Controller records: lookups by an indexed field use the index, not a scan of every record."""

import pytest
from pydantic import BaseModel

from erx_core.store import InvalidCursor, Store


class Check(BaseModel):
    check_id: str
    pres_ex_id: str | None = None


def test_find_by_an_indexed_field_uses_the_index(tmp_path):
    store = Store(tmp_path / "c.db")
    checks = store.table("check", Check, indexed=("pres_ex_id",))
    for i in range(50):
        checks.put(f"c{i}", Check(check_id=f"c{i}", pres_ex_id=f"p{i}"))
    store.table("other", Check).put("x", Check(check_id="x", pres_ex_id="p7"))  # same value, other kind

    assert checks.find("pres_ex_id", "p7") == Check(check_id="c7", pres_ex_id="p7")
    assert checks.find("pres_ex_id", "nope") is None
    plan = " ".join(str(row) for row in store.connection.execute(
        "EXPLAIN QUERY PLAN SELECT doc FROM records WHERE kind=? AND json_extract(doc, '$.pres_ex_id')=? "
        "ORDER BY updated DESC LIMIT 1", ("check", "p7")))
    assert "records_by_pres_ex_id" in plan, plan


def test_only_declared_top_level_fields_can_be_indexed(tmp_path):
    store = Store(tmp_path / "c.db")
    with pytest.raises(ValueError):
        store.table("check", Check, indexed=("nope",))
    with pytest.raises(ValueError):
        store.table("check", Check, indexed=("pres_ex_id') OR 1=1 --",))
    with pytest.raises(ValueError):
        store.table("check", Check).find("pres_ex_id", "p1")


def test_pages_run_newest_first_by_insertion_and_hold_still_while_records_arrive(tmp_path):
    store = Store(tmp_path / "c.db")
    checks = store.table("check", Check)
    for i in range(7):
        checks.put(f"c{i}", Check(check_id=f"c{i}"))
    store.table("other", Check).put("x", Check(check_id="x"))  # other kinds are not counted or listed

    first = checks.page(3)
    assert [c.check_id for c in first.items] == ["c6", "c5", "c4"] and first.total == 7 and first.next
    checks.put("c7", Check(check_id="c7"))  # a new record: before the first page, not within later ones
    checks.put("c2", Check(check_id="c2", pres_ex_id="p2"))  # an update keeps the record's place
    second = checks.page(3, after=first.next)
    assert [(c.check_id, c.pres_ex_id) for c in second.items] == [("c3", None), ("c2", "p2"), ("c1", None)]
    last = checks.page(3, after=second.next)
    assert [c.check_id for c in last.items] == ["c0"] and last.next is None and last.total == 8
    assert [c.check_id for c in checks.page(200).items] == ["c7", "c6", "c5", "c4", "c3", "c2", "c1", "c0"]
    assert checks.page(8).next is None and checks.page(7).next is not None

    checks.delete("c3")  # a deleted record's cursor still leads on
    assert [c.check_id for c in checks.page(2, after=checks.page(4).next).items] == ["c2", "c1"]


def test_a_cursor_belongs_to_its_list(tmp_path):
    store = Store(tmp_path / "c.db")
    checks, others = store.table("check", Check), store.table("other", Check)
    for i in range(3):
        checks.put(f"c{i}", Check(check_id=f"c{i}"))
        others.put(f"o{i}", Check(check_id=f"o{i}"))
    cursor = checks.page(1).next
    with pytest.raises(InvalidCursor):
        others.page(1, after=cursor)
    for garbage in ("", "!!!", "Y2hlY2s6LTE", "Y2hlY2s6eA", "Y2hlY2s6" + "OTk5" * 10):  # check:-1, check:x, long
        with pytest.raises(InvalidCursor):
            checks.page(1, after=garbage)


def test_a_page_is_read_from_the_kind_index_without_sorting(tmp_path):
    store = Store(tmp_path / "c.db")
    plan = " ".join(str(row) for row in store.connection.execute(
        "EXPLAIN QUERY PLAN SELECT rowid, doc FROM records WHERE kind=? AND rowid<? ORDER BY rowid DESC LIMIT ?",
        ("check", 10, 3)))
    assert "records_by_kind" in plan and "TEMP B-TREE" not in plan, plan


def test_a_record_the_model_cannot_read_is_set_aside_not_fatal(tmp_path):
    """A record written under looser rules (or damaged) never stops a list or the controller."""
    from pydantic import BaseModel, Field

    from erx_core.store import Store, UnreadableRecord

    class Strict(BaseModel):
        code: str = Field(pattern=r"^[A-Z0-9]+$")
        state: str = "open"

    store = Store(tmp_path / "s.db")
    table = store.table("thing", Strict, indexed=("state",))
    table.put("good", Strict(code="M01AE01"))
    store.connection.execute("INSERT INTO records VALUES ('thing', 'bad', 0, ?)",
                             ('{"code": "M01  AE01", "state": "open"}',))
    assert [t.code for t in table.all()] == ["M01AE01"]
    assert [t.code for t in table.find_all("state", "open")] == ["M01AE01"]
    assert [t.code for t in table.page(10).items] == ["M01AE01"]
    with pytest.raises(UnreadableRecord) as unreadable:
        table.get("bad")
    assert unreadable.value.record_id == "bad"
    assert list(store.unreadable()) == ["thing bad"] and "code" in store.unreadable()["thing bad"]
    table.put("bad", Strict(code="M01AE01"))  # mended by the operator: readable again
    assert table.get("bad").code == "M01AE01" and store.unreadable() == {}

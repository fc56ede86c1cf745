"""Controller records: lookups by an indexed field use the index, not a scan of every record."""

import pytest
from pydantic import BaseModel

from erx_core.store import Store


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

"""Open311 GeoReport v2 (services, service definition, requests GET and POST, JSON and
XML, the spec's error shape, +08:00 dates) and the 12345 work order
(GET /v1/tickets/{id}?format=12345).

The field lists are written out here from the spec (https://wiki.open311.org/GeoReport_v2),
not taken from the code, and every answer is checked for exactly those keys.
In-process: FastAPI's TestClient over the real app and a SQLite store."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from pipeline.messages import TypedMessage, accept_message, ticket_from_message
from pipeline.store import Store
from pipeline.ticket_schema import Ticket
from pipeline.tickets import load_rules
from pipeline.tickets.exports import (
    add_working_days,
    china_time,
    open311_request,
    work_order_12345,
)
from tests.test_review_api import NullDispatcher, make_settings

# GET services.json / .xml
SERVICE_FIELDS = ["service_code", "service_name", "description", "metadata", "type",
                  "keywords", "group"]
# GET services/{service_code}.json
DEFINITION_FIELDS = ["service_code", "attributes"]
# GET requests.json and requests/{id}.json
REQUEST_FIELDS = ["service_request_id", "status", "status_notes", "service_name",
                  "service_code", "description", "agency_responsible", "service_notice",
                  "requested_datetime", "updated_datetime", "expected_datetime", "address",
                  "address_id", "zipcode", "lat", "long", "media_url"]
# POST requests.json
CREATED_FIELDS = ["service_request_id", "service_notice", "account_id"]
ERROR_FIELDS = ["code", "description"]
WORK_ORDER_FIELDS = ["工单编号", "来电时间", "来源渠道", "诉求类型", "事项分类", "诉求内容",
                     "诉求概要", "事发地址", "承办单位", "办理时限", "紧急程度", "是否重复",
                     "关联工单"]
LEVEL1 = {"城乡建设", "党务政务", "国土资源", "环境保护", "纪检监察", "交通运输", "经济管理",
          "科技与信息产业", "民政", "农村农业", "商贸旅游", "卫生计生", "政法", "教育文体",
          "劳动和社会保障"}
CHINA = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+08:00$")
V2 = "/open311/v2"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    app = create_app(make_settings(tmp_path_factory.mktemp("open311")),
                     dispatcher=NullDispatcher(), maintenance=False)
    with TestClient(app) as client:
        store: Store = app.state.store
        keys = {role: store.create_api_key(f"{role}-key", role)[0]
                for role in ("submitter", "staff")}
        keys["other"] = store.create_api_key("other-submitter", "submitter")[0]
        yield {"client": client, "store": store, "keys": keys}


def xkey(key: str) -> dict[str, str]:
    return {"X-Api-Key": key}


def xml_records(body: bytes, root: str, item: str) -> list[dict[str, str | None]]:
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    top = ET.fromstring(body)
    assert top.tag == root
    assert all(child.tag == item for child in top)
    return [{field.tag: field.text for field in node} for node in top]


def post_light(env: dict[str, Any], key: str | None = None, **extra: str) -> dict[str, Any]:
    form = {"api_key": key or env["keys"]["submitter"], "service_code": "city.street_light",
            "lat": "29.4521", "long": "119.8923", "description": "和平路口的路灯坏了一个星期了",
            "phone": "13912345678", "email": "a@example.invalid", "first_name": "三",
            "last_name": "张", "attribute[pole]": "12", **extra}
    r = env["client"].post(f"{V2}/requests.json", data=form)
    assert r.status_code == 201, r.text
    [created] = r.json()
    return created


# --------------------------------------------------------------------------- services


def test_services_list_every_leaf_with_the_spec_fields(env: dict[str, Any]) -> None:
    r = env["client"].get(f"{V2}/services.json", params={"api_key": env["keys"]["submitter"]})
    assert r.status_code == 200, r.text
    services = r.json()
    codes = [c.code for c in load_rules().categories]
    assert [s["service_code"] for s in services] == codes
    for service in services:
        assert list(service) == SERVICE_FIELDS
        assert service["metadata"] is False and service["type"] == "realtime"
        assert service["group"] in LEVEL1 or service["service_code"] == "other"
        assert len(service["description"].split(" / ")) == 3
    light = next(s for s in services if s["service_code"] == "city.street_light")
    assert "路灯" in light["keywords"].split(",")


def test_services_xml(env: dict[str, Any]) -> None:
    r = env["client"].get(f"{V2}/services.xml", headers=xkey(env["keys"]["submitter"]))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/xml")
    records = xml_records(r.content, "services", "service")
    assert len(records) == len(load_rules().categories)
    assert all(list(rec) == SERVICE_FIELDS for rec in records)
    assert records[0]["metadata"] == "false"


def test_service_definition_and_unknown_codes(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    key = xkey(env["keys"]["submitter"])
    r = client.get(f"{V2}/services/city.street_light.json", headers=key)
    assert r.status_code == 200 and list(r.json()) == DEFINITION_FIELDS
    assert r.json() == {"service_code": "city.street_light", "attributes": []}
    xml = client.get(f"{V2}/services/city.street_light.xml", headers=key)
    top = ET.fromstring(xml.content)
    assert top.tag == "service_definition" and [c.tag for c in top] == DEFINITION_FIELDS
    missing = client.get(f"{V2}/services/no.such.json", headers=key)
    assert missing.status_code == 404
    assert [list(e) for e in missing.json()] == [ERROR_FIELDS]
    assert missing.json()[0]["code"] == 404 and "no.such" in missing.json()[0]["description"]
    missing_xml = client.get(f"{V2}/services/no.such.xml", headers=key)
    assert missing_xml.status_code == 404
    errors = xml_records(missing_xml.content, "errors", "error")
    assert errors == [{"code": "404", "description": "no service_code 'no.such'"}]
    assert client.get(f"{V2}/services.csv", headers=key).status_code == 404


@pytest.mark.parametrize("headers", [{}, {"X-Api-Key": "mny_not-a-key"},
                                     {"Authorization": "Bearer nonsense"}])
def test_every_open311_route_needs_a_key(env: dict[str, Any], headers: dict[str, str]) -> None:
    client: TestClient = env["client"]
    for method, path in [("get", "/services.json"), ("get", "/services/other.json"),
                         ("get", "/requests.json"), ("post", "/requests.json"),
                         ("get", "/requests/T20261123-000000-00000000.json")]:
        r = client.request(method, V2 + path, headers=headers)
        assert r.status_code == 401, (method, path, r.text)
        assert [list(e) for e in r.json()] == [ERROR_FIELDS] and r.json()[0]["code"] == 401
    xml = client.get(f"{V2}/requests.xml", headers=headers)
    assert xml_records(xml.content, "errors", "error")[0]["code"] == "401"


def test_bearer_works_too(env: dict[str, Any]) -> None:
    r = env["client"].get(f"{V2}/services.json",
                          headers={"Authorization": f"Bearer {env['keys']['submitter']}"})
    assert r.status_code == 200


# --------------------------------------------------------------------------- requests


def test_post_a_typed_request_and_read_it_back(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    before = datetime.now(timezone.utc)
    created = post_light(env, account_id="citizen-7")
    assert list(created) == CREATED_FIELDS
    assert created["account_id"] == "citizen-7"
    rid = created["service_request_id"]
    r = client.get(f"{V2}/requests/{rid}.json", headers=xkey(env["keys"]["submitter"]))
    assert r.status_code == 200, r.text
    [req] = r.json()
    assert list(req) == REQUEST_FIELDS
    rule = load_rules().category("city.street_light")
    assert req["service_request_id"] == rid and req["status"] == "open"
    assert req["service_code"] == "city.street_light" and req["service_name"] == rule.label
    assert req["agency_responsible"] == rule.department
    assert req["lat"] == 29.4521 and req["long"] == 119.8923
    assert "和平路" in req["address"]
    assert "路灯坏了一个星期" in req["description"]
    for field in ("requested_datetime", "updated_datetime", "expected_datetime"):
        assert CHINA.match(req[field]), (field, req[field])
    requested = datetime.fromisoformat(req["requested_datetime"])
    assert before - timedelta(seconds=2) <= requested <= datetime.now(timezone.utc)
    expected = datetime.fromisoformat(req["expected_datetime"])
    assert expected == add_working_days(requested, rule.time_limit_days).replace(microsecond=0)
    assert req["service_notice"] == f"办理时限{rule.time_limit_days}个工作日"
    # no personal field leaves: not the phone, the e-mail or the name
    assert "13912345678" not in r.text and "example.invalid" not in r.text
    # the same ticket in the store, as a typed message
    ticket = env["store"].get_ticket(rid)
    assert ticket is not None and ticket.source == "message" and ticket.audio is None
    assert ticket.submitter.phone == "13912345678"
    xml = client.get(f"{V2}/requests/{rid}.xml", headers=xkey(env["keys"]["submitter"]))
    [rec] = xml_records(xml.content, "service_requests", "request")
    assert list(rec) == REQUEST_FIELDS and rec["status"] == "open"
    assert rec["lat"] == "29.4521" and rec["address_id"] is None


def test_post_json_and_the_xml_answer(env: dict[str, Any]) -> None:
    r = env["client"].post(f"{V2}/requests.xml", headers=xkey(env["keys"]["submitter"]),
                           json={"service_code": "city.sanitation", "address_string":
                                 "浦江县浦阳街道和平路12号", "description": "门口垃圾三天没人清运",
                                 "attribute": {"bins": "2"}})
    assert r.status_code == 201, r.text
    [rec] = xml_records(r.content, "service_requests", "request")
    assert list(rec) == CREATED_FIELDS
    ticket = env["store"].get_ticket(rec["service_request_id"])
    assert ticket is not None and ticket.category.code == "city.sanitation"
    assert ticket.location.submitted_address == "浦江县浦阳街道和平路12号"


@pytest.mark.parametrize(("form", "status", "says"), [
    ({"service_code": "no.such", "lat": "29", "long": "119"}, 400, "service_code"),
    ({"lat": "29", "long": "119"}, 400, "service_code"),
    ({"service_code": "city.street_light"}, 400, "location"),
    ({"service_code": "city.street_light", "lat": "29"}, 400, "long"),
    ({"service_code": "city.street_light", "lat": "95", "long": "119"}, 400, "lat"),
    ({"service_code": "city.street_light", "lat": "29", "long": "119",
      "description": "长" * 4001}, 400, "description"),
])
def test_bad_posts_answer_in_the_spec_shape(env: dict[str, Any], form: dict[str, str],
                                            status: int, says: str) -> None:
    client: TestClient = env["client"]
    r = client.post(f"{V2}/requests.json", data={"api_key": env["keys"]["submitter"], **form})
    assert r.status_code == status, r.text
    [error] = r.json()
    assert list(error) == ERROR_FIELDS and error["code"] == status
    assert says in error["description"], error
    xml = client.post(f"{V2}/requests.xml", data={"api_key": env["keys"]["submitter"], **form})
    assert xml_records(xml.content, "errors", "error")[0]["code"] == str(status)


def test_requests_filters(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    key = xkey(env["keys"]["submitter"])
    a = post_light(env)["service_request_id"]
    b = post_light(env, service_code="city.sanitation",
                   description="小区门口的垃圾没人清运")["service_request_id"]

    def ids(**params: str) -> list[str]:
        r = client.get(f"{V2}/requests.json", params=params, headers=key)
        assert r.status_code == 200, r.text
        assert all(list(x) == REQUEST_FIELDS for x in r.json())
        return [x["service_request_id"] for x in r.json()]

    assert ids(service_request_id=f"{a},{b}") == [a, b]
    assert a in ids(service_code="city.street_light") and b not in ids(
        service_code="city.street_light")
    assert {a, b} <= set(ids(service_code="city.street_light,city.sanitation"))
    assert {a, b} <= set(ids(status="open")) and a not in ids(status="closed")
    # approval closes it
    staff = {"Authorization": f"Bearer {env['keys']['staff']}"}
    approved = client.post(f"/v1/tickets/{a}/approve", json={"revision": 1}, headers=staff)
    assert approved.status_code == 200, approved.text
    assert a in ids(status="closed") and a not in ids(status="open")
    [req] = client.get(f"{V2}/requests/{a}.json", headers=key).json()
    assert req["status"] == "closed"
    # dates: with a zone, inclusive range
    now = datetime.now(timezone.utc)
    assert a in ids(start_date=(now - timedelta(hours=1)).isoformat(),
                    end_date=(now + timedelta(hours=1)).isoformat())
    assert ids(start_date=(now + timedelta(hours=1)).isoformat()) == []
    assert ids(end_date=(now - timedelta(days=1)).isoformat()) == []
    naive = client.get(f"{V2}/requests.json", params={"start_date": "2026-11-01T00:00:00"},
                       headers=key)
    assert naive.status_code == 400 and "start_date" in naive.json()[0]["description"]
    bad = client.get(f"{V2}/requests.json", params={"status": "pending"}, headers=key)
    assert bad.status_code == 400 and bad.json()[0]["code"] == 400
    xml = client.get(f"{V2}/requests.xml", params={"service_request_id": b}, headers=key)
    assert [r["service_request_id"] for r in
            xml_records(xml.content, "service_requests", "request")] == [b]


def test_requests_default_to_the_last_90_days(env: dict[str, Any]) -> None:
    store: Store = env["store"]
    key_row = next(k for k in store.list_api_keys() if k.name == "submitter-key")
    old = datetime.now(timezone.utc) - timedelta(days=100)
    ticket, _ = accept_message(store, TypedMessage(title="路灯", text="路灯坏了"),
                               submitter_id=key_row.id, now=old)
    key = xkey(env["keys"]["submitter"])
    listed = env["client"].get(f"{V2}/requests.json", headers=key).json()
    assert ticket.id not in [r["service_request_id"] for r in listed]
    wider = env["client"].get(f"{V2}/requests.json", headers=key, params={
        "start_date": (old - timedelta(days=1)).isoformat()}).json()
    assert ticket.id in [r["service_request_id"] for r in wider]


def test_a_submitter_sees_only_its_own_requests(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    rid = post_light(env)["service_request_id"]
    other = xkey(env["keys"]["other"])
    assert client.get(f"{V2}/requests/{rid}.json", headers=other).status_code == 404
    listed = client.get(f"{V2}/requests.json", headers=other).json()
    assert rid not in [r["service_request_id"] for r in listed]
    staff = client.get(f"{V2}/requests/{rid}.json", headers=xkey(env["keys"]["staff"]))
    assert staff.status_code == 200


# --------------------------------------------------------------------------- 12345


def test_the_12345_work_order(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    # a caller of its own: the other tests' calls are this one's 重复件 otherwise
    rid = post_light(env, phone="13900000001")["service_request_id"]
    auth = {"Authorization": f"Bearer {env['keys']['submitter']}"}
    r = client.get(f"/v1/tickets/{rid}", params={"format": "12345"}, headers=auth)
    assert r.status_code == 200, r.text
    order = r.json()
    assert list(order) == WORK_ORDER_FIELDS
    rule = load_rules().category("city.street_light")
    assert order["工单编号"] == rid and CHINA.match(order["来电时间"])
    assert order["来源渠道"] == "网络留言"
    assert order["诉求类型"] in {"投诉", "咨询", "求助", "建议", "举报", "表扬"}
    assert order["事项分类"] == "/".join(rule.path)
    assert order["诉求内容"] == "和平路口的路灯坏了一个星期了"
    assert order["诉求概要"] and len(order["诉求概要"]) <= 80
    assert order["承办单位"] == rule.department
    assert order["办理时限"]["工作日"] == rule.time_limit_days
    due = add_working_days(datetime.fromisoformat(order["来电时间"]), rule.time_limit_days)
    assert order["办理时限"]["截止日期"] == due.date().isoformat()
    assert order["紧急程度"] == "一般" and order["是否重复"] == "否" and order["关联工单"] == []
    assert client.get(f"/v1/tickets/{rid}", headers=auth).json()["id"] == rid  # json default


def test_a_repeat_is_marked_in_the_work_order(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    auth = {"Authorization": f"Bearer {env['keys']['staff']}"}
    call = {"title": "路灯坏了", "text": "浦阳街道和平路口的路灯坏了一个星期了没人修",
            "phone": "13900000002"}
    first = client.post("/v1/messages", json=call, headers=auth).json()["ticket_id"]
    again = client.post("/v1/messages", json={**call, "text": "和平路口路灯还是坏的，"
                                                      "上次打过电话了"},
                        headers=auth).json()["ticket_id"]
    order = client.get(f"/v1/tickets/{again}?format=12345", headers=auth).json()
    assert order["是否重复"] == "是" and order["关联工单"][0] == first
    first_order = client.get(f"/v1/tickets/{first}?format=12345", headers=auth).json()
    assert first_order["是否重复"] == "否" and again in first_order["关联工单"]


def test_an_unknown_format_is_422_naming_format(env: dict[str, Any]) -> None:
    rid = post_light(env)["service_request_id"]
    r = env["client"].get(f"/v1/tickets/{rid}", params={"format": "xml"},
                          headers={"Authorization": f"Bearer {env['keys']['submitter']}"})
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["field"] == "query.format"


def test_openapi_documents_both_forms(env: dict[str, Any]) -> None:
    doc = env["client"].get("/openapi.json").json()
    get = doc["paths"]["/v1/tickets/{ticket_id}"]["get"]
    examples = get["responses"]["200"]["content"]["application/json"]["examples"]
    assert list(examples["12345"]["value"]) == WORK_ORDER_FIELDS
    # the examples are what the code gives for that ticket today
    ticket = Ticket.model_validate(examples["json"]["value"])
    assert work_order_12345(ticket, rules=load_rules()) == examples["12345"]["value"]
    assert any(p["name"] == "format" for p in get["parameters"])
    assert {"/open311/v2/services.{fmt}", "/open311/v2/requests.{fmt}",
            "/open311/v2/requests/{service_request_id}.{fmt}"} <= set(doc["paths"])
    assert "/v1/messages" in doc["paths"]


# --------------------------------------------------------------------------- mapping


def test_working_days_skip_weekends() -> None:
    friday = datetime(2026, 11, 27, 9, 0, tzinfo=timezone(timedelta(hours=8)))
    assert add_working_days(friday, 1).date().isoformat() == "2026-11-30"  # Monday
    assert add_working_days(friday, 5).date().isoformat() == "2026-12-04"
    assert add_working_days(friday, 0) == friday


def test_china_time() -> None:
    assert china_time(datetime(2026, 11, 23, 7, 0, tzinfo=timezone.utc)) == (
        "2026-11-23T15:00:00+08:00")
    with pytest.raises(ValueError, match="zone"):
        china_time(datetime(2026, 11, 23, 7, 0))


def test_request_mapping_of_a_closed_ticket() -> None:
    ticket = ticket_from_message(TypedMessage(title="井盖", text="门口的井盖没了"))
    req = open311_request(ticket, review_status="reviewed")
    assert list(req) == REQUEST_FIELDS and req["status"] == "closed"
    assert req["media_url"] is None

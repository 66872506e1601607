"""The ticket in the forms other systems take: Open311 GeoReport v2 and the 12345
work order (工单).

Open311 (https://wiki.open311.org/GeoReport_v2): the field lists below are the spec's,
in its order; every response carries all of them (null where minyin has nothing).
Dates are ISO 8601 in China time (+08:00). A ticket is ``open`` until a person has
approved it (review status ``reviewed``), then ``closed``.

The 12345 work order uses the field names of the provincial 12345 platforms'
work-order forms (工单编号, 来电时间, 诉求类型, 事项分类, ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any
from xml.etree import ElementTree as ET

from pipeline.ticket_schema import Ticket
from pipeline.tickets.rules import CategoryRule, TicketRules

CHINA_TIME = timezone(timedelta(hours=8), "CST")  # no daylight saving since 1991

# GET services.json: one entry per service (taxonomy leaf)
OPEN311_SERVICE_FIELDS: tuple[str, ...] = (
    "service_code", "service_name", "description", "metadata", "type", "keywords", "group")
# GET services/{code}.json
OPEN311_DEFINITION_FIELDS: tuple[str, ...] = ("service_code", "attributes")
# GET requests.json and requests/{id}.json
OPEN311_REQUEST_FIELDS: tuple[str, ...] = (
    "service_request_id", "status", "status_notes", "service_name", "service_code",
    "description", "agency_responsible", "service_notice", "requested_datetime",
    "updated_datetime", "expected_datetime", "address", "address_id", "zipcode", "lat",
    "long", "media_url")
# POST requests.json answers with a list of these
OPEN311_CREATED_FIELDS: tuple[str, ...] = ("service_request_id", "service_notice", "account_id")
# many GeoReport clients and servers cut descriptions here
OPEN311_DESCRIPTION_CHARS = 4000

CHANNELS = {"voice_note": "语音留言", "hotline": "热线电话", "message": "网络留言"}
WORK_ORDER_FIELDS: tuple[str, ...] = (
    "工单编号", "来电时间", "来源渠道", "诉求类型", "事项分类", "诉求内容", "诉求概要",
    "事发地址", "承办单位", "办理时限", "紧急程度", "是否重复", "关联工单")


def china_time(when: datetime | None) -> str | None:
    """'2026-11-23T15:00:00+08:00' (seconds; the zone always written)."""
    if when is None:
        return None
    if when.tzinfo is None:
        raise ValueError("a naive datetime has no place in an export: give its zone")
    return when.astimezone(CHINA_TIME).isoformat(timespec="seconds")


def add_working_days(start: datetime, days: int) -> datetime:
    """`days` working days after `start`, Saturdays and Sundays skipped (public
    holidays are the county's calendar, not known here). The time of day is kept."""
    when = start
    left = days
    while left > 0:
        when += timedelta(days=1)
        if when.astimezone(CHINA_TIME).weekday() < 5:
            left -= 1
    return when


def _leaf(ticket: Ticket, rules: TicketRules | None) -> CategoryRule | None:
    if rules is None:
        return None
    try:
        return rules.category(ticket.category.code)
    except KeyError:  # a code the taxonomy no longer has
        return None


def _ticket_path(ticket: Ticket, rules: TicketRules | None) -> list[str]:
    """The ticket's three levels; tickets stored before the taxonomy had levels take
    them from the taxonomy."""
    if ticket.category.path:
        return list(ticket.category.path)
    leaf = _leaf(ticket, rules)
    return list(leaf.path) if leaf is not None else [ticket.category.label]


def _time_limit(ticket: Ticket, rules: TicketRules | None) -> int | None:
    if ticket.category.time_limit_days is not None:
        return ticket.category.time_limit_days
    leaf = _leaf(ticket, rules)
    return leaf.time_limit_days if leaf is not None else None


def due_at(ticket: Ticket, rules: TicketRules | None = None) -> datetime | None:
    """When the department must have handled it: created + 办理时限 working days."""
    days = _time_limit(ticket, rules)
    return None if days is None else add_working_days(ticket.created_at, days)


# --------------------------------------------------------------------------- Open311


def open311_status(review_status: str) -> str:
    """Review status of the stored ticket -> Open311's open / closed."""
    return "closed" if review_status in ("reviewed", "approved", "closed") else "open"


def open311_service(rule: CategoryRule) -> dict[str, Any]:
    path = list(rule.path)
    keywords = list(rule.keywords)
    return {
        "service_code": rule.code,
        "service_name": rule.label,
        "description": " / ".join(path),
        "metadata": False,  # no extra attributes to fill in
        "type": "realtime",  # the ticket id comes back at once
        "keywords": ",".join(keywords),
        "group": path[0],
    }


def open311_services(rules: TicketRules) -> list[dict[str, Any]]:
    return [open311_service(rule) for rule in rules.categories]


def open311_definition(rule: CategoryRule) -> dict[str, Any]:
    return {"service_code": rule.code, "attributes": []}


def _description(ticket: Ticket) -> str:
    parts = [ticket.summary]
    if ticket.transcript.text and ticket.transcript.text not in ticket.summary:
        parts.append(ticket.transcript.text)
    return "\n".join(parts)[:OPEN311_DESCRIPTION_CHARS]


def _service_notice(days: int | None) -> str | None:
    return None if days is None else f"办理时限{days}个工作日"


def open311_request(ticket: Ticket, *, review_status: str = "new",
                    updated_at: datetime | None = None,
                    rules: TicketRules | None = None) -> dict[str, Any]:
    """One service request as GET requests.json gives it (OPEN311_REQUEST_FIELDS)."""
    requested = ticket.submitted_at or ticket.created_at
    status = open311_status(review_status)
    return {
        "service_request_id": ticket.id,
        "status": status,
        "status_notes": "已办结" if status == "closed" else None,
        "service_name": ticket.category.label,
        "service_code": ticket.category.code,
        "description": _description(ticket),
        "agency_responsible": ticket.category.department,
        "service_notice": _service_notice(_time_limit(ticket, rules)),
        "requested_datetime": china_time(requested),
        "updated_datetime": china_time(updated_at or ticket.created_at),
        "expected_datetime": china_time(due_at(ticket, rules)),
        "address": ticket.location.full_address(),
        "address_id": None,
        "zipcode": None,
        "lat": ticket.location.lat,
        "long": ticket.location.lon,
        "media_url": ticket.audio.media_url if ticket.audio else None,
    }


def open311_created(ticket: Ticket, *, account_id: str | None = None,
                    rules: TicketRules | None = None) -> dict[str, Any]:
    """POST requests.json's answer for one new request (OPEN311_CREATED_FIELDS)."""
    return {"service_request_id": ticket.id,
            "service_notice": _service_notice(_time_limit(ticket, rules)),
            "account_id": account_id}


def open311_submission(ticket: Ticket) -> dict[str, Any]:
    """The ticket as the fields a GeoReport client POSTs (Ticket.to_open311): for
    forwarding it to another Open311 server. No personal field is sent."""
    requested = ticket.submitted_at or ticket.created_at
    return {
        "service_request_id": ticket.id,
        "status": "open",
        "service_code": ticket.category.code,
        "service_name": ticket.category.label,
        "agency_responsible": ticket.category.department,
        "description": _description(ticket),
        "address_string": ticket.location.full_address(),
        "lat": ticket.location.lat,
        "long": ticket.location.lon,
        "media_url": ticket.audio.media_url if ticket.audio else None,
        "requested_datetime": requested.isoformat(timespec="seconds"),
    }


# the spec's declaration, double-quoted, UTF-8 named as it names it
_XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


def _xml_value(parent: ET.Element, key: str, value: Any) -> None:
    child = ET.SubElement(parent, key)
    if value is None:
        return
    if isinstance(value, bool):
        child.text = "true" if value else "false"
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _xml_value(child, k, v)
    elif isinstance(value, (list, tuple)):
        # Open311 XML repeats the singular: <attributes><attribute>..</attribute>
        item = key[:-1] if key.endswith("s") else "value"
        for v in value:
            _xml_value(child, item, v)
    else:
        child.text = str(value)


def open311_xml(root: str, item: str, records: Iterable[Mapping[str, Any]]) -> bytes:
    """`<root><item><field>..</field></item>..</root>` with the XML declaration
    (UTF-8), as the spec's XML format; null fields are empty elements."""
    top = ET.Element(root)
    for record in records:
        node = ET.SubElement(top, item)
        for key, value in record.items():
            _xml_value(node, key, value)
    return _XML_DECLARATION + ET.tostring(top, encoding="unicode").encode()


def open311_xml_object(root: str, record: Mapping[str, Any]) -> bytes:
    """One object as `<root><field>..</field></root>` (the service definition)."""
    top = ET.Element(root)
    for key, value in record.items():
        _xml_value(top, key, value)
    return _XML_DECLARATION + ET.tostring(top, encoding="unicode").encode()


def open311_errors(errors: Sequence[tuple[int, str]]) -> list[dict[str, Any]]:
    """The spec's error list: [{"code": 404, "description": "..."}]."""
    return [{"code": code, "description": description} for code, description in errors]


# --------------------------------------------------------------------------- 12345


def work_order_12345(ticket: Ticket, *, related: Sequence[str] = (),
                     rules: TicketRules | None = None) -> dict[str, Any]:
    """The ticket as a 12345 work order (WORK_ORDER_FIELDS). `related`: other
    tickets of the same matter (cluster members) besides duplicate_of."""
    days = _time_limit(ticket, rules)
    due = due_at(ticket, rules)
    linked = [ticket.duplicate_of] if ticket.duplicate_of else []
    linked += [t for t in related if t != ticket.id and t not in linked]
    due_date: date | None = due.astimezone(CHINA_TIME).date() if due is not None else None
    return {
        "工单编号": ticket.id,
        "来电时间": china_time(ticket.submitted_at or ticket.created_at),
        "来源渠道": CHANNELS[ticket.source],
        "诉求类型": ticket.kind,
        "事项分类": "/".join(_ticket_path(ticket, rules)),
        "诉求内容": ticket.transcript.text,
        "诉求概要": ticket.summary,
        "事发地址": ticket.location.full_address(),
        "承办单位": ticket.category.department,
        "办理时限": {"工作日": days,
                     "截止日期": due_date.isoformat() if due_date is not None else None},
        "紧急程度": "紧急" if ticket.urgency.level == "urgent" else "一般",
        "是否重复": "是" if ticket.duplicate_of else "否",
        "关联工单": linked,
    }

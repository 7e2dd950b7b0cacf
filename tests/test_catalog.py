"""Items and users: create, replace, read, delete; erasing a user erases their events."""

from __future__ import annotations

import httpx

from conftest import INGEST, OPS, READ, events, scalar

COURSE = {
    "title": "Python数据分析实战：pandas入门",
    "description": "从零开始学习 pandas",
    "categories": ["数据分析"],
    "tags": ["入门", "pandas"],
    "attributes": {"price": 199, "level": "beginner", "language": "zh"},
}


async def test_put_creates_then_replaces_item(client: httpx.AsyncClient) -> None:
    created = await client.put("/v1/items/c1", json=COURSE, headers=INGEST)
    assert created.status_code == 201
    body = created.json()
    assert body["item_id"] == "c1"
    assert body["title"] == COURSE["title"]
    assert body["available"] is True
    replaced = await client.put("/v1/items/c1", json={**COURSE, "available": False}, headers=INGEST)
    assert replaced.status_code == 200
    assert replaced.json()["available"] is False
    assert replaced.json()["created_at"] == body["created_at"]
    fetched = await client.get("/v1/items/c1", headers=READ)
    assert fetched.status_code == 200
    assert fetched.json()["attributes"] == COURSE["attributes"]


async def test_item_validation(client: httpx.AsyncClient) -> None:
    bad = await client.put(
        "/v1/items/c1", json={"categories": "not-a-list", "colour": "red"}, headers=INGEST
    )
    assert bad.status_code == 422
    fields = {e["field"] for e in bad.json()["errors"]}
    assert fields == {"categories", "colour"}
    too_long = await client.put("/v1/items/" + "c" * 129, json=COURSE, headers=INGEST)
    assert too_long.status_code == 422
    assert (await client.get("/v1/items/c1", headers=READ)).status_code == 404


async def test_batch_upsert(client: httpx.AsyncClient, database_url: str) -> None:
    items = [{"item_id": f"c{i}", **COURSE, "title": f"Course {i}"} for i in range(300)]
    response = await client.post("/v1/items/batch", json={"items": items}, headers=INGEST)
    assert response.status_code == 200
    assert response.json() == {"upserted": 300}
    items[0]["title"] = "Renamed"
    await client.post("/v1/items/batch", json={"items": items[:1]}, headers=INGEST)
    assert (await client.get("/v1/items/c0", headers=READ)).json()["title"] == "Renamed"
    assert await scalar(database_url, "SELECT count(*) FROM items") == 300
    bad = [*items[:5], {"title": "no id"}]
    response = await client.post("/v1/items/batch", json={"items": bad}, headers=INGEST)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "items[5].item_id"
    too_many = [{"item_id": f"x{i}"} for i in range(1001)]
    response = await client.post("/v1/items/batch", json={"items": too_many}, headers=INGEST)
    assert response.status_code == 422
    assert await scalar(database_url, "SELECT count(*) FROM items") == 300


async def test_delete_item_hides_it_and_put_revives(client: httpx.AsyncClient) -> None:
    await client.put("/v1/items/c1", json=COURSE, headers=INGEST)
    assert (await client.delete("/v1/items/c1", headers=INGEST)).status_code == 204
    assert (await client.get("/v1/items/c1", headers=READ)).status_code == 404
    assert (await client.delete("/v1/items/c1", headers=INGEST)).status_code == 404
    revived = await client.put("/v1/items/c1", json=COURSE, headers=INGEST)
    assert revived.status_code == 201
    assert revived.json()["available"] is True


async def test_users_profile_and_event_counts(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/users/u1", headers=READ)).status_code == 404
    created = await client.put(
        "/v1/users/u1", json={"attributes": {"city": "杭州", "goal": "转行"}}, headers=INGEST
    )
    assert created.status_code == 201
    batch = events(4, user="u1") + events(2, prefix="p", user="u1", type="purchase")
    await client.post("/v1/events", json={"events": batch}, headers=INGEST)
    user = (await client.get("/v1/users/u1", headers=READ)).json()
    assert user["attributes"] == {"city": "杭州", "goal": "转行"}
    assert user["n_events"] == 6
    assert user["event_counts"] == {"purchase": 2, "view": 4}
    updated = await client.put(
        "/v1/users/u1", json={"attributes": {"city": "上海"}}, headers=INGEST
    )
    assert updated.status_code == 200
    assert updated.json()["attributes"] == {"city": "上海"}


async def test_user_known_only_from_events(client: httpx.AsyncClient) -> None:
    await client.post("/v1/events", json={"events": events(3, user="ghost")}, headers=INGEST)
    user = (await client.get("/v1/users/ghost", headers=READ)).json()
    assert user["created_at"] is None
    assert user["n_events"] == 3


async def test_delete_user_erases_their_events(
    client: httpx.AsyncClient, database_url: str
) -> None:
    await client.put("/v1/users/u1", json={"attributes": {"a": 1}}, headers=INGEST)
    await client.post("/v1/events", json={"events": events(30, user="u1")}, headers=INGEST)
    await client.post(
        "/v1/events", json={"events": events(20, prefix="o", user="u2")}, headers=INGEST
    )
    assert (await client.delete("/v1/users/u1", headers=INGEST)).status_code == 403
    assert (await client.delete("/v1/users/u1", headers=OPS)).status_code == 204
    sql = "SELECT count(*) FROM events WHERE user_id = :u"
    assert await scalar(database_url, sql, u="u1") == 0
    assert await scalar(database_url, sql, u="u2") == 20
    assert await scalar(database_url, "SELECT count(*) FROM users") == 0
    assert (await client.get("/v1/users/u1", headers=READ)).status_code == 404
    assert (await client.delete("/v1/users/u1", headers=OPS)).status_code == 404

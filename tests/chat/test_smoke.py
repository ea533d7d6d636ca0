from tests.conftest import assert_error


def test_send_and_list_messages(api, conversation):
    url = f"/api/conversations/{conversation.id}/messages/"
    r = api.post(url, {"body": "hello"}, format="json")
    assert r.status_code == 201, r.json()
    assert r.json()["seq"] == 1
    r = api.get(url)
    assert r.status_code == 200
    assert [m["body"] for m in r.json()["results"]] == ["hello"]


def test_unauthenticated_is_401(anon):
    assert_error(anon.get("/api/me/"), 401, "not_authenticated")

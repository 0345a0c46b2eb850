"""Job retention."""

import sqlite3

from conftest import DATABASE, make_client

from cimid.http.keys import PROVIDER


async def test_finished_jobs_older_than_retention_are_purged(tmp_path):
    client = await make_client(tmp_path, {"jobs": {"retention_minutes": 5}})
    try:
        r = await client.post("machineConfigs", {"name": "x", "cpu": 1, "memory": 1})
        fresh = r.headers["CIMI-Job-URI"]
        old = (await client.post("machineConfigs", {"name": "y", "cpu": 1, "memory": 1})).headers["CIMI-Job-URI"]
        db = sqlite3.connect(client.app[DATABASE])  # age one Job by ten minutes
        db.execute("UPDATE resources SET doc = json_set(doc, '$.timeOfStatusChange', '2000-01-01T00:00:00.000Z')"
                   " WHERE id = ?", (old.rsplit("/", 1)[1],))
        db.commit()
        db.close()
        await client.app[PROVIDER].services["jobs"].purge()
        assert (await client.get(old)).status == 404
        assert (await client.get(fresh)).status == 200
        assert (await client.get("machineConfigs", params={"$filter": "name='y'"})).json["count"] == 1
    finally:
        await client.client.close()

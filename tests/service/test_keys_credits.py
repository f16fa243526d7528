"""API keys, the credit ledger and `lift3d keys`, on SQLite and PostgreSQL (the ``database`` fixture).

Every money figure is hand-computed in milli-credits (1 credit = 1 000 mc).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import threading
import uuid

import pytest
from sqlalchemy import inspect, select, text
from support import Clock

from lift3d.errors import InvalidInputError
from lift3d.params import GenerationParams
from lift3d.service.accounts import credits
from lift3d.service.accounts.credits import InsufficientCredits, estimate_credits, estimate_gpu_seconds, to_credits, to_mc
from lift3d.service.db.models import ApiKey, CreditEntry, Job
from lift3d.service.accounts.keys import ApiKeyStore, KeyNotFound, Unauthorized
from lift3d.service.schemas import ERROR_STATUS
from lift3d.service.jobs.uploads import ReconstructParams


def submit(database, key_id: str, amount_mc: int, now: float = 1_700_000_000.0) -> str:
    """What the job store's ``create`` does: reserve, then insert the job with ``reserved_mc``, one transaction."""
    job_id = uuid.uuid4().hex
    with database.transaction() as session:
        credits.reserve(session, key_id, job_id, amount_mc, now)
        session.add(Job(id=job_id, owner_id=key_id, kind="image-to-3d", status="queued", attempts=0, version=0,
                        cancel_requested=False, created_at=now, updated_at=now, reserved_mc=amount_mc,
                        charged_mc=None, record={}))
    return job_id


def ledger(database, key_id: str) -> list[tuple[str, int, int]]:
    with database.sessions() as session:
        rows = session.execute(select(CreditEntry).where(CreditEntry.key_id == key_id)
                               .order_by(CreditEntry.id)).scalars().all()
        return [(row.kind, row.amount_mc, row.balance_mc) for row in rows]


def dump_database(database) -> str:
    """Every row of every table, as text."""
    chunks = []
    with database.engine.connect() as connection:
        for table in inspect(database.engine).get_table_names():
            for row in connection.execute(text(f'SELECT * FROM "{table}"')):
                chunks.append(f"{table}: {tuple(row)!r}")
    return "\n".join(chunks)


# ------------------------------------------------------------------------------------------------ keys
def test_create_returns_the_key_once_and_stores_only_its_hash(database):
    keys = ApiKeyStore(database, clock=Clock())
    created = keys.create(name="alice", credits=100, rate_limit_per_min=30, max_concurrent_jobs=2)
    key = created.key
    assert key.startswith("sk-") and len(key) == 46  # 32 random bytes → 43 URL-safe characters
    assert created.id.startswith("key_") and len(created.id) == 20 and int(created.id[4:], 16) >= 0
    secret = created.webhook_secret
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:], validate=True)) == 24
    assert created.info.prefix == key[:11] and created.info.balance == 100.0
    assert (created.info.rate_limit_per_min, created.info.max_concurrent_jobs) == (30, 2)
    assert key not in repr(created)
    with database.sessions() as session:
        row = session.get(ApiKey, created.id)
        assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
        assert row.balance_mc == 100_000
    assert ledger(database, created.id) == [("grant", 100_000, 100_000)]
    dump = dump_database(database)
    assert created.id in dump and row.key_hash in dump  # the dump does hold the key's row ...
    assert key not in dump and key[3:] not in dump and key[3:24] not in dump  # ... but never the key
    other = keys.create()
    assert other.key != key and other.webhook_secret != secret and other.info.balance == 0.0
    assert ledger(database, other.id) == []  # no grant row for a zero balance


def test_key_never_appears_in_log_records(database, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")  # every SQL statement with its parameters
    keys = ApiKeyStore(database)
    created = keys.create(name="bob", credits=5)
    assert keys.authenticate(created.key).id == created.id
    with pytest.raises(Unauthorized):
        keys.authenticate(created.key + "x")
    messages = [record.getMessage() for record in caplog.records]
    assert any(created.id in m for m in messages)  # create was logged, by id
    assert any("api_keys" in m for m in messages)  # SQL statements were captured too
    logged = "\n".join(messages + [repr(record.args) for record in caplog.records])
    assert created.key not in logged and created.key[3:] not in logged


def test_unknown_revoked_and_expired_keys_are_unauthorized_with_one_message(database):
    clock = Clock()
    keys = ApiKeyStore(database, clock=clock)
    good = keys.create(name="exp", expires_at=clock.now + 10)
    revoked = keys.create(name="rev")
    assert keys.authenticate(good.key).name == "exp"
    keys.revoke(revoked.id)
    attempts = [revoked.key, "sk-" + "A" * 43, "not-a-key", "", None, "sk-" + "x" * 500]
    clock.now += 10  # expires_at is the first instant the key no longer works
    attempts.append(good.key)
    messages = set()
    for key in attempts:
        with pytest.raises(Unauthorized) as raised:
            keys.authenticate(key)
        messages.add(str(raised.value))
    assert messages == {"missing or invalid API key"}
    assert Unauthorized.name == "unauthorized" and ERROR_STATUS["unauthorized"] == 401


def test_last_used_at_is_written_at_most_once_a_minute(database):
    clock = Clock(1000.0)
    keys = ApiKeyStore(database, clock=clock)
    created = keys.create()
    assert keys.get(created.id).last_used_at is None
    keys.authenticate(created.key)
    clock.now = 1059.0
    keys.authenticate(created.key)
    assert keys.get(created.id).last_used_at == 1000.0
    clock.now = 1060.0
    keys.authenticate(created.key)
    assert keys.get(created.id).last_used_at == 1060.0


def test_list_get_revoke_and_add_credits(database):
    clock = Clock(500.0)
    keys = ApiKeyStore(database, clock=clock)
    first = keys.create(name="a", credits=100)
    clock.now = 600.0
    second = keys.create(name="b")
    assert [k.id for k in keys.list()] == [first.id, second.id]
    assert keys.get(first.id).created_at == 500.0
    assert keys.add_credits(first.id, 2.5).balance == 102.5
    assert ledger(database, first.id) == [("grant", 100_000, 100_000), ("grant", 2_500, 102_500)]
    clock.now = 700.0
    assert keys.revoke(second.id).revoked_at == 700.0
    clock.now = 800.0
    assert keys.revoke(second.id).revoked_at == 700.0  # the first revocation stands
    for bad in (0, -1, 0.0004, math.nan, math.inf, "ten", 2e9):
        with pytest.raises(InvalidInputError):
            keys.add_credits(first.id, bad)
    with pytest.raises(KeyNotFound):
        keys.add_credits("key_0000000000000000", 1)
    with pytest.raises(KeyNotFound):
        keys.revoke("key_0000000000000000")
    with pytest.raises(InvalidInputError):
        keys.create(credits=-1)
    with pytest.raises(InvalidInputError):
        keys.create(rate_limit_per_min=0)
    assert keys.balance(first.id) == 102.5 and len(keys.list()) == 2


# ------------------------------------------------------------------------------------------------ ledger
def test_units():
    assert to_mc(1) == 1000 and to_mc(2.5) == 2500 and to_mc(0.001) == 1 and to_mc(14.999) == 14_999
    assert to_credits(-2345) == -2.345 and to_credits(to_mc(87.655)) == 87.655


def test_reserve_settle_refund_arithmetic(database):
    keys = ApiKeyStore(database)
    key = keys.create(credits=100).id
    a = submit(database, key, to_mc(14.999))  # 100 − 14.999 = 85.001
    with database.transaction() as session:
        done = credits.settle(session, a, to_mc(12.345), 1.0)  # + (14.999 − 12.345) = 87.655
    assert (done.key_id, done.job_id, done.charged_mc, done.balance_mc) == (key, a, 12_345, 87_655)
    b = submit(database, key, to_mc(30))  # 57.655
    with database.transaction() as session:
        assert credits.refund(session, b, 2.0).charged_mc == 0  # + 30 = 87.655
    c = submit(database, key, to_mc(80))  # 7.655
    with database.transaction() as session:  # cost 90 against 80 reserved: −10 → −2.345 (below zero by 10 only)
        assert credits.settle(session, c, to_mc(90), 3.0).balance_mc == -2_345
        assert credits.balance_credits(session, key) == -2.345
    with pytest.raises(InsufficientCredits) as raised:
        submit(database, key, to_mc(1))
    assert str(raised.value) == ("this request costs 1.000 credits and the balance is -2.345 credits; add credits "
                                 "and retry")
    assert ERROR_STATUS[raised.value.name] == 402
    assert ledger(database, key) == [
        ("grant", 100_000, 100_000), ("reserve", -14_999, 85_001), ("settle", 2_654, 87_655),
        ("reserve", -30_000, 57_655), ("refund", 30_000, 87_655), ("reserve", -80_000, 7_655),
        ("settle", -10_000, -2_345)]
    with database.sessions() as session:
        charged = dict(session.execute(select(Job.id, Job.charged_mc)).all())
    assert charged == {a: 12_345, b: 0, c: 90_000}  # the refused submit left no job


def test_settle_twice_is_settle_once(database):
    keys = ApiKeyStore(database)
    key = keys.create(credits=50).id
    job = submit(database, key, to_mc(20))  # 30
    with database.transaction() as session:
        assert credits.settle(session, job, to_mc(5), 1.0).balance_mc == 45_000  # + 15
    with database.transaction() as session:
        assert credits.settle(session, job, to_mc(1), 2.0) is None
        assert credits.refund(session, job, 2.0) is None
    assert keys.balance(key) == 45.0
    assert [kind for kind, _, _ in ledger(database, key)] == ["grant", "reserve", "settle"]


def test_reserve_errors(database):
    keys = ApiKeyStore(database)
    key = keys.create(credits=1).id
    with database.transaction() as session:
        with pytest.raises(ValueError):
            credits.reserve(session, key, "j" * 32, 0, 1.0)
        with pytest.raises(LookupError):
            credits.reserve(session, "key_0000000000000000", "j" * 32, 1, 1.0)
        with pytest.raises(ValueError):
            credits.settle(session, "j" * 32, -1, 1.0)
    assert keys.balance(key) == 1.0


def _race(n: int, work) -> list:
    """Run ``work(i)`` in ``n`` threads released together; their results (or exceptions) in order."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # noqa: BLE001 - collected for the assertions
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_concurrent_submits_racing_for_the_last_credits_never_overdraw(database):
    keys = ApiKeyStore(database)
    key = keys.create(credits=100).id
    results = _race(8, lambda i: submit(database, key, to_mc(30)))
    accepted = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, InsufficientCredits)]
    assert (len(accepted), len(refused)) == (3, 5), results
    assert keys.balance(key) == 10.0
    entries = ledger(database, key)
    assert [e for e in entries if e[0] == "reserve"] == [("reserve", -30_000, 70_000), ("reserve", -30_000, 40_000),
                                                         ("reserve", -30_000, 10_000)]


def test_concurrent_settles_of_one_job_take_effect_once(database):
    keys = ApiKeyStore(database)
    key = keys.create(credits=100).id
    job = submit(database, key, to_mc(40))  # 60

    def finish(i: int):
        with database.transaction() as session:
            if i % 2:
                return credits.refund(session, job, 1.0)
            return credits.settle(session, job, to_mc(25), 1.0)

    results = _race(6, finish)
    assert not [r for r in results if isinstance(r, Exception)], results
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    expected = 75_000 if winners[0].charged_mc == 25_000 else 100_000  # settled: 60 + 15; refunded: 60 + 40
    assert to_mc(keys.balance(key)) == expected == winners[0].balance_mc
    assert len(ledger(database, key)) == 3


# ------------------------------------------------------------------------------------------------ price
def test_estimate_credits_by_hand():
    defaults = GenerationParams()
    # (0.5 + 400 × 0.025) + 600 × 0.175 + 600 × 0.45 + (10 + 5 × 1.048576) = 400.74288 GPU-s
    assert sum(estimate_gpu_seconds("image-to-3d", defaults, "default").values()) == pytest.approx(400.74288)
    # 400.74288 × 1.006 / 3600 / 0.01 × 1.25 = 13.99817 → rounded up to the milli-credit
    assert estimate_credits("image-to-3d", defaults, "default", 1.006) == 13.999
    # + SDXL: 2 + 30 × 0.45 = 15.5 GPU-s → 416.24288 × 1.006 / 36 × 1.25 = 14.53960
    assert estimate_credits("text-to-3d", GenerationParams(prompt="a robot"), "default", 1.006) == 14.540
    # views only: 10.5 GPU-s → 0.36677
    assert estimate_credits("multiview", defaults, "default", 1.006) == 0.367
    assert estimate_credits("image-to-3d", GenerationParams(return_3d=False), "default", 1.006) == 0.367
    # views-to-3d, steps omitted (the preset's 800): 5 + 800 × 0.005 + 10 + 5 × 1.048576 = 24.24288 GPU-s → 0.84682
    assert estimate_credits("views-to-3d", ReconstructParams(), "default", 1.006) == 0.847
    # 200 steps: 5 + 1 + 10 + 5.24288 = 21.24288 GPU-s → 0.74203; tiny, steps omitted (400), no texture:
    # 1.85 + 400 × 0.0275 + 13.5 = 26.35 GPU-s → 0.92041
    assert estimate_credits("views-to-3d", ReconstructParams(steps=200), "default", 1.006) == 0.743
    assert estimate_credits("views-to-3d", ReconstructParams(texture=False), "tiny", 1.006) == 0.921
    # tiny, 4 views, 100 SDS steps, no texture: 4 × 50 × 0.0035 + 100 × 0.0125 + 2.7 + 100 × 0.11 + 2.75 = 18.4
    # GPU-s, at US$2/GPU-hour and US$0.001 per credit: 18.4 × 2 / 3600 / 0.001 × 1.25 = 12.7778
    small = GenerationParams(num_views=4, num_3d_max_steps=100, texture=False)
    assert estimate_credits("image-to-3d", small, "tiny", 2.0, usd_per_credit=0.001) == 12.778
    assert estimate_credits("image-to-3d", defaults, "default", 0.0) == 0.0
    with pytest.raises(ValueError, match="preset"):
        estimate_credits("image-to-3d", defaults, "huge", 1.0)
    with pytest.raises(ValueError, match="kind"):
        estimate_credits("audio-to-3d", defaults, "default", 1.0)
    with pytest.raises(ValueError):
        estimate_credits("image-to-3d", defaults, "default", 1.0, usd_per_credit=0)


def test_default_sds_steps_match_the_presets():
    from lift3d.presets import PRESETS

    assert credits.DEFAULT_SDS_STEPS == {name: p.nerf.training.max_steps for name, p in PRESETS.items()}
    assert credits.DEFAULT_REFINE_STEPS == {name: p.fast.refine_steps for name, p in PRESETS.items()}
    assert credits.DEFAULT_RECONSTRUCT_STEPS == {name: p.reconstruction.max_steps for name, p in PRESETS.items()}
    assert set(credits.GPU_SECONDS) == set(PRESETS)


# ------------------------------------------------------------------------------------------------ CLI
@pytest.fixture
def cli_database(tmp_path, monkeypatch):
    """A SQLite file, also set as LIFT3D_DATABASE_URL (the default of every `keys` command)."""
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    monkeypatch.setenv("LIFT3D_DATABASE_URL", url)
    return url


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    from lift3d.cli.main import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_create_list_add_credits_revoke(cli_database, capsys):
    from lift3d.service.db import Database

    code, out, err = run_cli(capsys, "keys", "create", "--name", "ci", "--credits", "12.5", "--rate-limit", "30",
                             "--json")
    assert code == 0, err
    created = json.loads(out.strip().splitlines()[-1])
    assert created["key"].startswith("sk-") and created["webhook_secret"].startswith("whsec_")
    assert (created["name"], created["credits"], created["rate_limit_per_min"]) == ("ci", 12.5, 30)
    assert created["max_concurrent_jobs"] is None and created["id"].startswith("key_")

    database = Database(cli_database)
    keys = ApiKeyStore(database)
    assert keys.authenticate(created["key"]).id == created["id"]

    code, out, _ = run_cli(capsys, "keys", "list", "--database-url", cli_database)
    assert code == 0 and created["id"] in out and created["key"][:11] in out and "12.500" in out
    assert created["key"] not in out and created["webhook_secret"] not in out
    code, out, _ = run_cli(capsys, "keys", "list", "--json")
    listed = json.loads(out)
    assert [k["id"] for k in listed] == [created["id"]] and listed[0]["credits"] == 12.5
    assert created["key"] not in out and created["webhook_secret"] not in out

    code, out, _ = run_cli(capsys, "keys", "add-credits", created["id"], "7.25")
    assert code == 0 and keys.balance(created["id"]) == 19.75  # 12.5 + 7.25

    code, out, _ = run_cli(capsys, "keys", "revoke", created["id"])
    assert code == 0 and "Revoked" in out
    with pytest.raises(Unauthorized):
        keys.authenticate(created["key"])
    database.dispose()


def test_cli_create_prints_the_key_in_text_mode(cli_database, capsys):
    code, out, _ = run_cli(capsys, "keys", "create", "--credits", "3")
    assert code == 0
    line = next(line for line in out.splitlines() if line.strip().startswith("key:"))
    key = line.split()[-1]
    from lift3d.service.db import Database

    database = Database(cli_database)
    assert ApiKeyStore(database).authenticate(key).balance == 3.0
    database.dispose()


def test_cli_errors_are_one_line_with_a_status(cli_database, capsys):
    code, out, err = run_cli(capsys, "keys", "add-credits", "key_0000000000000000", "5")
    assert code == 1 and err == "lift3d: error: no API key with id 'key_0000000000000000'\n" and out == ""
    code, out, err = run_cli(capsys, "keys", "revoke", "key_0000000000000000")
    assert code == 1 and len(err.splitlines()) == 1
    code, out, _ = run_cli(capsys, "keys", "create", "--json")
    key_id = json.loads(out.splitlines()[-1])["id"]
    code, out, err = run_cli(capsys, "keys", "add-credits", key_id, "0.0001")  # a bad value: status 2
    assert code == 2 and err == "lift3d: error: credits: must be at least 0.001, got 0.0001\n"
    code, out, err = run_cli(capsys, "keys", "add-credits", key_id, "0")
    assert code == 2 and len(err.splitlines()) == 1

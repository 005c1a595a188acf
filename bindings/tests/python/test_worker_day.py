"""A family link worker's day through the generated Python bindings, against
the real library and a real linkbook-server.

Run by tests/tests/bindings.rs, which generates `linkbook_ffi.py` next to the
built library, starts the relay, enrols a colleague's device that wrote a
note, and passes (environment):
  LB_DATA             a directory for this test's device stores
  LB_SERVER_URL       the relay (https://127.0.0.1:PORT)
  LB_CA_PEM           path of the relay's development CA
  LB_CODES            comma-separated enrolment codes for this team
  LB_SERVER_BIN, LB_SERVER_DATA  to revoke a device as the office would
  LB_COLLEAGUE_FAMILY, LB_COLLEAGUE_NOTE  what the colleague wrote
  LB_RESULT           file to write `family note-text` into, for the harness
"""

import os
import re
import subprocess
import threading
import uuid

import pytest

import linkbook_ffi as lb


def env(name):
    value = os.environ.get(name)
    if value is None:
        pytest.fail(f"{name} is not set: run this through `cargo test --test bindings`")
    return value


@pytest.fixture(scope="module")
def relay():
    codes = env("LB_CODES").split(",")
    with open(env("LB_CA_PEM")) as f:
        ca = f.read()
    return {"url": env("LB_SERVER_URL"), "ca": ca, "codes": codes}


def store_path(name=None):
    return os.path.join(env("LB_DATA"), f"{name or uuid.uuid4().hex}.db")


def new_repo(name=None):
    return lb.Repo(store_path(name), lb.generate_database_key())


def enrolled(relay, name):
    repo = new_repo(name)
    enrolment = repo.enrol(relay["url"], relay["codes"].pop(), relay["ca"], device_name=name)
    assert enrolment.team == "north"
    return repo


def test_an_offline_day_is_recorded_and_kept():
    path = store_path("offline")
    key = lb.generate_database_key()
    assert isinstance(key, bytes) and len(key) == 32
    repo = lb.Repo(path, key)
    family = repo.add_family("Nowak", address="3 Canal Street")
    repo.add_member(family, lb.NewMember(name="Zofia", role=lb.MemberRole.CHILD, date_of_birth="2014-02-28"))
    repo.link_prisoner(family, lb.NewPrisoner(name="Piotr Nowak", establishment="HMP Example", custody=lb.Custody.REMAND))
    note = repo.add_note(family, "School run chat: Zofia worried about dad's court date", lb.NoteCategory.SCHOOL)
    notes = repo.notes(family)
    assert [n.text for n in notes] == ["School run chat: Zofia worried about dad's court date"]
    assert notes[0].id == note and notes[0].category == lb.NoteCategory.SCHOOL
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", notes[0].created_at)
    assert repo.family(family).members[0].date_of_birth == "2014-02-28"
    [summary] = repo.families()
    assert (summary.id, summary.name, summary.notes, summary.members) == (family, "Nowak", 1, 1)
    [hit] = repo.search("court")
    assert hit.family_id == family and "[court]" in hit.snippet

    day = repo.create_family_day("HMP Example", "2026-12-05", capacity=40)
    attendance = repo.check_in(day, family, 1, 2)
    assert (attendance.adults, attendance.children) == (1, 2)
    assert [a.family_id for a in repo.attendance(day)] == [family]

    repo.edit_note(family, note, "School run chat: Zofia anxious about the court date")
    [edited] = repo.notes(family)
    assert [r.text for r in edited.history] == ["School run chat: Zofia worried about dad's court date"]

    del repo  # closes the store
    again = lb.Repo(path, key)
    assert [n.text for n in again.notes(family)] == ["School run chat: Zofia anxious about the court date"]
    assert again.family_day(day).capacity == 40


def test_sync_from_a_worker_thread_brings_a_colleagues_note_and_takes_ours(relay):
    repo = enrolled(relay, "python-phone")
    family = repo.add_family("Haddad")
    text = "Python helpline call: mum asked about the family day"
    repo.add_note(family, text, lb.NoteCategory.HELPLINE)

    class Progress(lb.SyncListener):
        def __init__(self):
            self.reports, self.threads = [], set()

        def on_progress(self, progress):
            self.reports.append(progress)
            self.threads.add(threading.get_ident())

    progress, out = Progress(), {}
    worker = threading.Thread(target=lambda: out.update(summary=repo.sync(progress)))
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "sync did not finish"
    summary = out["summary"]
    assert summary.documents_sent >= 2, summary
    assert progress.reports and progress.threads == {worker.ident}
    assert progress.reports[-1].documents_done == progress.reports[-1].documents_total

    colleague_family = env("LB_COLLEAGUE_FAMILY")
    assert env("LB_COLLEAGUE_NOTE") in [n.text for n in repo.notes(colleague_family)]
    assert colleague_family in [f.id for f in repo.families()]
    with open(env("LB_RESULT"), "w") as f:
        f.write(f"{family} {text}")


def test_concurrent_edits_show_as_a_conflict_until_resolved(relay):
    a, b = enrolled(relay, "python-a"), enrolled(relay, "python-b")
    family = a.add_family("Brown")
    a.sync()
    b.sync()
    a.update_family(family, lb.FamilyUpdate(name="Browne"))
    b.update_family(family, lb.FamilyUpdate(name="Brown-Lee"))
    a.sync(), b.sync(), a.sync()
    [conflict] = [c for c in a.conflicts() if c.document_id == family]
    assert sorted(v.value_json for v in conflict.values) == ['"Brown-Lee"', '"Browne"']
    assert len({v.device for v in conflict.values}) == 2
    # Each value names who wrote it and when (docs/adr/0007).
    by_value = {v.value_json: v for v in conflict.values}
    assert by_value['"Browne"'].worker == a.profile().worker
    assert by_value['"Brown-Lee"'].worker == b.profile().worker
    assert by_value['"Browne"'].device == a.profile().device_id
    for v in conflict.values:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", v.time), v
    a.resolve_conflict(family, conflict.path, '"Brown-Lee"')
    assert not [c for c in a.conflicts() if c.document_id == family]
    a.sync(), b.sync()
    assert b.family(family).name == "Brown-Lee"
    assert not [c for c in b.conflicts() if c.document_id == family]


def test_every_error_is_a_typed_value(relay):
    repo = new_repo()
    family = repo.add_family("Evans")
    cases = [
        (lb.LinkbookError.InvalidInput, lambda: repo.add_note(family, "", lb.NoteCategory.OTHER)),
        (lb.LinkbookError.InvalidInput, lambda: repo.notes("not-an-id")),
        (lb.LinkbookError.InvalidInput, lambda: repo.add_member(family, lb.NewMember(name="X", role=lb.MemberRole.CHILD, date_of_birth="2999-01-01"))),
        (lb.LinkbookError.InvalidInput, lambda: repo.resolve_conflict(family, "household/name", "{not json")),
        (lb.LinkbookError.InvalidInput, lambda: lb.Repo(store_path(), b"short")),
        (lb.LinkbookError.NotFound, lambda: repo.notes(new_repo().add_family("elsewhere"))),
        (lb.LinkbookError.WrongKey, lambda: lb.Repo(store_path("wrong-key"), lb.generate_database_key())),
        (lb.LinkbookError.Unauthorized, lambda: repo.sync()),
        (lb.LinkbookError.Unauthorized, lambda: repo.enrol(relay["url"], "ABCD-EFGH-JKMN", relay["ca"])),
        (lb.LinkbookError.Network, lambda: repo.enrol("https://127.0.0.1:9", "ABCD-EFGH-JKMN", relay["ca"])),
        (lb.LinkbookError.Storage, lambda: lb.Repo(os.path.join(env("LB_DATA"), "no-such-dir", "x.db"), lb.generate_database_key())),
    ]
    lb.Repo(store_path("wrong-key"), lb.generate_database_key())  # the store the wrong key is tried on
    for expected, call in cases:
        with pytest.raises(expected) as caught:
            call()
        assert isinstance(caught.value, lb.LinkbookError)
    invalid = pytest.raises(lb.LinkbookError.InvalidInput, repo.notes, "not-an-id").value
    assert (invalid.field, bool(invalid.reason)) == ("family id", True)
    assert [n.text for n in repo.notes(family)] == []  # nothing half-written

    tablet = enrolled(relay, "python-revoked")
    device = tablet.enrolment().device_id
    subprocess.run([env("LB_SERVER_BIN"), "--data", env("LB_SERVER_DATA"), "device", "revoke", device], check=True, capture_output=True)
    with pytest.raises(lb.LinkbookError.Revoked):
        tablet.sync()

    # The office's offline lease: 0 days locks the records right after a sync.
    def admin(*args):
        subprocess.run([env("LB_SERVER_BIN"), "--data", env("LB_SERVER_DATA"), *args], check=True, capture_output=True)

    locked = enrolled(relay, "python-locked")
    admin("team", "policy", "--team", "north", "--lease-days", "0")
    try:
        locked.sync()
        with pytest.raises(lb.LinkbookError.Locked) as caught:
            locked.families()
        assert caught.value.days == 0
    finally:
        admin("team", "policy", "--team", "north", "--lease-days", "off")
    locked.sync()
    locked.families()


def test_a_throwing_listener_does_not_break_sync(relay):
    repo = enrolled(relay, "python-listener")

    class Broken(lb.SyncListener):
        def on_progress(self, progress):
            raise RuntimeError("progress bar bug")

    summary = repo.sync(Broken())
    assert summary.documents_total >= 1


def test_garbage_from_the_app_is_an_error_value_never_a_crash():
    """Every call with hostile strings and numbers either works or raises a
    LinkbookError: no Rust panic (uniffi's InternalError) crosses over."""
    import random

    rng = random.Random(4)
    repo = new_repo()
    family = repo.add_family("Garbage")
    day = repo.create_family_day("HMP Example", "2026-12-05")
    nasty = ["", " ", "\0", "\0" * 3, "x" * 100_000, "💥" * 500, "'; DROP TABLE notes; --",
             "NEAR(", "\"", "*", "AND OR NOT", "2026-02-30", "9999-99-99", "-1", "null", "{}",
             "automerge:" + family, family, family[:-1], family + "x", day, "1" * 28]
    numbers = [0, 1, 2**31, 2**32 - 1]

    def s():
        return rng.choice(nasty)

    calls = [
        lambda: repo.add_family(s(), address=s(), key_worker=s()),
        lambda: repo.update_family(rng.choice([family, s()]), lb.FamilyUpdate(name=s())),
        lambda: repo.family(s()),
        lambda: repo.notes(s()),
        lambda: repo.add_note(rng.choice([family, s()]), s(), lb.NoteCategory.OTHER),
        lambda: repo.edit_note(family, s(), s()),
        lambda: repo.search(s()),
        lambda: repo.add_member(family, lb.NewMember(name=s(), role=lb.MemberRole.ADULT, date_of_birth=s())),
        lambda: repo.update_member(family, s(), lb.MemberUpdate(name=s(), date_of_birth=s())),
        lambda: repo.remove_member(family, s()),
        lambda: repo.link_prisoner(family, lb.NewPrisoner(name=s(), establishment=s(), custody=lb.Custody.REMAND, expected_release=s())),
        lambda: repo.record_consent(family, lb.Consent(given_by=s(), date=s(), scope=s())),
        lambda: repo.raise_safeguarding_flag(family, s()),
        lambda: repo.clear_safeguarding_flag(family, s()),
        lambda: repo.add_referral(family, lb.NewReferral(agency=s(), reason=s(), date=s())),
        lambda: repo.set_referral_outcome(family, s(), s()),
        lambda: repo.close_family(rng.choice([family, s()]), s(), s()),
        lambda: repo.create_family_day(s(), s(), capacity=rng.choice(numbers)),
        lambda: repo.check_in(rng.choice([day, s()]), rng.choice([family, s()]), rng.choice(numbers), rng.choice(numbers)),
        lambda: repo.book(rng.choice([day, s()]), rng.choice([family, s()]), rng.choice(numbers), rng.choice(numbers)),
        lambda: repo.attendance(s()),
        lambda: repo.family_day(s()),
        lambda: repo.resolve_conflict(rng.choice([family, s()]), s(), s()),
        lambda: repo.set_worker(s()),
        lambda: repo.enrol(s(), s(), s()),
        lambda: lb.Repo(os.path.join(env("LB_DATA"), s()), lb.generate_database_key()),
    ]
    outcomes = {"ok": 0, "error": 0}
    for _ in range(600):
        try:
            rng.choice(calls)()
            outcomes["ok"] += 1
        except lb.LinkbookError:
            outcomes["error"] += 1
    assert outcomes["error"] > 100 and outcomes["ok"] > 10, outcomes
    # The store is still whole and usable.
    assert repo.family(family).id == family
    assert repo.add_note(family, "still fine", lb.NoteCategory.OTHER)

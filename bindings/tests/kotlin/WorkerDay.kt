// A family link worker's day, through the generated Kotlin bindings against
// the real library and a real linkbook-server, as an Android app would do
// it: every Linkbook call runs on Dispatchers.IO while the main thread stays
// free. Run by tests/tests/bindings.rs, which starts the relay, enrols a
// colleague's device that wrote a note, and passes (environment):
//   LB_DATA             a directory for this program's device stores
//   LB_SERVER_URL       the relay (https://127.0.0.1:PORT)
//   LB_CA_PEM           path of the relay's development CA
//   LB_CODE, LB_CODE_2  enrolment codes for two devices of the team
//   LB_SERVER_BIN, LB_SERVER_DATA  to revoke a device as the office would
//   LB_COLLEAGUE_FAMILY, LB_COLLEAGUE_NOTE  what the colleague wrote
// Prints `RESULT family=<id> note=<text> day=<id>` for the harness to
// check on the colleague's device; any failed check exits non-zero.
package org.linkbook.test

import java.io.File
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicLong
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.delay
import kotlinx.coroutines.isActive
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withContext
import org.linkbook.ffi.*

fun env(name: String): String =
    System.getenv(name) ?: error("$name is not set: run this through `cargo test --test bindings`")

fun check(condition: Boolean, what: () -> String) {
    if (!condition) throw AssertionError(what())
}

inline fun <reified E : LinkbookException> expectError(what: String, block: () -> Unit): E {
    try {
        block()
    } catch (e: LinkbookException) {
        check(e is E) { "$what: expected ${E::class.simpleName}, got ${e::class.simpleName}: ${e.message}" }
        println("error ok: $what -> ${e::class.simpleName}(${e.message})")
        return e as E
    }
    throw AssertionError("$what: expected ${E::class.simpleName}, but the call succeeded")
}

/** Runs a linkbook-server admin command, as the office would. */
fun admin(vararg args: String) {
    val p = ProcessBuilder(env("LB_SERVER_BIN"), "--data", env("LB_SERVER_DATA"), *args)
        .redirectErrorStream(true).start()
    val out = p.inputStream.bufferedReader().readText()
    check(p.waitFor() == 0) { "linkbook-server ${args.toList()} failed: $out" }
}

/** Counts main-thread heartbeats; lets the sync thread wait for one. */
class Heartbeat {
    val ticks = AtomicLong()

    /** True once the main thread ticked after this call (i.e. it is not blocked). */
    fun mainThreadTicks(timeoutMs: Long = 10_000): Boolean {
        val start = ticks.get()
        val deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs)
        while (System.nanoTime() < deadline) {
            if (ticks.get() > start + 1) return true
            Thread.sleep(1)
        }
        return false
    }
}

class Progress(private val heartbeat: Heartbeat) : SyncListener {
    val reports = CopyOnWriteArrayList<SyncProgress>()
    val threads = CopyOnWriteArrayList<String>()
    @Volatile var mainThreadFreeDuringSync = false

    override fun onProgress(progress: SyncProgress) {
        threads.add(Thread.currentThread().name)
        if (reports.isEmpty()) {
            // Mid-sync: the main thread must still be running its loop.
            mainThreadFreeDuringSync = heartbeat.mainThreadTicks()
        }
        reports.add(progress)
    }
}

class BrokenListener : SyncListener {
    override fun onProgress(progress: SyncProgress) {
        throw IllegalStateException("a progress bar bug")
    }
}

fun main() = runBlocking {
    val mainThread = Thread.currentThread().name
    val heartbeat = Heartbeat()
    val ticker = launch {
        while (isActive) {
            heartbeat.ticks.incrementAndGet()
            delay(2)
        }
    }
    val result = withContext(Dispatchers.IO) {
        check(Thread.currentThread().name != mainThread) { "IO work ran on the main thread" }
        workerDay(heartbeat, mainThread)
    }
    ticker.cancel()
    println(result)
}

fun workerDay(heartbeat: Heartbeat, mainThread: String): String {
    val data = File(env("LB_DATA"))
    val serverUrl = env("LB_SERVER_URL")
    val caPem = File(env("LB_CA_PEM")).readText()
    val colleagueFamily = env("LB_COLLEAGUE_FAMILY")
    val colleagueNote = env("LB_COLLEAGUE_NOTE")

    val key = generateDatabaseKey()
    check(key.size == 32) { "key of ${key.size} bytes" }
    val path = File(data, "kotlin-device.db").path

    // ----- offline, in the prison -----
    val repo = Repo(path, key)
    val family = repo.addFamily("Okafor", address = "12 Mill Lane")
    val child = repo.addMember(
        family,
        NewMember(name = "Ada", role = MemberRole.CHILD, relationship = "daughter", dateOfBirth = "2016-05-04", school = "St Anne's"),
    )
    repo.linkPrisoner(family, NewPrisoner(name = "Chidi Okafor", establishment = "HMP Example", custody = Custody.SENTENCED, prisonNumber = "A1234BC"))
    val noteText = "Kotlin visit: Ada drew a card for her dad, staff kind"
    val noteId = repo.addNote(family, noteText, NoteCategory.VISIT)
    repo.addNote(family, "Phoned mum about the visiting order", NoteCategory.PHONE_CALL)
    val notes = repo.notes(family)
    check(notes.map { it.text } == listOf(noteText, "Phoned mum about the visiting order")) { "notes: $notes" }
    check(notes[0].id == noteId && notes[0].category == NoteCategory.VISIT) { "first note: ${notes[0]}" }
    check(Regex("""\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z""").matches(notes[0].createdAt)) { "createdAt ${notes[0].createdAt}" }
    val fam = repo.family(family)
    check(fam.members.single().id == child && fam.members.single().dateOfBirth == "2016-05-04") { "members: ${fam.members}" }
    check(fam.prisoners.single().custody == Custody.SENTENCED) { "prisoners: ${fam.prisoners}" }
    check(repo.families().any { it.id == family && it.notes == 2u }) { "caseload: ${repo.families()}" }
    val hits = repo.search("card")
    check(hits.size == 1 && hits[0].familyId == family && hits[0].snippet.contains("[card]")) { "search: $hits" }

    val day = repo.createFamilyDay("HMP Example", "2026-12-05")
    val attendance = repo.checkIn(day, family, 2u, 3u)
    check(attendance.adults == 2u && attendance.children == 3u) { "check-in: $attendance" }
    check(repo.attendance(day).single().familyId == family) { "attendance: ${repo.attendance(day)}" }

    // ----- back at the office: enrol and sync, on this (IO) thread -----
    val enrolment = repo.enrol(serverUrl, env("LB_CODE"), caPem)
    check(enrolment.team == "north") { "enrolment: $enrolment" }
    check(repo.enrolment()?.deviceId == enrolment.deviceId) { "stored enrolment" }
    val progress = Progress(heartbeat)
    val summary = repo.sync(progress)
    println("sync: $summary; ${progress.reports.size} progress reports")
    check(summary.documentsSent >= 2u) { "sent: $summary" }
    check(progress.reports.isNotEmpty()) { "no progress reported" }
    check(progress.threads.none { it == mainThread }) { "progress on the main thread: ${progress.threads}" }
    check(progress.mainThreadFreeDuringSync) { "the main thread did not run while sync ran" }

    // A colleague's note, written on another device, is here now.
    check(repo.notes(colleagueFamily).any { it.text == colleagueNote }) { "colleague's note missing: ${repo.notes(colleagueFamily)}" }
    check(repo.families().any { it.id == colleagueFamily }) { "colleague's family not in the caseload" }

    // ----- a second tablet: concurrent edits become a conflict -----
    val tablet = Repo(File(data, "kotlin-tablet.db").path, generateDatabaseKey())
    tablet.enrol(serverUrl, env("LB_CODE_2"), caPem, deviceName = "family day tablet")
    tablet.sync(BrokenListener()) // a listener that throws does not stop a sync
    check(tablet.notes(family).size == 2) { "tablet did not get the family" }
    repo.updateFamily(family, FamilyUpdate(name = "Okafor-Reid"))
    tablet.updateFamily(family, FamilyUpdate(name = "Okafor Reid"))
    repo.sync(null)
    tablet.sync(null)
    repo.sync(null)
    val conflict = repo.conflicts().single { it.documentId == family }
    check(conflict.values.map { it.valueJson }.toSet() == setOf("\"Okafor-Reid\"", "\"Okafor Reid\"")) { "conflict: $conflict" }
    check(conflict.values.map { it.device }.toSet().size == 2) { "conflict devices: $conflict" }
    repo.resolveConflict(family, conflict.path, "\"Okafor-Reid\"")
    check(repo.conflicts().none { it.documentId == family }) { "conflict not resolved" }
    check(repo.family(family).name == "Okafor-Reid") { "resolved name" }
    repo.sync(null)

    // ----- every error an app acts on -----
    expectError<LinkbookException.InvalidInput>("empty note") { repo.addNote(family, "  ", NoteCategory.OTHER) }
    val bad = expectError<LinkbookException.InvalidInput>("malformed family id") { repo.notes("not-an-id") }
    check(bad.field == "family id") { "field ${bad.field}" }
    expectError<LinkbookException.InvalidInput>("date of birth in the future") {
        repo.addMember(family, NewMember(name = "Baby", role = MemberRole.CHILD, dateOfBirth = "2999-01-01"))
    }
    expectError<LinkbookException.InvalidInput>("malformed date") { repo.createFamilyDay("HMP Example", "05/12/2026") }
    expectError<LinkbookException.InvalidInput>("short key") { Repo(File(data, "short.db").path, ByteArray(16)) }
    val stranger = Repo(File(data, "stranger.db").path, generateDatabaseKey())
    val elsewhere = stranger.addFamily("Not on this device")
    expectError<LinkbookException.NotFound>("family of another device") { repo.notes(elsewhere) }
    expectError<LinkbookException.WrongKey>("wrong key") { Repo(path, generateDatabaseKey()) }
    expectError<LinkbookException.Unauthorized>("sync before enrolling") { stranger.sync(null) }
    expectError<LinkbookException.Unauthorized>("made-up code") { stranger.enrol(serverUrl, "ABCD-EFGH-JKMN", caPem) }
    expectError<LinkbookException.Network>("no relay there") { stranger.enrol("https://127.0.0.1:9", "ABCD-EFGH-JKMN", caPem) }
    expectError<LinkbookException.Storage>("unopenable path") { Repo(File(data, "missing-dir/x.db").path, generateDatabaseKey()) }
    admin("device", "revoke", tablet.enrolment()!!.deviceId)
    expectError<LinkbookException.Revoked>("revoked tablet syncs") { tablet.sync(null) }
    // The office's offline lease: 0 days locks the records right after a sync.
    admin("team", "policy", "--team", "north", "--lease-days", "0")
    repo.sync()
    val locked = expectError<LinkbookException.Locked>("offline lease ran out") { repo.families() }
    check(locked.days == 0L) { "lease ${locked.days}" }
    admin("team", "policy", "--team", "north", "--lease-days", "off")
    repo.sync()
    check(repo.families().isNotEmpty()) { "still locked after the lease was lifted" }
    stranger.close()
    tablet.close()

    // ----- close, reopen: everything is still there -----
    repo.close()
    Repo(path, key).use { again ->
        check(again.notes(family).size == 2) { "notes after reopening" }
        check(again.enrolment() != null) { "enrolment after reopening" }
    }
    return "RESULT family=$family day=$day note=$noteText"
}

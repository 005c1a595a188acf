// A JavaScript automerge-repo device (unmodified @automerge/automerge-repo 2.x
// with WebSocketClientAdapter) for Linkbook's conformance test.
//
//   node client.mjs --url wss://127.0.0.1:PORT/v1/sync?token=TOKEN [--peer-id DEVICE_ID] \
//        --doc automerge:ID [--add-note TEXT --note-id UUID --author NAME]
//   node client.mjs --enrol https://127.0.0.1:PORT --code CODE \
//        --doc automerge:ID [--day automerge:ID --book FAMILY_ID]
//
// The second form is a stock app (README, "A JavaScript app"): it enrols
// with the one-time code (POST /v1/enrol), opens the sync URL with the token
// it got and keeps automerge-repo's own random peer id; it prints
// `ENROLLED <device id> PEER <peer id>`. Without --peer-id the first form
// keeps the random peer id too.
//
// Prints `NOTES <json array of note texts>` once the document is found, then,
// with --add-note, `ADDED <note id>` after the change is made; with --day,
// `DAY <json>` (the capacity and the first booking's counts, their JavaScript
// types and arithmetic on them) and, with --book, `BOOKED <family id>` after
// booking that family (adults: capacity - 8, children: the first booking's
// children + 1). It stays
// connected (so the change reaches the relay) until its stdin closes. Prints
// `UNAVAILABLE` and exits 3 if the document cannot be had. Trust for the
// relay's development certificate comes from NODE_EXTRA_CA_CERTS.
import { ImmutableString } from "@automerge/automerge"
import { Repo } from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"

const args = {}
for (let i = 2; i < process.argv.length; i += 2) {
  args[process.argv[i].replace(/^--/, "")] = process.argv[i + 1]
}
for (const required of [args.enrol ? "code" : "url", "doc"]) {
  if (!args[required]) {
    console.error(`missing --${required}`)
    process.exit(2)
  }
}
// Never hang a test: give up after 30 s.
setTimeout(() => {
  console.error("timed out")
  process.exit(4)
}, 30_000).unref()

// What the README shows a JavaScript app doing: enrol, then sync with the token.
let url = args.url
if (args.enrol) {
  const answer = await fetch(`${args.enrol}/v1/enrol`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ code: args.code, device_name: "browser" }),
  })
  const enrolled = await answer.json()
  if (!answer.ok) {
    console.error(`enrolment refused: ${enrolled.message}`)
    process.exit(5)
  }
  url = `${args.enrol.replace(/^http/, "ws")}/v1/sync?token=${encodeURIComponent(enrolled.token)}`
  args.device = enrolled.device_id
}

const repo = new Repo({
  network: [new WebSocketClientAdapter(url)],
  // Unset: automerge-repo's own random peer id ("peer-..."), as a stock app.
  ...(args["peer-id"] ? { peerId: args["peer-id"] } : {}),
  sharePolicy: async () => true,
})
if (args.enrol) {
  console.log(`ENROLLED ${args.device} PEER ${repo.peerId}`)
}

let handle
try {
  handle = await repo.find(args.doc)
} catch (e) {
  console.error(`find failed: ${e.message}`)
  console.log("UNAVAILABLE")
  process.exit(3)
}
const doc = handle.doc()
const texts = Object.values(doc.notes ?? {}).map(n => String(n.text))
console.log(`NOTES ${JSON.stringify(texts)}`)

if (args["add-note"]) {
  const id = args["note-id"]
  handle.change(d => {
    d.notes[id] = {
      author: args.author ?? "js client",
      device: args["peer-id"] ?? args.device,
      created_at: new Date().toISOString(),
      category: "other",
      text: args["add-note"],
      history: [],
    }
  })
  console.log(`ADDED ${id}`)
}

if (args.day) {
  let day
  try {
    day = await repo.find(args.day)
  } catch (e) {
    console.error(`find failed: ${e.message}`)
    console.log("UNAVAILABLE")
    process.exit(3)
  }
  const d = day.doc()
  const first = Object.keys(d.bookings ?? {}).find(k => k.endsWith(".children"))
  const children = first ? d.bookings[first] : undefined
  console.log(
    `DAY ${JSON.stringify({
      capacity: d.capacity,
      capacityType: typeof d.capacity,
      capacityPlusOne: d.capacity + 1,
      children,
      childrenType: typeof children,
      schemaVersionType: typeof d.schema_version,
    })}`,
  )
  if (args.book) {
    const f = args.book
    day.change(d => {
      d.bookings[`${f}.adults`] = d.capacity - 8
      d.bookings[`${f}.children`] = children + 1
      // A family day's flat maps hold plain strings, not the Text objects
      // JavaScript writes by default (the relay refuses those there).
      d.bookings[`${f}.booked_at`] = new ImmutableString(new Date().toISOString())
      d.bookings[`${f}.booked_by`] = new ImmutableString("Jo")
    })
    console.log(`BOOKED ${f}`)
  }
}

// Stay connected until the test has seen what it needs.
process.stdin.resume()
process.stdin.on("end", async () => {
  await repo.shutdown()
  process.exit(0)
})

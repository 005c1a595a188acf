// A JavaScript automerge-repo device (unmodified @automerge/automerge-repo 2.x
// with WebSocketClientAdapter) for Linkbook's conformance test.
//
//   node client.mjs --url wss://127.0.0.1:PORT/v1/sync?token=TOKEN --peer-id DEVICE_ID \
//        --doc automerge:ID [--add-note TEXT --note-id UUID --author NAME]
//
// Prints `NOTES <json array of note texts>` once the document is found, then,
// with --add-note, `ADDED <note id>` after the change is made; it stays
// connected (so the change reaches the relay) until its stdin closes. Prints
// `UNAVAILABLE` and exits 3 if the document cannot be had. Trust for the
// relay's development certificate comes from NODE_EXTRA_CA_CERTS.
import { Repo } from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"

const args = {}
for (let i = 2; i < process.argv.length; i += 2) {
  args[process.argv[i].replace(/^--/, "")] = process.argv[i + 1]
}
for (const required of ["url", "peer-id", "doc"]) {
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

const repo = new Repo({
  network: [new WebSocketClientAdapter(args.url)],
  peerId: args["peer-id"],
  sharePolicy: async () => true,
})

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
      device: args["peer-id"],
      created_at: new Date().toISOString(),
      category: "other",
      text: args["add-note"],
      history: [],
    }
  })
  console.log(`ADDED ${id}`)
}

// Stay connected until the test has seen what it needs.
process.stdin.resume()
process.stdin.on("end", async () => {
  await repo.shutdown()
  process.exit(0)
})

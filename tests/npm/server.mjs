// A plain JavaScript automerge-repo sync server, set up as the public
// automerge-repo-sync-server is: NodeWSServerAdapter on a `ws` server, files
// on disk, sharePolicy false (serve what is asked for, announce nothing).
//
//   node server.mjs --data DIR [--peer-id ID]
//
// --peer-id fixes the server's peer id across restarts (the public server
// uses `storage-server-${hostname}`); by default it is per process.
//
// Listens on 127.0.0.1 on a free port and prints `LISTENING <port>`; stops on
// SIGTERM or when its stdin closes.
import { Repo } from "@automerge/automerge-repo"
import { NodeWSServerAdapter } from "@automerge/automerge-repo-network-websocket"
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs"
import { WebSocketServer } from "ws"

const args = {}
for (let i = 2; i < process.argv.length; i += 2) {
  args[process.argv[i].replace(/^--/, "")] = process.argv[i + 1]
}
if (!args.data) {
  console.error("missing --data DIR")
  process.exit(2)
}

const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 })
const repo = new Repo({
  network: [new NodeWSServerAdapter(wss)],
  storage: new NodeFSStorageAdapter(args.data),
  peerId: args["peer-id"] ?? `js-sync-server-${process.pid}`,
  sharePolicy: async () => false,
})

wss.on("listening", () => console.log(`LISTENING ${wss.address().port}`))

const stop = async () => {
  await repo.shutdown()
  wss.close()
  process.exit(0)
}
process.on("SIGTERM", stop)
process.stdin.resume()
process.stdin.on("end", stop)

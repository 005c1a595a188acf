//! The simulated network: device sessions (each on its own thread, blocked
//! whenever it waits on its link) and the relay's hub (tasks on a
//! current-thread runtime with paused time) take turns under one
//! controller, so exactly one of them runs at a time and a seed decides
//! every interleaving and every fault.
//!
//! A device's [`Link`] and [`Connector`] calls are requests to the
//! controller ([`Request`]); a read blocks until the controller answers it
//! with a message, a silence (the device's quiet or its read timeout) or a
//! failure. Between the two sides the controller holds each connection's
//! messages in flight and, as [`Faults`] say, drops, duplicates, reorders,
//! delays them past the device's quiet, and cuts connections.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::time::Duration;

use axum::extract::ws::Message as WsMessage;
use futures_util::FutureExt;
use linkbook_core::link::{Connector, Link, Wait};
use linkbook_core::protocol::Message;
use linkbook_core::{DocumentId, Error, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::Sim;

/// What can go wrong on the network, each a probability per message
/// handed on (0.0: never).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// A message is lost.
    pub drop: f64,
    /// A message arrives twice.
    pub duplicate: f64,
    /// A message overtakes the ones sent before it.
    pub reorder: f64,
    /// A message to a device arrives after the device's quiet ended its
    /// wait (it is read later).
    pub delay: f64,
    /// The connection breaks (both sides see it closed).
    pub cut: f64,
}

impl Faults {
    /// A clean network.
    pub const NONE: Faults = Faults {
        drop: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        delay: 0.0,
        cut: 0.0,
    };
}

/// A device thread's call on its link or connector.
#[derive(Debug)]
enum Request {
    Connect {
        path: String,
        token: String,
    },
    Send(Vec<u8>),
    Recv(Wait),
    Close,
    /// The session (`Repo::sync_over`) returned.
    Done,
}

/// The controller's answer.
#[derive(Debug)]
enum Reply {
    Ok,
    Message(Option<Vec<u8>>),
    Failed(String),
    Refused(u16, Vec<u8>),
}

/// One device's side of its requests.
#[derive(Debug)]
struct Wire {
    device: usize,
    requests: mpsc::Sender<(usize, Request)>,
    replies: mpsc::Receiver<Reply>,
}

impl Wire {
    fn call(&self, request: Request) -> Reply {
        if self.requests.send((self.device, request)).is_err() {
            return Reply::Failed("the simulation stopped".into());
        }
        self.replies
            .recv()
            .unwrap_or_else(|_| Reply::Failed("the simulation stopped".into()))
    }
}

fn failed(why: String) -> Error {
    Error::Network(why)
}

/// The device's connector: each `connect` asks the controller, which
/// admits the connection as `GET /v1/sync` would (lib.rs `admit_sync`).
#[derive(Debug)]
pub(super) struct SimConnector {
    wire: Wire,
}

impl Connector for SimConnector {
    fn connect(&mut self, path: &str, token: &str) -> Result<Box<dyn Link + '_>> {
        match self.wire.call(Request::Connect {
            path: path.to_string(),
            token: token.to_string(),
        }) {
            Reply::Ok => Ok(Box::new(SimLink { wire: &self.wire })),
            Reply::Refused(status, body) => Err(linkbook_core::link::refusal(status, Some(&body))),
            Reply::Failed(why) => Err(failed(why)),
            Reply::Message(_) => Err(failed("the simulation answered out of turn".into())),
        }
    }
}

#[derive(Debug)]
struct SimLink<'w> {
    wire: &'w Wire,
}

impl Link for SimLink<'_> {
    fn send(&mut self, bytes: Vec<u8>) -> Result<()> {
        match self.wire.call(Request::Send(bytes)) {
            Reply::Ok => Ok(()),
            Reply::Failed(why) => Err(failed(why)),
            other => Err(failed(format!("unexpected {other:?}"))),
        }
    }

    fn recv(&mut self, wait: Wait) -> Result<Option<Vec<u8>>> {
        match self.wire.call(Request::Recv(wait)) {
            Reply::Message(m) => Ok(m),
            Reply::Failed(why) => Err(failed(why)),
            other => Err(failed(format!("unexpected {other:?}"))),
        }
    }

    fn close(&mut self) {
        let _ = self.wire.call(Request::Close);
    }
}

/// One connection between a device and the relay's hub.
#[derive(Debug)]
struct Conn {
    team: linkbook_server::storage::Team,
    device_id: linkbook_server::storage::DeviceId,
    /// Frames to the hub's session (dropped: the device side closed).
    to_relay: Option<UnboundedSender<Result<WsMessage, axum::Error>>>,
    /// What the hub's writer sends.
    from_relay: UnboundedReceiver<WsMessage>,
    /// Messages in flight each way.
    relay_bound: VecDeque<Vec<u8>>,
    device_bound: VecDeque<Vec<u8>>,
    /// The hub's side has ended (its writer dropped the sink, or sent a
    /// close frame).
    relay_closed: bool,
    /// The network broke it.
    cut: bool,
    /// The hub's session task.
    task: tokio::task::JoinHandle<()>,
}

/// What the controller saw that a property must rule out.
#[derive(Debug, Default)]
pub struct Observed {
    /// A document of another team handed to a device: (device, document).
    pub foreign: Vec<(usize, String)>,
    /// A revoked device's connection was sent a document after revocation.
    pub after_revocation: Vec<(usize, String)>,
    /// A hub session task that panicked.
    pub relay_panics: usize,
    /// Messages handed on and faults applied.
    pub delivered: u64,
    pub faults: u64,
    /// Sessions that ended in an error.
    pub failed_sessions: u64,
}

/// A revocation in the middle of a round: after `after_steps` controller
/// steps (or at the round's end, if it ends sooner), device `device` is
/// revoked (its open connections are cut).
#[derive(Debug, Clone, Copy)]
pub struct RevokeDuring {
    pub device: usize,
    pub after_steps: u32,
}

/// Runs the sessions of `devices` at once over a network with `faults`:
/// each device's `Repo::sync_over` result, in order.
pub(super) fn round(
    sim: &mut Sim,
    devices: &[usize],
    faults: Faults,
    seed: u64,
    revoke_during: Option<RevokeDuring>,
) -> Vec<Result<linkbook_core::SyncSummary>> {
    let (requests_tx, requests) = mpsc::channel::<(usize, Request)>();
    let mut reply_to = Vec::new();
    let mut wires = Vec::new();
    for &d in devices {
        let (tx, rx) = mpsc::channel();
        reply_to.push((d, tx));
        wires.push(Wire {
            device: d,
            requests: requests_tx.clone(),
            replies: rx,
        });
    }
    drop(requests_tx);
    let repos: Vec<&linkbook_core::Repo> = devices
        .iter()
        .map(|&d| &sim.devices[d].device.repo)
        .collect();
    let relay = &sim.relay;
    let rt = &sim.rt;
    let origins = &sim.origins;
    let observed = &mut sim.observed;
    std::thread::scope(|scope| {
        let handles: Vec<_> = wires
            .into_iter()
            .zip(repos)
            .map(|(wire, repo)| {
                scope.spawn(move || {
                    let requests = wire.requests.clone();
                    let device = wire.device;
                    let mut connector = SimConnector { wire };
                    let result = repo.sync_over(&mut connector, None);
                    let _ = requests.send((device, Request::Done));
                    result
                })
            })
            .collect();
        let mut control = Controller {
            rng: StdRng::seed_from_u64(seed),
            faults,
            relay,
            rt,
            origins,
            conns: Default::default(),
            pending: Default::default(),
            reply_to: reply_to.into_iter().collect(),
            observed,
            revoke_during,
            revoked_now: None,
            steps: 0,
        };
        control.run(&requests, devices.len());
        control.finish();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Network("the device's session panicked".into())))
            })
            .collect();
        control.observed.failed_sessions += results.iter().filter(|r| r.is_err()).count() as u64;
        results
    })
}

struct Controller<'s> {
    rng: StdRng,
    faults: Faults,
    relay: &'s super::SimRelay,
    rt: &'s tokio::runtime::Runtime,
    /// Which team made each document.
    origins: &'s super::Origins,
    /// Each device's open connection.
    conns: std::collections::BTreeMap<usize, Conn>,
    /// Devices blocked in a read, with how they wait.
    pending: std::collections::BTreeMap<usize, Wait>,
    reply_to: std::collections::BTreeMap<usize, mpsc::Sender<Reply>>,
    observed: &'s mut Observed,
    revoke_during: Option<RevokeDuring>,
    /// The device revoked during this round, once it is.
    revoked_now: Option<String>,
    steps: u32,
}

/// Steps after which a round is abandoned (every session is failed): a
/// bound on a round that would never settle.
const MAX_STEPS: u32 = 200_000;

impl Controller<'_> {
    fn reply(&self, device: usize, reply: Reply) {
        if let Some(tx) = self.reply_to.get(&device) {
            let _ = tx.send(reply);
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random_bool(p.min(1.0))
    }

    fn run(&mut self, requests: &mpsc::Receiver<(usize, Request)>, mut running: usize) {
        while running > 0 {
            // Until every running device is blocked in a read.
            while self.pending.len() < running {
                let Ok((device, request)) = requests.recv() else {
                    return;
                };
                match request {
                    Request::Done => running -= 1,
                    Request::Recv(wait) => {
                        self.pending.insert(device, wait);
                    }
                    Request::Send(bytes) => {
                        let reply = match self.conns.get_mut(&device) {
                            Some(c) if !c.cut => {
                                c.relay_bound.push_back(bytes);
                                Reply::Ok
                            }
                            _ => Reply::Failed("the connection was cut".into()),
                        };
                        self.reply(device, reply);
                    }
                    Request::Close => {
                        if let Some(c) = self.conns.remove(&device) {
                            self.retire(c);
                        }
                        self.settle();
                        self.reply(device, Reply::Ok);
                    }
                    Request::Connect { path, token } => {
                        let reply = self.connect(device, &path, &token);
                        self.reply(device, reply);
                    }
                }
            }
            if running == 0 {
                break;
            }
            self.steps += 1;
            if self.steps > MAX_STEPS {
                for device in std::mem::take(&mut self.pending).into_keys() {
                    self.reply(device, Reply::Failed("the round did not settle".into()));
                }
                continue;
            }
            if let Some(r) = self.revoke_during
                && self.steps >= r.after_steps
                && self.revoked_now.is_none()
            {
                self.revoke(r.device);
            }
            self.step();
        }
    }

    /// One turn: hand on one message in flight, or answer the silence.
    fn step(&mut self) {
        let mut choices: Vec<(bool, usize)> = Vec::new();
        for (&device, c) in &self.conns {
            if !c.relay_bound.is_empty() {
                choices.push((true, device));
            }
        }
        for &device in self.pending.keys() {
            if self
                .conns
                .get(&device)
                .is_some_and(|c| !c.device_bound.is_empty())
            {
                choices.push((false, device));
            }
        }
        if choices.is_empty() {
            if self.settle() {
                return;
            }
            // Nothing in flight anywhere and the hub idle: every waiting
            // device hears silence, as its wait reads it.
            for (device, wait) in std::mem::take(&mut self.pending) {
                let closed = self
                    .conns
                    .get(&device)
                    .is_none_or(|c| c.relay_closed || c.cut);
                let reply = match wait {
                    _ if closed => Reply::Failed("the relay closed the connection".into()),
                    Wait::Poll | Wait::Exchange { quiet_ends: true } => Reply::Message(None),
                    _ => Reply::Failed("the relay stopped answering".into()),
                };
                self.reply(device, reply);
            }
            return;
        }
        let (to_relay, device) = choices[self.rng.random_range(0..choices.len())];
        if self.chance(self.faults.cut) {
            self.observed.faults += 1;
            self.cut(device);
            return;
        }
        if to_relay {
            if let Some(bytes) = self.take(device, true) {
                self.deliver_to_relay(device, bytes);
            }
        } else {
            let quiet_ends =
                self.pending.get(&device) == Some(&Wait::Exchange { quiet_ends: true });
            if quiet_ends && self.chance(self.faults.delay) {
                // It arrives after the device's quiet: the read ends empty.
                self.observed.faults += 1;
                self.pending.remove(&device);
                self.reply(device, Reply::Message(None));
                return;
            }
            if let Some(bytes) = self.take(device, false) {
                self.pending.remove(&device);
                self.observed.delivered += 1;
                self.reply(device, Reply::Message(Some(bytes)));
            }
        }
    }

    /// The next message of a direction, with the faults on it: `None` when
    /// it was lost.
    fn take(&mut self, device: usize, to_relay: bool) -> Option<Vec<u8>> {
        let reorder = self.chance(self.faults.reorder);
        let lost = self.chance(self.faults.drop);
        let twice = self.chance(self.faults.duplicate);
        let c = self.conns.get_mut(&device)?;
        let queue = if to_relay {
            &mut c.relay_bound
        } else {
            &mut c.device_bound
        };
        let at = if reorder && queue.len() > 1 {
            self.rng.random_range(0..queue.len())
        } else {
            0
        };
        let bytes = queue.remove(at)?;
        if lost {
            self.observed.faults += 1;
            return None;
        }
        if twice {
            self.observed.faults += 1;
            queue.push_front(bytes.clone());
        }
        if reorder && at > 0 {
            self.observed.faults += 1;
        }
        Some(bytes)
    }

    fn deliver_to_relay(&mut self, device: usize, bytes: Vec<u8>) {
        if let Some(tx) = self.conns.get(&device).and_then(|c| c.to_relay.as_ref()) {
            self.observed.delivered += 1;
            let _ = tx.send(Ok(WsMessage::Binary(bytes.into())));
        }
        self.settle();
    }

    /// Lets the hub run until all its tasks wait, then collects what it
    /// sent: true if anything arrived or a connection closed.
    fn settle(&mut self) -> bool {
        self.rt.block_on(async {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let mut moved = false;
        let devices: Vec<usize> = self.conns.keys().copied().collect();
        for device in devices {
            let Some(c) = self.conns.get_mut(&device) else {
                continue;
            };
            loop {
                match c.from_relay.try_recv() {
                    Ok(WsMessage::Binary(bytes)) => {
                        moved = true;
                        check_sent(self.origins, &c.team, device, &bytes, self.observed);
                        if self.revoked_now.as_deref() == Some(c.device_id.as_str()) {
                            check_after_revocation(device, &bytes, self.observed);
                        }
                        c.device_bound.push_back(bytes.to_vec());
                    }
                    Ok(WsMessage::Close(_)) => {
                        moved |= !c.relay_closed;
                        c.relay_closed = true;
                    }
                    Ok(_) => {} // pings
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                        moved |= !c.relay_closed;
                        c.relay_closed = true;
                        break;
                    }
                }
            }
        }
        moved
    }

    fn connect(&mut self, device: usize, path: &str, token: &str) -> Reply {
        if let Some(old) = self.conns.remove(&device) {
            self.retire(old);
        }
        let query = path.split_once('?').map(|(_, q)| q.to_string());
        let state = &self.relay.state;
        let admitted = self
            .rt
            .block_on(state.admit_sync(None, Some(token), query.as_deref()));
        let (account, opening) = match admitted {
            Ok(a) => a,
            Err(e) => {
                let response = axum::response::IntoResponse::into_response(e);
                let status = response.status().as_u16();
                let body = self.rt.block_on(async {
                    axum::body::to_bytes(response.into_body(), 64 * 1024)
                        .await
                        .map(|b| b.to_vec())
                        .unwrap_or_default()
                });
                return Reply::Refused(status, body);
            }
        };
        let (to_relay, incoming) = unbounded_channel::<Result<WsMessage, axum::Error>>();
        let (outgoing, from_relay) = unbounded_channel::<WsMessage>();
        let stream = futures_util::stream::unfold(incoming, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        });
        let sink = futures_util::sink::unfold(outgoing, |tx, m: WsMessage| async move {
            tx.send(m).map_err(axum::Error::new)?;
            Ok::<_, axum::Error>(tx)
        });
        let hub = state.hub.clone();
        let team = account.team.clone();
        let device_id = account.id.clone();
        let task =
            self.rt
                .spawn(hub.serve_frames(account, Box::pin(sink), Box::pin(stream), opening));
        self.conns.insert(
            device,
            Conn {
                team,
                device_id,
                to_relay: Some(to_relay),
                from_relay,
                relay_bound: VecDeque::new(),
                device_bound: VecDeque::new(),
                relay_closed: false,
                cut: false,
                task,
            },
        );
        self.settle();
        Reply::Ok
    }

    /// Breaks a connection: the hub's side ends, and the device's waiting
    /// read fails (its later calls do too).
    fn cut(&mut self, device: usize) {
        if let Some(c) = self.conns.get_mut(&device) {
            c.cut = true;
            c.to_relay = None;
            c.relay_bound.clear();
            c.device_bound.clear();
        }
        self.settle();
        if self.pending.remove(&device).is_some() {
            self.reply(device, Reply::Failed("the connection was cut".into()));
        }
    }

    fn revoke(&mut self, device: usize) {
        let id = self
            .relay
            .device_ids
            .get(device)
            .cloned()
            .unwrap_or_default();
        let state = &self.relay.state;
        let _ = self.rt.block_on(linkbook_server::revocation::revoke(
            &*state.storage,
            &state.hub,
            &id,
            Some("simulation"),
            chrono::Utc::now(),
        ));
        self.revoked_now = Some(id);
        self.settle();
    }

    /// A closed connection: its frames to the hub end, the hub's task is
    /// let end, and a panic is counted.
    fn retire(&mut self, c: Conn) {
        drop(c.to_relay);
        self.settle();
        if c.task.is_finished()
            && let Some(Err(e)) = self.rt.block_on(async { c.task.now_or_never() })
            && e.is_panic()
        {
            self.observed.relay_panics += 1;
        }
    }

    /// After the round: close what is left and let the hub save.
    fn finish(&mut self) {
        if let Some(r) = self.revoke_during
            && self.revoked_now.is_none()
        {
            self.revoke(r.device);
        }
        for (_, c) in std::mem::take(&mut self.conns) {
            self.retire(c);
        }
        // The hub's sessions save their sync states as they end; a
        // writer may linger up to its timeout.
        self.rt.block_on(async {
            tokio::time::sleep(Duration::from_secs(15)).await;
        });
    }
}

/// Every document message to a device names a document of its team.
fn check_sent(
    origins: &super::Origins,
    team: &str,
    device: usize,
    bytes: &[u8],
    seen: &mut Observed,
) {
    let Ok(m) = Message::decode(bytes) else {
        return;
    };
    if let Message::Sync { document_id, .. } | Message::Request { document_id, .. } = &m
        && let Ok(id) = DocumentId::parse(document_id, "document id")
        && origins.get(&id).map(String::as_str) != Some(team)
    {
        seen.foreign.push((device, document_id.clone()));
    }
}

/// After revocation a device's connection is sent no document.
fn check_after_revocation(device: usize, bytes: &[u8], seen: &mut Observed) {
    if let Ok(Message::Sync { document_id, .. } | Message::Request { document_id, .. }) =
        Message::decode(bytes)
    {
        seen.after_revocation.push((device, document_id));
    }
}

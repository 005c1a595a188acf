//! The in-process simulation: N device `Repo`s (real encrypted SQLite
//! stores in temp dirs) and the relay's real hub (on its in-memory storage
//! or on SQLite in a temp dir), joined by a seeded network that drops,
//! duplicates, reorders, delays and cuts messages (`network.rs`). No
//! socket, no process: a device syncs through `Repo::sync_over` (the same
//! session, plan and engine as over TLS), the hub serves it through
//! `Hub::serve_frames` (the same session as a WebSocket's), and the office
//! acts through the admin service layer, as the CLI and console do.
//!
//! ```no_run
//! use linkbook_test_support::sim::{Backend, Faults, Sim};
//! let mut sim = Sim::new(Backend::Memory, &[("north", 2), ("south", 1)]);
//! let family = sim.add_family(0, "Family A").unwrap();
//! sim.repo(0).add_note(family, "visited", linkbook_core::NoteCategory::Visit).unwrap();
//! sim.round(&[0, 1, 2], Faults::NONE, 7, None);
//! assert_eq!(sim.repo(1).notes(family).unwrap().len(), 1);
//! ```

mod network;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use linkbook_core::{DeviceCredentials, DocumentId, NewFamily, NewFamilyDay, Repo, SyncSummary};
use linkbook_server::AppState;
use linkbook_server::relay::Limits;
use linkbook_server::storage::{MemoryStorage, Storage};
use tempfile::TempDir;

pub use network::{Faults, Observed, RevokeDuring};

use crate::store::Device;

/// Which storage the relay's hub runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `MemoryStorage`.
    Memory,
    /// The embedded SQLite database (encrypted) in a temp data directory.
    Sqlite,
}

/// Which team made each document (families, family days, directories).
pub type Origins = HashMap<DocumentId, String>;

/// The relay side: the state its HTTP surface would hold.
#[derive(Debug)]
pub struct SimRelay {
    pub state: AppState,
    /// Each device's id at the relay, by index.
    pub device_ids: Vec<String>,
    _data: Option<TempDir>,
}

/// One enrolled device.
#[derive(Debug)]
pub struct SimDevice {
    pub device: Device,
    pub team: String,
    pub worker: String,
}

/// Devices and a relay in one process (see the module docs).
#[derive(Debug)]
pub struct Sim {
    rt: tokio::runtime::Runtime,
    relay: SimRelay,
    devices: Vec<SimDevice>,
    origins: Origins,
    observed: Observed,
}

/// A temp dir for a store: in memory (`/dev/shm`) where the machine has
/// it. The simulation checks what syncs, not durability (crash tests kill
/// real processes), and an fsync behind a busy disk costs milliseconds.
fn scratch() -> TempDir {
    let shm = std::path::Path::new("/dev/shm");
    match shm.is_dir() {
        true => tempfile::tempdir_in(shm).or_else(|_| tempfile::tempdir()),
        false => tempfile::tempdir(),
    }
    .expect("temp dir")
}

/// The address devices believe they enrolled with (never dialled).
const SIM_URL: &str = "https://relay.sim.invalid";

impl Sim {
    /// A relay on `backend` and, for each `(team, n)`, n devices of that
    /// team enrolled through the relay's real enrolment (a code from the
    /// admin layer redeemed as `POST /v1/enrol` would).
    pub fn new(backend: Backend, teams: &[(&str, usize)]) -> Sim {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("simulation runtime");
        let limits = Limits {
            // No pings between the turns of a round.
            ping_interval_secs: 0,
            ..Limits::default()
        };
        let (state, data) = match backend {
            Backend::Memory => {
                let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
                let id = uuid::Uuid::new_v4().hyphenated().to_string();
                (AppState::with_storage(storage, id, limits), None)
            }
            Backend::Sqlite => {
                let dir = scratch();
                let data = dir.path().join("data");
                let state = rt
                    .block_on(async { AppState::open(&data, limits) })
                    .expect("open the relay's SQLite storage");
                (state, Some(dir))
            }
        };
        let mut sim = Sim {
            rt,
            relay: SimRelay {
                state,
                device_ids: Vec::new(),
                _data: data,
            },
            devices: Vec::new(),
            origins: HashMap::new(),
            observed: Observed::default(),
        };
        for (team, n) in teams {
            for i in 0..*n {
                sim.enrol(team, &format!("{team}-worker-{i}"));
            }
        }
        sim
    }

    fn enrol(&mut self, team: &str, worker: &str) {
        let storage = self.relay.state.storage.clone();
        let now = Utc::now();
        let enrolled = self.rt.block_on(async {
            let code = linkbook_server::admin::devices::enrol(&*storage, team, worker, 1, now)
                .await
                .expect("enrolment code");
            linkbook_server::auth::enrol(&*storage, &code.code, "simulated tablet", now)
                .await
                .expect("redeem the enrolment code")
        });
        let directory_id = DocumentId::parse(&enrolled.directory_id, "directory id").ok();
        if let Some(d) = directory_id {
            self.origins.insert(d, team.to_string());
        }
        let device = Device::in_dir(scratch());
        device.repo.set_worker(worker).expect("set worker");
        device
            .repo
            .adopt_enrolment(
                SIM_URL,
                None,
                &DeviceCredentials {
                    device_id: enrolled.device_id.clone(),
                    token: enrolled.token,
                    team: enrolled.team,
                    worker: enrolled.worker,
                    directory_id,
                },
            )
            .expect("adopt the enrolment");
        self.relay.device_ids.push(enrolled.device_id);
        self.devices.push(SimDevice {
            device,
            team: team.to_string(),
            worker: worker.to_string(),
        });
    }

    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    pub fn repo(&self, device: usize) -> &Repo {
        &self.devices[device].device.repo
    }

    /// The team a device was enrolled in (a wiped device's profile names
    /// the local team since).
    pub fn team(&self, device: usize) -> &str {
        &self.devices[device].team
    }

    pub fn relay(&self) -> &SimRelay {
        &self.relay
    }

    /// What the network saw (foreign documents, documents after a
    /// revocation, relay panics, messages and faults).
    pub fn observed(&self) -> &Observed {
        &self.observed
    }

    /// The team that made a document.
    pub fn origin(&self, id: DocumentId) -> Option<&str> {
        self.origins.get(&id).map(String::as_str)
    }

    /// A new family on a device (offline), its origin recorded.
    pub fn add_family(&mut self, device: usize, name: &str) -> linkbook_core::Result<DocumentId> {
        let id = self.repo(device).add_family(&NewFamily {
            name: name.to_string(),
            address: None,
            key_worker: None,
        })?;
        self.origins.insert(id, self.repo(device).profile().team);
        Ok(id)
    }

    /// A new family day on a device (offline), its origin recorded.
    pub fn create_family_day(
        &mut self,
        device: usize,
        prison: &str,
    ) -> linkbook_core::Result<DocumentId> {
        let id = self.repo(device).create_family_day(&NewFamilyDay {
            prison: prison.to_string(),
            date: Utc::now().date_naive(),
            capacity: None,
        })?;
        self.origins.insert(id, self.repo(device).profile().team);
        Ok(id)
    }

    /// Runs the sessions of `devices` at once over a network with
    /// `faults` (`seed` decides every interleaving and fault), optionally
    /// revoking a device in the middle: each session's result, in order.
    pub fn round(
        &mut self,
        devices: &[usize],
        faults: Faults,
        seed: u64,
        revoke_during: Option<RevokeDuring>,
    ) -> Vec<linkbook_core::Result<SyncSummary>> {
        network::round(self, devices, faults, seed, revoke_during)
    }

    /// The data protection lead purges a family (the admin service
    /// layer's rules: only families, not twice).
    pub fn purge(&mut self, family: DocumentId) -> linkbook_server::admin::Result<()> {
        let storage = self.relay.state.storage.clone();
        self.rt
            .block_on(linkbook_server::admin::families::purge_family(
                &*storage,
                &family.to_string(),
                "simulated erasure request",
                None,
                Utc::now(),
            ))
            .map(|_| ())
    }

    /// The administrator revokes a device (its open connections are cut).
    pub fn revoke(&mut self, device: usize) {
        let state = &self.relay.state;
        let id = &self.relay.device_ids[device];
        self.rt
            .block_on(linkbook_server::revocation::revoke(
                &*state.storage,
                &state.hub,
                id,
                Some("simulation"),
                Utc::now(),
            ))
            .expect("revoke");
    }

    /// Whether the relay stores a document for a team.
    pub fn relay_holds(&self, team: &str, id: DocumentId) -> bool {
        let storage = self.relay.state.storage.clone();
        self.rt
            .block_on(storage.load_document(&team.into(), id))
            .ok()
            .flatten()
            .is_some()
    }
}

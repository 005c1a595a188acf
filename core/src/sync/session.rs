//! One sync session's socket driver: send and receive with quiet and
//! keep-alive, the plain and the pipelined opening, and per-document
//! skip/refuse/forget bookkeeping.

use super::*;

impl Session<'_> {
    /// Counts a binary WebSocket message and decodes it.
    pub(super) fn decode_received(&mut self, bytes: &[u8]) -> Result<Message> {
        self.summary.bytes_received += bytes.len() as u64;
        self.summary.messages_received += 1;
        Message::decode(bytes).map_err(|e| network("the relay sent a malformed message", e))
    }

    pub(super) fn send(&mut self, m: Message) -> Result<()> {
        tracing::trace!(message = %describe(&m), "sync send");
        let bytes = m.encode();
        self.summary.bytes_sent += bytes.len() as u64;
        self.summary.messages_sent += 1;
        self.ws
            .send(WsMessage::Binary(bytes.into()))
            .map_err(|e| network("sending to the relay", e))
    }

    /// The next message; `None` when the peer has been quiet for
    /// [`QUIET`] while no pending document awaits an answer.
    pub(super) fn receive_or_quiet(&mut self) -> Result<Option<Message>> {
        if let Some(m) = self.backlog.pop_front() {
            return Ok(Some(m));
        }
        // Pings and pongs are no answer: a peer that sends only those is
        // as silent as one that sends nothing.
        let waiting = std::time::Instant::now();
        loop {
            match self.ws.read() {
                Ok(WsMessage::Binary(bytes)) => {
                    let m = self.decode_received(&bytes)?;
                    tracing::trace!(message = %describe(&m), pending = self.pending.len(), "sync receive");
                    return Ok(Some(m));
                }
                Ok(WsMessage::Close(_)) => {
                    return Err(Error::Network("the relay closed the connection".into()));
                }
                Ok(_) if waiting.elapsed() >= net::IO_TIMEOUT => {
                    return Err(Error::Network("the relay stopped answering".into()));
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    // Our relay answers every message; only other servers
                    // may leave a heads announcement unanswered.
                    if !self.pipelined && self.pending.iter().all(|id| !self.demanding.contains(id))
                    {
                        return Ok(None);
                    }
                    if waiting.elapsed() >= net::IO_TIMEOUT {
                        return Err(Error::Network("the relay stopped answering".into()));
                    }
                }
                Err(e) => return Err(net::read_failed(e)),
            }
        }
    }

    pub(super) fn receive(&mut self) -> Result<Message> {
        if let Some(m) = self.backlog.pop_front() {
            return Ok(m);
        }
        let waiting = std::time::Instant::now();
        loop {
            match self.ws.read().map_err(|e| match e {
                tungstenite::Error::Io(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    Error::Network("the relay stopped answering".into())
                }
                e => net::read_failed(e),
            })? {
                WsMessage::Binary(bytes) => {
                    self.summary.bytes_received += bytes.len() as u64;
                    self.summary.messages_received += 1;
                    let m = Message::decode(&bytes)
                        .map_err(|e| network("the relay sent a malformed message", e));
                    if let Ok(m) = &m {
                        tracing::trace!(message = %describe(m), pending = self.pending.len(), "sync receive");
                    }
                    return m;
                }
                WsMessage::Close(_) => {
                    return Err(Error::Network("the relay closed the connection".into()));
                }
                _ if waiting.elapsed() >= net::IO_TIMEOUT => {
                    return Err(Error::Network("the relay stopped answering".into()));
                }
                _ => continue,
            }
        }
    }

    pub(super) fn run(&mut self) -> Result<()> {
        self.send(Message::Join {
            sender_id: self.device_id.clone(),
            peer_metadata: PeerMetadata {
                storage_id: None,
                is_ephemeral: false,
                max_message_bytes: None,
            },
            supported_protocol_versions: vec![PROTOCOL_VERSION.into()],
        })?;
        self.expect_peer()?;
        // A server may leave a heads announcement unanswered when it has
        // nothing to add, but never one that differs from what it holds:
        // documents changed here since the last sync with it must hear back.
        // (Waiting only on changes and needs made devices give up on a busy
        // JavaScript server before their changes went up: office-sync
        // benchmark, 20 devices at once.)
        self.locally_changed = self
            .repo
            .changed_since_sync(&self.relay_peer)?
            .into_iter()
            .collect();
        let mut next_cursor = None;
        let mut docs: Vec<DocumentId> = match &self.only {
            Some(only) => only.iter().copied().collect(),
            None => {
                let held: BTreeSet<DocumentId> = self
                    .repo
                    .document_ids()?
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect();
                let relay = self.relay_changed()?;
                if let Some(relay) = &relay {
                    // Erasures first: a purged family is deleted here before
                    // anything could offer it to the relay again; then closed
                    // cases past the team's retention.
                    self.repo
                        .record_policy(relay.retention_days, relay.lease_days)?;
                    let mut purged = self.repo.apply_purges(&relay.purged)?;
                    purged.extend(self.repo.apply_retention()?);
                    self.summary.purged = purged.iter().map(ToString::to_string).collect();
                }
                let held: BTreeSet<DocumentId> = match &relay {
                    Some(_) if !self.summary.purged.is_empty() => self
                        .repo
                        .document_ids()?
                        .into_iter()
                        .map(|(id, _)| id)
                        .collect(),
                    _ => held,
                };
                let listed = self.repo.directory_listing()?;
                match relay.map(|r| (r.cursor, r.changed)) {
                    // Only what changed here since the last sync, what
                    // changed on the relay since, and what we lack.
                    Some((cursor, changed)) => {
                        next_cursor = Some(cursor);
                        let mut d: Vec<DocumentId> = self.locally_changed.iter().copied().collect();
                        d.extend(changed);
                        d.extend(listed.into_iter().filter(|id| !held.contains(id)));
                        d.extend(self.skipped_before.iter().copied());
                        d
                    }
                    None => held
                        .into_iter()
                        .chain(listed)
                        .chain(self.skipped_before.iter().copied())
                        .collect(),
                }
            }
        };
        // The directory first: it names the documents this device lacks.
        docs.sort_by_key(|id| *id != self.repo.directory_id());
        let mut last_read = std::time::Instant::now();
        for id in docs {
            self.start(id)?;
            if last_read.elapsed() >= KEEP_ALIVE {
                self.keep_alive()?;
                last_read = std::time::Instant::now();
            }
        }
        self.exchange(next_cursor)
    }

    /// Reads what the server has sent so far without waiting for more,
    /// keeping its messages for later: tungstenite answers pings as it reads
    /// them. automerge-repo's NodeWSServerAdapter pings every 5 s and drops
    /// a client that missed a pong; a first sync of 2,000 documents with it
    /// took longer than that to write on a busy machine, and was reset
    /// (benchmark fresh-device, full tier).
    pub(super) fn keep_alive(&mut self) -> Result<()> {
        self.ws
            .get_ref()
            .set_read_timeout(std::time::Duration::from_millis(1))
            .map_err(|e| network("socket", e))?;
        let reading = std::time::Instant::now();
        let read = loop {
            match self.ws.read() {
                Ok(WsMessage::Binary(bytes)) => match self.decode_received(&bytes) {
                    Ok(m) => self.backlog.push_back(m),
                    Err(e) => break Err(e),
                },
                Ok(WsMessage::Close(_)) => {
                    break Err(Error::Network("the relay closed the connection".into()));
                }
                // A peer that never pauses must not keep us from writing.
                Ok(_) if reading.elapsed() >= KEEP_ALIVE => break Ok(()),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break Ok(());
                }
                Err(e) => break Err(net::read_failed(e)),
            }
        };
        self.ws
            .get_ref()
            .set_read_timeout(net::IO_TIMEOUT)
            .map_err(|e| network("socket", e))?;
        read?;
        // The pongs tungstenite queued go out now, not with the next message.
        match self.ws.flush() {
            Ok(()) => Ok(()),
            Err(e) => Err(network("sending to the relay", e)),
        }
    }

    /// The pipelined session with Linkbook's relay (docs/adr/0005): the
    /// upgrade request, `join` and a sync message for every document to
    /// send (carrying the changes made since the heads last shared with the
    /// relay) leave in one flight; the relay answers with `peer`,
    /// `changed-since` and its own changes, and its answers to ours.
    pub(super) fn run_pipelined(
        &mut self,
        opening: net::Pipelined,
        asked_changes: bool,
    ) -> Result<()> {
        self.send(Message::Join {
            sender_id: self.device_id.clone(),
            peer_metadata: PeerMetadata {
                storage_id: None,
                is_ephemeral: false,
                max_message_bytes: None,
            },
            supported_protocol_versions: vec![PROTOCOL_VERSION.into()],
        })?;
        let mut docs: Vec<DocumentId> = match &self.only {
            Some(only) => only.iter().copied().collect(),
            None => {
                let held: BTreeSet<DocumentId> = self
                    .repo
                    .document_ids()?
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect();
                // What changed here since the last sync (everything, the
                // first time), and what the directory names that we lack;
                // the relay sends what changed there.
                let mut d = self.repo.changed_since_sync(&self.relay_peer)?;
                d.extend(
                    self.repo
                        .directory_listing()?
                        .into_iter()
                        .filter(|id| !held.contains(id)),
                );
                // Skipped before: a readable version may be there now.
                d.extend(self.skipped_before.iter().copied());
                d
            }
        };
        docs.sort_by_key(|id| *id != self.repo.directory_id());
        let mut docs = docs.into_iter();
        for id in docs.by_ref() {
            self.start(id)?;
            if self.summary.bytes_sent > PIPELINE_BYTES {
                break;
            }
        }
        if let Err((status, body)) = opening.finish(&mut self.ws)? {
            return Err(refused(status, Some(&body)));
        }
        self.expect_peer()?;
        // The rest of a big upload (a device's first sync) after the 101.
        for id in docs {
            self.start(id)?;
        }
        let mut next_cursor = None;
        if asked_changes {
            match self.receive()? {
                Message::ChangedSince {
                    cursor,
                    document_ids,
                    purged,
                    retention_days,
                    lease_days,
                } => {
                    next_cursor = Some(cursor);
                    // Erasures and the team's policy first: purged families
                    // and closed cases past retention are deleted here (what
                    // this flight offered of them the relay refuses).
                    let purged = purged_with_times(&purged, self.repo.now());
                    self.repo.record_policy(retention_days, lease_days)?;
                    let mut gone = self.repo.apply_purges(&purged)?;
                    gone.extend(self.repo.apply_retention()?);
                    for id in &gone {
                        self.forget(*id);
                    }
                    self.summary.purged = gone.iter().map(ToString::to_string).collect();
                    for d in document_ids {
                        if let Ok(id) = DocumentId::parse(&d, "document id") {
                            // The relay sends these without being asked.
                            self.all.insert(id);
                            self.pending.insert(id);
                            self.demanding.insert(id);
                        }
                    }
                }
                Message::Error { message } => {
                    return Err(Error::Network(format!(
                        "the relay ended the sync: {message}"
                    )));
                }
                other => {
                    return Err(Error::Network(format!(
                        "expected 'changed-since' from the relay, got '{}'",
                        other.message_type()
                    )));
                }
            }
        }
        self.exchange(next_cursor)
    }

    /// Skips a document this app cannot read: no longer awaited, its sync
    /// state not saved (the next sync asks again from the last good one),
    /// reported and remembered; the session goes on with the others.
    pub(super) fn skip(&mut self, id: DocumentId, reason: String) -> Result<()> {
        tracing::warn!(document = %id, reason = %reason, "skipping a document this app cannot read");
        self.pending.remove(&id);
        self.demanding.remove(&id);
        self.states.remove(&id);
        self.needing.remove(&id);
        self.received.remove(&id);
        if self.skipped.insert(id) {
            self.repo.remember_skipped(id, &reason)?;
            self.summary.skipped.push(SkippedDocument {
                id: id.to_string(),
                reason,
            });
        }
        Ok(())
    }

    /// The relay refused this device's changes to `id` (`doc-refused`):
    /// no longer awaited, its sync state not saved (the next sync offers
    /// the same changes and hears the same again), reported once.
    pub(super) fn refused(&mut self, id: DocumentId, reason: String) {
        tracing::warn!(document = %id, "the relay refused this device's changes to a document");
        self.pending.remove(&id);
        self.demanding.remove(&id);
        self.states.remove(&id);
        self.needing.remove(&id);
        if !self.was_refused(id) {
            self.summary.refused.push(SkippedDocument {
                id: id.to_string(),
                reason: reason.chars().take(1_000).collect(),
            });
        }
    }

    pub(super) fn was_refused(&self, id: DocumentId) -> bool {
        let id = id.to_string();
        self.summary.refused.iter().any(|d| d.id == id)
    }

    /// Stops syncing a document deleted during the session (purged).
    pub(super) fn forget(&mut self, id: DocumentId) {
        self.all.remove(&id);
        self.pending.remove(&id);
        self.demanding.remove(&id);
        self.states.remove(&id);
        self.needing.remove(&id);
        self.locally_changed.remove(&id);
        self.sent_changes.remove(&id);
    }

    pub(super) fn expect_peer(&mut self) -> Result<()> {
        match self.receive()? {
            Message::Peer {
                sender_id,
                selected_protocol_version,
                peer_metadata,
                ..
            } if selected_protocol_version == PROTOCOL_VERSION => {
                // The pipelined opening already went out with what this
                // device knew of `relay_peer`'s store (sync states, cursor).
                // A relay whose peer id is another store's (its id comes
                // from its database: a relay rebuilt or restored, or another
                // relay enrolled with) holds none of that: trusting it would
                // skip every document unchanged since the last sync there.
                if self.pipelined && !self.relay_peer.is_empty() && self.relay_peer != sender_id {
                    self.other_store = Some(sender_id);
                    return Err(Error::Network(
                        "the relay is another store than the one last synced with".into(),
                    ));
                }
                self.relay_peer = sender_id;
                self.max_message_bytes = split::message_limit(peer_metadata.max_message_bytes);
                Ok(())
            }
            Message::Error { message } => Err(Error::Network(format!(
                "the relay refused the connection: {message}"
            ))),
            other => Err(Error::Network(format!(
                "expected 'peer' from the relay, got '{}'",
                other.message_type()
            ))),
        }
    }

    pub(super) fn report(&self) {
        if let Some(l) = self.listener {
            l.progress(&SyncProgress {
                documents_done: (self.all.len() - self.pending.len()) as u32,
                documents_total: self.all.len() as u32,
                bytes_sent: self.summary.bytes_sent,
                bytes_received: self.summary.bytes_received,
            });
        }
    }
}

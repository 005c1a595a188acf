//! The per-document Automerge exchange inside a session: start, answer,
//! split under the message limit, save sync states.

use super::*;

impl Session<'_> {
    /// Answers the relay until every opened document is in sync.
    pub(super) fn exchange(&mut self, next_cursor: Option<i64>) -> Result<()> {
        // From here on, short reads: a peer that has nothing to add to a
        // document may stay silent (automerge-repo's JavaScript server does).
        self.ws
            .get_ref()
            .set_read_timeout(QUIET)
            .map_err(|e| network("socket", e))?;
        // Messages per document of this session (`None`: any other), so a
        // relay that chatters without ever letting a sync end cannot keep
        // the session going forever.
        let mut heard: HashMap<Option<DocumentId>, u32> = HashMap::new();
        while !self.pending.is_empty() {
            let Some(m) = self.receive_or_quiet()? else {
                // Only heads announcements are unanswered: the peer had
                // nothing to add, so those documents are in sync.
                self.pending.clear();
                break;
            };
            let about = match &m {
                Message::Sync { document_id, .. }
                | Message::Request { document_id, .. }
                | Message::DocUnavailable { document_id, .. } => {
                    DocumentId::parse(document_id, "document id")
                        .ok()
                        .filter(|id| self.all.contains(id))
                }
                _ => None,
            };
            let count = heard.entry(about).or_default();
            *count += 1;
            if *count > MAX_MESSAGES_PER_DOCUMENT {
                return Err(Error::Network(format!(
                    "the relay sent more than {MAX_MESSAGES_PER_DOCUMENT} messages about {} without ending its sync",
                    about.map_or("other documents".to_string(), |id| id.to_string())
                )));
            }
            if let Message::Sync { document_id, .. } | Message::DocUnavailable { document_id, .. } =
                &m
                && let Ok(id) = DocumentId::parse(document_id, "document id")
            {
                self.demanding.remove(&id);
            }
            match m {
                Message::Sync {
                    document_id, data, ..
                }
                | Message::Request {
                    document_id, data, ..
                } => {
                    let Ok(id) = DocumentId::parse(&document_id, "document id") else {
                        continue;
                    };
                    if self.skipped.contains(&id) || self.was_refused(id) {
                        continue;
                    }
                    // Refused before Automerge sees it (the budget, a bad
                    // Bloom filter): that document is skipped, not the session.
                    match crate::protocol::decode_sync_message(&data) {
                        Ok(message) => self.handle(id, message)?,
                        Err(e) => self.skip(id, skipped::refused_message(&e))?,
                    }
                }
                Message::DocUnavailable { document_id, .. } => {
                    if let Ok(id) = DocumentId::parse(&document_id, "document id") {
                        if self.pending.remove(&id) {
                            self.unavailable.insert(id);
                        }
                        // Skipped before and gone from the relay since.
                        if self.skipped_before.remove(&id) {
                            self.repo.forget_skipped(id)?;
                        }
                    }
                }
                Message::DocRefused {
                    document_id,
                    reason,
                    ..
                } => {
                    if let Ok(id) = DocumentId::parse(&document_id, "document id")
                        && self.all.contains(&id)
                    {
                        self.refused(id, reason);
                    }
                }
                Message::Error { message } => {
                    return Err(Error::Network(format!(
                        "the relay ended the sync: {message}"
                    )));
                }
                _ => {}
            }
            self.report();
        }
        match next_cursor {
            Some(cursor) => {
                let mut values = vec![
                    ("relay_peer".to_string(), self.relay_peer.clone()),
                    (cursor_key(&self.relay_peer), cursor.to_string()),
                ];
                if let Some(named) = &self.sync_session {
                    values.push((session_key(&self.relay_peer), named.clone()));
                }
                let values: Vec<(&str, &str)> = values
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                self.repo.set_profile_values(&values)?
            }
            None if self.pipelined => self
                .repo
                .set_profile_values(&[("relay_peer", &self.relay_peer)])?,
            None => {}
        }
        self.summary.documents_sent = self.sent_changes.len() as u32;
        self.summary.documents_received = self.received.len() as u32;
        self.summary.documents_unavailable = self.unavailable.len() as u32;
        self.summary.documents_total = self.all.len() as u32;
        let _ = self.send(Message::Leave {
            sender_id: self.device_id.clone(),
        });
        Ok(())
    }

    pub(super) fn state(&mut self, id: DocumentId) -> Result<sync::State> {
        if let Some(s) = self.states.remove(&id) {
            return Ok(s);
        }
        Ok(self
            .repo
            .load_sync_state(id, &self.relay_peer)?
            .unwrap_or_default())
    }

    /// Opens the sync of one document.
    pub(super) fn start(&mut self, id: DocumentId) -> Result<()> {
        if !self.all.insert(id) {
            return Ok(());
        }
        self.pending.insert(id);
        let mut state = self.state(id)?;
        if self.pipelined && self.repo.holds(id)? {
            crate::protocol::assume_shared_heads(&mut state);
        }
        let (messages, held) =
            self.repo
                .generate_sync_message(id, &mut state, self.max_message_bytes)?;
        self.states.insert(id, state);
        let Some(messages) = self.sendable(id, messages) else {
            return Ok(());
        };
        if messages.is_empty() {
            // Nothing to say: we already know they have what we have.
            self.pending.remove(&id);
            return Ok(());
        }
        for message in messages {
            if held && !message.changes.is_empty() {
                self.sent_changes.insert(id);
            }
            if self.pipelined
                || !held
                || !message.changes.is_empty()
                || !message.need.is_empty()
                || self.locally_changed.contains(&id)
            {
                self.demanding.insert(id);
            }
            let (sender_id, target_id, document_id, data) = (
                self.device_id.clone(),
                self.relay_peer.clone(),
                id.to_string(),
                message.encode(),
            );
            self.send(if held {
                Message::Sync {
                    sender_id,
                    target_id,
                    document_id,
                    data,
                }
            } else {
                Message::Request {
                    sender_id,
                    target_id,
                    document_id,
                    data,
                }
            })?;
        }
        Ok(())
    }

    /// The messages to send, or `None` for a document with a change larger
    /// than the message limit: reported, and no longer awaited, so the
    /// session goes on with the other documents.
    pub(super) fn sendable(
        &mut self,
        id: DocumentId,
        messages: SplitMessages,
    ) -> Option<Vec<sync::Message>> {
        match messages {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(document = %id, change_bytes = e.change_bytes, limit = e.max_message_bytes, "a change is larger than the relay's message limit; this document is not synced");
                self.pending.remove(&id);
                self.demanding.remove(&id);
                // Not saved: the last saved state still says what the relay
                // lacks, so the next sync tries (and reports) it again.
                self.states.remove(&id);
                let id = id.to_string();
                if !self.summary.failed.contains(&id) {
                    self.summary.failed.push(id);
                }
                None
            }
        }
    }

    pub(super) fn handle(&mut self, id: DocumentId, message: sync::Message) -> Result<()> {
        let mut state = self.state(id)?;
        let brought_changes = !message.changes.is_empty();
        let changed = match self.repo.receive_sync_message(id, &mut state, message) {
            Ok(changed) => changed,
            // Nothing of it was written (the transaction rolled back).
            Err(e) => match skipped::reason(&e) {
                Some(reason) => return self.skip(id, reason),
                None => return Err(e),
            },
        };
        if changed {
            self.received.insert(id);
            // Readable now (an app update, a fixed copy on the relay).
            if self.skipped_before.remove(&id) {
                self.repo.forget_skipped(id)?;
            }
        }
        // We asked for changes and answers keep coming without them: the
        // peer thinks it sent them already (automerge's `sent_hashes`; we
        // lost them) and will not send them again, so the two sides would
        // trade the same `need` forever. A sync reset makes it forget what it
        // sent. (One change-less answer is normal: it crossed our request.)
        let unanswered = match self.needing.remove(&id) {
            Some(n) if !brought_changes => n + 1,
            _ => 0,
        };
        let reset = unanswered >= 3;
        if reset {
            tracing::debug!(document = %id, "the changes we need do not come; asking for a sync reset");
            state.needs_reset = true;
        }
        let (replies, _) =
            self.repo
                .generate_sync_message(id, &mut state, self.max_message_bytes)?;
        let Some(replies) = self.sendable(id, replies) else {
            return Ok(());
        };
        for reply in replies {
            if !reply.need.is_empty() {
                self.needing.insert(id, if reset { 0 } else { unanswered });
            }
            if !reply.changes.is_empty() {
                self.sent_changes.insert(id);
            }
            if !reply.changes.is_empty() || !reply.need.is_empty() {
                self.demanding.insert(id);
            }
            self.send(Message::Sync {
                sender_id: self.device_id.clone(),
                target_id: self.relay_peer.clone(),
                document_id: id.to_string(),
                data: reply.encode(),
            })?;
        }
        // In sync once the relay's last stated heads are ours: whatever we
        // just sent is only an acknowledgement, which needs no answer.
        let in_sync = match &state.their_heads {
            Some(theirs) => self.repo.has_exact_heads(id, theirs)?,
            None => false,
        };
        self.states.insert(id, state);
        if in_sync {
            self.pending.remove(&id);
        }
        if changed && self.only.is_none() && id == self.repo.directory_id() {
            for listed in self.repo.directory_listing()? {
                self.start(listed)?;
            }
        }
        Ok(())
    }

    pub(super) fn save_states(&self) -> Result<()> {
        let in_sync: BTreeSet<DocumentId> = self
            .all
            .iter()
            .filter(|id| {
                !self.pending.contains(id)
                    && !self.unavailable.contains(id)
                    && !self.summary.failed.contains(&id.to_string())
            })
            .copied()
            .collect();
        self.repo
            .save_sync_states(&self.relay_peer, &self.states, &in_sync)
    }
}
